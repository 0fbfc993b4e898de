"""Resolve a named software environment on the client: requirements in, ``SoftwareSpec`` out.

``resolve_requirements`` runs ``uv pip compile`` for the cluster's Python and platform
(not the client's) over what the user asked for (``pip`` lines, a requirements file, or
a ``uv.lock`` exported with ``uv export``) plus what every instance needs to run Billow
and Dask: the client's exact versions of ``CORE_PACKAGES`` (so the version-skew rule
holds by construction) and ``billow`` itself, pinned from the index when the client's
came from one, or built into a wheel when it is a local checkout (editable or not) that
must be uploaded before the spec is stored. Package indexes are the ones the package
sync scanner reads (``PIP_*``/``UV_*`` variables and pip's config files), credentials
stripped; uv's own configuration files are not read (``--no-config``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import ValidationError

from billow_control.core.software import (
    CORE_PACKAGES,
    PackagePin,
    SoftwareSpec,
    index_arguments,
    normalize,
)

from ..errors import ResolutionError
from .environment import mentioned_packages
from .scan import LocalProject, package_indexes, python_version
from .skew import client_versions
from .wheels import BuiltWheel, build_wheel, find_uv

RESOLVE_TIMEOUT = 600.0
MANYLINUX = "manylinux_2_28"
_PYTHON = re.compile(r"^\d+\.\d+(\.\d+)?$")
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
_DIRECT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)$")
_VCS = re.compile(r"^(git|hg|svn|bzr)\+https?://")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

Report = Callable[[str], None]


@dataclass
class Resolved:
    """A resolved environment: the ``spec`` to store, the ``wheels`` it names (upload
    them first), and ``notices`` worth showing the user."""

    spec: SoftwareSpec
    wheels: list[BuiltWheel] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def resolve_requirements(
    pip: Iterable[str] = (),
    requirements: str | os.PathLike[str] | None = None,
    uv_lock: str | os.PathLike[str] | None = None,
    *,
    python: str | None = None,
    platform: str = "linux-x86_64",
    wheel_dir: Path,
    environ: Mapping[str, str] | None = None,
    timeout: float = RESOLVE_TIMEOUT,
    report: Report | None = None,
) -> Resolved:
    """Lock ``pip`` lines, a ``requirements`` file and/or a ``uv_lock`` (any mix, or none:
    then just Billow and Dask) for the cluster, plus Billow's own runtime needs.

    Parameters
    ----------
    pip : requirement lines such as ``"pandas==2.2.3"`` or ``"pyarrow"``.
    requirements : a requirements file (``-r``), read by uv with its relative paths.
    uv_lock : a ``uv.lock`` (or its directory); its project's locked dependencies are
        exported (``uv export --frozen --no-dev``, the project itself left out).
    python : the cluster's Python, ``"3.11"`` or ``"3.11.7"``; default the client's.
    platform : the cluster's platform, ``linux-<arch>`` (wheels for manylinux_2_28).
    wheel_dir : where the wheel of a local Billow checkout is placed for upload.
    environ : the environment the index settings are read from (default ``os.environ``).

    Raises
    ------
    ResolutionError
        uv could not resolve (or export) the requirements: the message names the
        packages uv mentions and quotes its output. Also for requirements the cluster
        cannot install (a local path or a direct URL that is not VCS).
    ValueError
        A bad ``python`` or ``platform``, or a missing requirements/lock file.
    billow.errors.WheelBuildError
        The wheel of the local Billow checkout could not be built.
    """
    say = report or (lambda line: None)
    python = python or python_version()
    if not _PYTHON.match(python):
        raise ValueError(f"python must look like '3.11' or '3.11.7', not {python!r}")
    target = python_platform(platform)
    if requirements is not None and not Path(requirements).is_file():
        raise ValueError(f"no requirements file {str(requirements)!r}")
    uv = find_uv()
    if uv is None:
        raise ResolutionError("uv is not installed: billow resolves environments with it")
    notices: list[str] = []
    index_url, extra_index_urls, find_links = package_indexes(
        os.environ if environ is None else environ, notices
    )
    requested = [line.strip() for line in pip if line.strip()]

    with tempfile.TemporaryDirectory(prefix="billow-resolve-") as tmp:
        lines = list(requested)
        if requirements is not None:
            lines.append(f"-r {Path(requirements).resolve()}")
        if uv_lock is not None:
            exported = Path(tmp) / "uv-lock.txt"
            exported.write_text(export_uv_lock(uv, Path(uv_lock), timeout))
            lines.append(f"-r {exported}")
        runtime, wheel = runtime_requirements(wheel_dir, notices)
        if wheel is not None:
            say(f"built the wheel of this Billow checkout: {wheel.filename}")
        lines += runtime
        infile = Path(tmp) / "requirements.in"
        infile.write_text("".join(f"{line}\n" for line in lines))

        args = [uv, "pip", "compile", "--no-config", "--color", "never", "--quiet"]
        args += ["--python-version", python, "--python-platform", target]
        args += ["--no-header", "--no-annotate"]
        args += index_arguments(index_url, list(extra_index_urls), list(find_links))
        args.append(str(infile))
        started = time.monotonic()
        say(f"resolving {len(requested)} requirement(s) for Python {python} on {platform}")
        done = _run(args, Path(tmp), timeout, "uv pip compile")
    if done.returncode != 0:
        known = [*_names(requested), *CORE_PACKAGES, "billow"]
        output = _clean(done.stderr)
        involved = mentioned_packages(output, known)
        message = "could not resolve the environment's requirements (uv pip compile failed)"
        if core := [n for n in involved if n in CORE_PACKAGES or n == "billow"]:
            message += (
                f"; {', '.join(core)} must be this client's version(s) (the cluster runs "
                "the client's Dask core packages and Billow): ask for those, or change "
                "the client's"
            )
        raise ResolutionError(message, involved, output)
    packages = parse_compiled(done.stdout, wheel)
    say(f"resolved {len(packages)} packages ({time.monotonic() - started:.1f} s)")
    try:
        spec = SoftwareSpec(
            python=python,
            platform=platform,
            packages=packages,
            index_url=index_url,
            extra_index_urls=extra_index_urls,
            find_links=find_links,
        )
    except ValidationError as e:
        raise ResolutionError(f"the resolved environment is not a valid spec: {e}") from None
    client_minor = ".".join(python_version().split(".")[:2])
    if spec.python_minor != client_minor:
        notices.append(
            f"the environment is for Python {spec.python_minor} and this client runs "
            f"{client_minor}: only a client on Python {spec.python_minor} can use it"
        )
    return Resolved(spec=spec, wheels=[wheel] if wheel is not None else [], notices=notices)


def python_platform(platform: str) -> str:
    """uv's ``--python-platform`` for a spec platform: ``linux-x86_64`` ->
    ``x86_64-manylinux_2_28``. Raises ``ValueError`` for a platform that is not Linux."""
    os_name, _, arch = platform.partition("-")
    if os_name != "linux" or arch not in ("x86_64", "aarch64"):
        raise ValueError(
            f"clusters run linux-x86_64 or linux-aarch64, not {platform!r}: "
            "environments are resolved for the cluster's platform"
        )
    return f"{arch}-{MANYLINUX}"


def runtime_requirements(
    wheel_dir: Path, notices: list[str]
) -> tuple[list[str], BuiltWheel | None]:
    """The lines every instance needs: ``name==<client's version>`` for each of
    ``CORE_PACKAGES`` the client has, and Billow (see ``billow_requirement``)."""
    versions = client_versions()
    lines = [f"{name}=={versions[name]}" for name in CORE_PACKAGES if name in versions]
    line, wheel = billow_requirement(wheel_dir, notices)
    return [*lines, line], wheel


def billow_requirement(wheel_dir: Path, notices: list[str]) -> tuple[str, BuiltWheel | None]:
    """``billow==<version>`` when the client's Billow came from an index; otherwise (a
    source checkout, editable or not, or a local wheel or directory) the wheel of the
    code this client runs, built into ``wheel_dir``, as ``billow @ file://...``."""
    try:
        dist = metadata.distribution("billow")
        version, direct = dist.version, _direct_url(dist)
    except metadata.PackageNotFoundError:
        version, direct = None, None
    checkout = source_checkout()
    path: Path | None = checkout
    if path is None and direct is not None and str(direct.get("url", "")).startswith("file:"):
        path = Path(url2pathname(urlsplit(str(direct["url"])).path))
    if path is None:
        if version is None:
            raise ResolutionError("billow is not installed, so its version is unknown")
        if direct is not None:
            notices.append(
                f"billow was installed from {direct.get('url')}; pinning billow=={version} "
                "from the package index (best effort)"
            )
        return f"billow=={version}", None
    wheel = build_wheel(LocalProject(name="billow", version=version or "0", path=path), wheel_dir)
    return f"billow @ {wheel.path.resolve().as_uri()}", wheel


