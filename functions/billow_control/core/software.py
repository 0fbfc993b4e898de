"""The software a cluster runs: a locked environment spec, the same on every instance.

The SDK scans the user's environment (``billow.software.scan``) or resolves a named
environment into a ``SoftwareSpec``; the control plane stores only that spec (names,
versions, object keys and hashes), never the bytes of the user's code. Wheels of local
code go from the client straight to the deployment's object store through pre-signed
URLs (``ObjectStore``), addressed by their sha256. Each instance's agent builds (or
reuses) a virtual environment keyed by ``SoftwareSpec.key`` and runs Dask from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Versions that must match exactly between the client and the cluster (with Python's
# major.minor): a mismatch breaks pickling or the comm protocol in obscure ways.
CORE_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_WHEEL = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")
_VCS = re.compile(r"^(git|hg|svn|bzr)\+https?://")
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # clusters and environments
MAX_PACKAGES = 2000
MAX_WHEEL_BYTES = 512 * 2**20


def index_arguments(
    index_url: str | None, extra_index_urls: list[str], find_links: list[str]
) -> list[str]:
    """The ``uv pip`` (and pip) options that name these package sources."""
    args = ["--index-url", index_url] if index_url else []
    for url in extra_index_urls:
        args += ["--extra-index-url", url]
    for url in find_links:
        args += ["--find-links", url]
    return args


def normalize(name: str) -> str:
    """The canonical form of a distribution name (PEP 503): ``Foo_Bar`` -> ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


class PackagePin(BaseModel):
    """One distribution of the environment, pinned.

    ``source``: ``index`` (``name==version`` from the configured indexes), ``wheel`` (a
    wheel uploaded to the object store: local or editable code), or ``vcs`` (a pinned
    ``git+https://...@<commit>`` URL, installed from there).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=200)
    version: str = Field(max_length=100)
    source: Literal["index", "wheel", "vcs"] = "index"
    sha256: str | None = Field(default=None, description="of the wheel (source 'wheel')")
    filename: str | None = Field(default=None, description="wheel file name (source 'wheel')")
    url: str | None = Field(default=None, max_length=2000, description="VCS URL (source 'vcs')")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a distribution name")
        return normalize(v)

    @model_validator(mode="after")
    def _check_source(self) -> PackagePin:
        if self.source == "wheel":
            if not (self.sha256 and SHA256.match(self.sha256)):
                raise ValueError(f"{self.name}: a wheel needs its sha256 (64 hex digits)")
            if not (self.filename and _WHEEL.match(self.filename)):
                raise ValueError(f"{self.name}: a wheel needs a file name ending in .whl")
        elif self.source == "vcs" and not (self.url and _VCS.match(self.url)):
            raise ValueError(f"{self.name}: a VCS pin needs a git+https:// (or hg+, svn+) URL")
        return self

    def requirement(self) -> str:
        """The line ``uv pip install`` takes for this pin (wheels: the local file name)."""
        if self.source == "wheel":
            return str(self.filename)
        if self.source == "vcs":
            return f"{self.name} @ {self.url}"
        return f"{self.name}=={self.version}"


class SoftwareSpec(BaseModel):
    """A locked environment: Python, platform, and every package pinned."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(pattern=r"^\d+\.\d+(\.\d+)?$", description="e.g. '3.11.7'")
    platform: str = Field(
        default="linux-x86_64", max_length=64, description="target, e.g. 'linux-x86_64'"
    )
    packages: list[PackagePin] = Field(max_length=MAX_PACKAGES)
    index_url: str | None = Field(default=None, max_length=2000)
    extra_index_urls: list[str] = Field(default_factory=list, max_length=16)
    find_links: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("packages")
    @classmethod
    def _unique(cls, v: list[PackagePin]) -> list[PackagePin]:
        seen: set[str] = set()
        for pin in v:
            if pin.name in seen:
                raise ValueError(f"{pin.name} is listed twice")
            seen.add(pin.name)
        return sorted(v, key=lambda p: p.name)

    @field_validator("index_url", "extra_index_urls", "find_links")
    @classmethod
    def _no_credentials(cls, v: str | list[str] | None) -> str | list[str] | None:
        for url in [v] if isinstance(v, str) else v or []:
            if re.match(r"^[a-z+]+://[^/@]+@", url):
                raise ValueError(
                    "index URLs must not carry credentials (the control plane stores the "
                    "spec); give instances a netrc or keyring instead"
                )
        return v

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def key(self) -> str:
        """A stable hash of the spec: the cache key of its built environment. Python
        counts by major.minor (what the environment is built with), so clients on two
        patch releases share one environment."""
        spec = self.model_dump(mode="json") | {"python": self.python_minor}
        body = json.dumps(spec, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def wheels(self) -> list[PackagePin]:
        return [p for p in self.packages if p.source == "wheel"]

    def version_of(self, name: str) -> str | None:
        name = normalize(name)
        return next((p.version for p in self.packages if p.name == name), None)


class UploadFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1, le=MAX_WHEEL_BYTES, strict=True)
    filename: str = Field(max_length=255, pattern=r"^[A-Za-z0-9_.+!-]+\.whl$")


class UploadRequest(BaseModel):
    """Wheels the client wants to upload before it asks for a cluster that uses them."""

    model_config = ConfigDict(extra="forbid")

    files: list[UploadFile] = Field(min_length=1, max_length=100)


class EnvironmentRequest(BaseModel):
    """The body of ``POST /v1/environments/{name}``: a locked spec, resolved by the client."""

    model_config = ConfigDict(extra="forbid")

    spec: SoftwareSpec


class SoftwareEnvironment(BaseModel):
    """One revision of a named software environment of one owner.

    Revisions of a name count 1, 2, ... and never change once written; a cluster asked
    for the name gets the latest revision's ``spec`` copied into its record.
    """

    owner: str
    name: str = Field(pattern=NAME_PATTERN)
    revision: int = Field(ge=1)
    created_at: datetime
    spec: SoftwareSpec
    spec_key: str = Field(description="SoftwareSpec.key: the cache key of its built environment")

    @classmethod
    def revision_of(
        cls, owner: str, name: str, revision: int, spec: SoftwareSpec, created_at: datetime
    ) -> SoftwareEnvironment:
        """The record of one revision (its ``spec_key`` derived from ``spec``)."""
        return cls(
            owner=owner,
            name=name,
            revision=revision,
            created_at=created_at,
            spec=spec,
            spec_key=spec.key,
        )

    @property
    def ref(self) -> str:
        """``name:revision``, what a cluster record keeps."""
        return f"{self.name}:{self.revision}"

    def public(self, include_spec: bool = True) -> dict[str, Any]:
        """The JSON users see (the owner is the caller, so left out)."""
        out = self.model_dump(
            mode="json", exclude={"owner"} | (set() if include_spec else {"spec"})
        )
        out["python"] = self.spec.python
        out["platform"] = self.spec.platform
        out["n_packages"] = len(self.spec.packages)
        return out