def source_checkout() -> Path | None:
    """The Billow source tree the imported ``billow`` package comes from (its
    ``sdk/billow`` under a ``pyproject.toml`` naming ``billow``), or ``None`` when it is
    an installed copy (in site-packages, for example)."""
    import billow

    package = Path(billow.__file__).resolve().parent
    root = package.parent.parent
    if package != root / "sdk" / "billow" or not (root / "pyproject.toml").is_file():
        return None
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("name") == "billow" else None


def export_uv_lock(uv: str, lock: Path, timeout: float = RESOLVE_TIMEOUT) -> str:
    """The locked requirements of the project owning ``lock`` (a ``uv.lock`` or its
    directory), without the project itself, its workspace members or dev dependencies.

    Raises ``ValueError`` when there is no lock, ``ResolutionError`` when uv fails (for
    example a lock out of date with its ``pyproject.toml``)."""
    lock = lock / "uv.lock" if lock.is_dir() else lock
    if not lock.is_file():
        raise ValueError(f"no uv.lock at {str(lock)!r}")
    project = lock.resolve().parent
    args = [uv, "export", "--format", "requirements-txt", "--frozen", "--no-dev"]
    args += ["--no-hashes", "--no-header", "--no-emit-workspace", "--color", "never"]
    args += ["--project", str(project)]
    done = _run(args, project, timeout, "uv export")
    if done.returncode != 0:
        output = _clean(done.stderr)
        raise ResolutionError(
            f"could not export {lock} (uv export --frozen failed)",
            mentioned_packages(output),
            output,
        )
    return done.stdout


def parse_compiled(text: str, billow_wheel: BuiltWheel | None) -> list[PackagePin]:
    """The pins of ``uv pip compile`` output (``name==version`` and ``name @ url`` lines).

    The Billow wheel's ``file:`` line becomes a wheel pin; VCS URLs become VCS pins.
    Raises ``ResolutionError`` for any other direct reference (a local path or archive
    URL), which instances cannot install.
    """
    pins: list[PackagePin] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        if m := _PINNED.match(line):
            pins.append(PackagePin(name=m.group(1), version=m.group(2)))
            continue
        m = _DIRECT.match(line)
        if m is None:
            raise ResolutionError(f"cannot read this line of uv's output: {line!r}")
        name, url = normalize(m.group(1)), m.group(2)
        if name == "billow" and billow_wheel is not None and url.startswith("file:"):
            pins.append(
                PackagePin(
                    name="billow",
                    version=billow_wheel.version,
                    source="wheel",
                    filename=billow_wheel.filename,
                    sha256=billow_wheel.sha256,
                )
            )
        elif _VCS.match(url):
            ref = url.rsplit("@", 1)[1].split("#", 1)[0] if "@" in url.split("://", 1)[1] else ""
            pins.append(PackagePin(name=name, version=ref or "vcs", source="vcs", url=url))
        else:
            raise ResolutionError(
                f"{name} comes from {url}, which cluster instances cannot install: name it "
                "by version from a package index or a git+https URL, or use "
                "billow.Cluster(package_sync=True) for local code",
                [name],
            )
    return pins


def _run(args: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            env={**os.environ, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ResolutionError(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as e:
        raise ResolutionError(f"could not run {what} ({args[0]}): {e}") from None


def _clean(stderr: str) -> str:
    """uv's error text, less lines naming the interpreter it happened to find."""
    kept = [x for x in stderr.rstrip().splitlines() if not x.startswith("Using Python ")]
    return "\n".join(kept[-40:])


def _names(lines: Iterable[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := _NAME.match(line))]


def _direct_url(dist: metadata.Distribution) -> dict | None:
    text = dist.read_text("direct_url.json")
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
