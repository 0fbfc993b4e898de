"""Scan the running Python environment into the parts of a ``SoftwareSpec``.

``scan_environment`` reads installed distributions' metadata (it never imports them) and
sorts each into an index pin (``name==version``), a VCS pin (``git+https://...@commit``)
or a local project whose wheel must be built and uploaded (editable installs, local
directories, local wheel or sdist files). It also collects the package indexes pip and uv
are configured with, stripped of credentials, since the control plane stores the spec.
Once the local wheels exist, ``ScanResult.spec`` turns the scan into the ``SoftwareSpec``.
"""

from __future__ import annotations

import configparser
import json
import os
import platform as _platform
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from pydantic import ValidationError

from billow_control.core.software import CORE_PACKAGES, PackagePin, SoftwareSpec, normalize

# Packages that exist only for one OS (Windows or macOS): never installable on a Linux
# instance, so dropped when the client's platform is not the target's.
PLATFORM_ONLY = frozenset({"pywin32", "pywin32-ctypes", "pywinpty", "appnope", "pyobjc"})
PLATFORM_ONLY_PREFIXES = ("pyobjc-",)
_OS = {"linux": "linux", "macosx": "macos", "darwin": "macos", "win": "windows"}
_ARCH = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86"}
_URL_SCHEMES = ("http://", "https://")
_MAX_LISTED = 10


@dataclass(frozen=True)
class LocalProject:
    """Local code the cluster needs as a wheel built (or copied) on the client.

    ``path`` is the project directory (editable or local installs), or a local wheel or
    source archive the distribution was installed from. ``name`` is normalized.
    """

    name: str
    version: str
    path: Path


@dataclass
class ScanResult:
    """What ``scan_environment`` found.

    ``platform`` is the client's (normalized, e.g. ``macos-aarch64``), ``target_platform``
    the cluster's. ``pins`` are the index and VCS pins of the spec; ``local_projects`` need
    a wheel before ``spec`` can be called. ``versions`` holds every distribution found
    (normalized name -> version) before ``ignore``/``only`` apply, minus platform-only
    packages, for the version-skew check; ``dropped`` names those left out of the spec.
    """

    python: str
    platform: str
    target_platform: str
    pins: list[PackagePin]
    local_projects: list[LocalProject]
    index_url: str | None
    extra_index_urls: list[str]
    find_links: list[str]
    notices: list[str]
    uv_lock: Path | None
    dropped: list[str]
    versions: dict[str, str] = field(default_factory=dict)
    strict: bool = False

    def spec(self, wheels: Mapping[str, tuple[str, str]]) -> SoftwareSpec:
        """The locked spec, given ``{name: (wheel filename, sha256)}`` per local project.

        The wheel pins take the version in the wheel's file name (what the cluster
        installs). Raises ``ValueError`` when a local project has no wheel or a wheel
        names no local project, and pydantic's ``ValidationError`` on a bad filename/hash.
        """
        given = {normalize(name): wheel for name, wheel in wheels.items()}
        local = {project.name: project for project in self.local_projects}
        if missing := sorted(set(local) - set(given)):
            raise ValueError(f"no wheel given for local project(s): {', '.join(missing)}")
        if unknown := sorted(set(given) - set(local)):
            raise ValueError(f"wheel(s) given for no local project: {', '.join(unknown)}")
        pins = list(self.pins)
        for name, (filename, sha256) in sorted(given.items()):
            version = wheel_version(filename) or local[name].version
            pins.append(
                PackagePin(
                    name=name, version=version, source="wheel", filename=filename, sha256=sha256
                )
            )
        return SoftwareSpec(
            python=self.python,
            platform=self.target_platform,
            packages=pins,
            index_url=self.index_url,
            extra_index_urls=self.extra_index_urls,
            find_links=self.find_links,
        )


def scan_environment(
    *,
    ignore: Iterable[str] = (),
    only: Iterable[str] | None = None,
    strict: bool = False,
    paths: Sequence[str] | None = None,
    target_platform: str = "linux-x86_64",
    client_platform: str | None = None,
    prefix: str | Path | None = None,
) -> ScanResult:
    """Scan the installed distributions on ``paths`` (default ``sys.path``).

    Parameters
    ----------
    ignore : names to leave out of the spec (any spelling; normalized).
    only : when given, keep just these names (literally: not their dependencies).
    strict : recorded on the result for the version-skew check.
    paths : directories to read ``*.dist-info`` from, first occurrence of a name winning.
    target_platform : the cluster's platform; packages only for another OS are dropped
        (with one notice) when the client's platform differs from it.
    client_platform : the client's platform, default ``sysconfig.get_platform()``.
    prefix : the environment's prefix, default ``sys.prefix`` (conda packages are
        looked up in ``<prefix>/conda-meta``).

    Never raises for a broken distribution: it is skipped with a notice.
    """
    notices: list[str] = []
    client = normalize_platform(client_platform or sysconfig.get_platform())
    target = normalize_platform(target_platform)
    ignored = {normalize(name) for name in ignore}
    wanted = None if only is None else {normalize(name) for name in only}

    found = {item.name: item for item in iter_distributions(paths, notices)}
    platform_only: list[str] = []
    if client != target:
        platform_only = sorted(name for name in found if is_platform_only(name))
        if platform_only:
            notices.append(
                f"left out packages only for the client's platform ({client}, the cluster "
                f"runs {target}): {', '.join(platform_only)}"
            )
    versions = {name: item.version for name, item in found.items() if name not in platform_only}

    by_request = sorted(
        name for name in versions if name in ignored or (wanted is not None and name not in wanted)
    )
    if wanted is not None and (absent := sorted(wanted - set(found))):
        notices.append(f"asked for, but not installed: {', '.join(absent)}")
    if core := [n for n in by_request if n in CORE_PACKAGES or n == "billow"]:
        notices.append(
            f"left out at your request, though the cluster needs them at the client's "
            f"versions: {', '.join(core)}"
        )

    pins: list[PackagePin] = []
    local: list[LocalProject] = []
    for name in sorted(versions):
        if name in by_request:
            continue
        item = _classify(found[name], notices)
        if isinstance(item, LocalProject):
            local.append(item)
        elif item is not None:
            pins.append(item)

    index_url, extra_index_urls, find_links = package_indexes(os.environ, notices)
    conda = _conda_notice(Path(prefix or sys.prefix), set(found))
    if conda:
        notices.append(conda)
    kept = {pin.name for pin in pins} | {project.name for project in local}
    return ScanResult(
        python=python_version(),
        platform=client,
        target_platform=target,
        pins=pins,
        local_projects=local,
        index_url=index_url,
        extra_index_urls=extra_index_urls,
        find_links=find_links,
        notices=notices,
        uv_lock=find_uv_lock(Path.cwd()),
        dropped=sorted(set(found) - kept),
        versions=versions,
        strict=strict,
    )


@dataclass(frozen=True)
class Installed:
    """One installed distribution: normalized ``name``, ``version``, and its metadata."""

    name: str
    version: str
    dist: metadata.Distribution


def iter_distributions(
    paths: Sequence[str] | None = None, notices: list[str] | None = None
) -> Iterator[Installed]:
    """The distributions on ``paths`` (default ``sys.path``), each name once: the first in
    path order wins. Distributions without a name or version in their metadata are
    skipped, with a notice appended to ``notices`` when given."""
    seen: set[str] = set()
    dists = (
        metadata.distributions()
        if paths is None
        else metadata.distributions(path=[str(p) for p in paths])
    )
    for dist in dists:
        try:  # importlib_metadata (which may be the finder) raises on a missing METADATA
            meta = dist.metadata
            names = meta.get_all("Name") if meta is not None else None
            versions = meta.get_all("Version") if meta is not None else None
        except (OSError, KeyError, ValueError):
            names = versions = None
        if not (names and versions and names[0] and versions[0]):
            notice = f"skipped a distribution with no name or version: {names[0] if names else '?'}"
            if notices is not None and notice not in notices:
                notices.append(notice)
            continue
        name = normalize(names[0])
        if name not in seen:
            seen.add(name)
            yield Installed(name=name, version=versions[0].strip(), dist=dist)


def _classify(item: Installed, notices: list[str]) -> PackagePin | LocalProject | None:
    """The pin or local project for one distribution, from its PEP 610 ``direct_url.json``."""
    name, version = item.name, item.version
    direct = _direct_url(item.dist)
    try:
        if direct is None:
            return PackagePin(name=name, version=version)
        url = str(direct.get("url", ""))
        if isinstance(direct.get("vcs_info"), dict):
            return _vcs_pin(name, version, url, direct, notices)
        if url.startswith("file:"):
            path = Path(url2pathname(urlsplit(url).path))
            if path.exists():
                return LocalProject(name=name, version=version, path=path)
            notices.append(
                f"{name} was installed from {path}, which no longer exists; pinning "
                f"{name}=={version} from the package index (best effort)"
            )
            return PackagePin(name=name, version=version)
        clean, _ = strip_credentials(url)
        notices.append(
            f"{name} was installed from {clean}; pinning {name}=={version} from the "
            "package index (best effort)"
        )
        return PackagePin(name=name, version=version)
    except ValidationError as e:
        notices.append(f"skipped {name} {version}: {e.errors()[0]['msg']}")
        return None


def _vcs_pin(name: str, version: str, url: str, direct: dict, notices: list[str]) -> PackagePin:
    info = direct["vcs_info"]
    vcs, commit = info.get("vcs"), info.get("commit_id")
    clean, had_credentials = strip_credentials(url)
    if not (vcs and commit and clean.startswith(_URL_SCHEMES)):
        notices.append(
            f"{name} was installed from {vcs or 'VCS'} {clean}, which the cluster cannot "
            f"fetch (only http(s) URLs with a commit); pinning {name}=={version} from the "
            "package index (best effort)"
        )
        return PackagePin(name=name, version=version)
    if had_credentials:
        notices.append(
            f"removed credentials from {name}'s URL {clean}; give instances a netrc instead"
        )
    pinned = f"{vcs}+{clean}@{commit}"
    if subdirectory := direct.get("subdirectory"):
        pinned += f"#subdirectory={subdirectory}"
    return PackagePin(name=name, version=version, source="vcs", url=pinned)


def _direct_url(dist: metadata.Distribution) -> dict | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def wheel_version(filename: str) -> str | None:
    """The version field of a wheel file name (``pkg-1.0-py3-none-any.whl`` -> ``1.0``)."""
    parts = filename.removesuffix(".whl").split("-")
    return parts[1] if filename.endswith(".whl") and len(parts) >= 5 else None


def is_platform_only(name: str) -> bool:
    """True for a package that only installs on Windows or macOS (``pywin32``, ``pyobjc-*``)."""
    name = normalize(name)
    return name in PLATFORM_ONLY or name.startswith(PLATFORM_ONLY_PREFIXES)


def normalize_platform(value: str) -> str:
    """``<os>-<arch>`` from a ``sysconfig.get_platform()`` string.

    ``linux-x86_64`` stays, ``macosx-11.0-arm64`` -> ``macos-aarch64``, ``win-amd64`` ->
    ``windows-x86_64``, ``win32`` -> ``windows-x86``. Unknown parts pass through lowercased.
    """
    value = value.strip().lower()
    if value == "win32":
        return "windows-x86"
    parts = value.split("-")
    os_name = _OS.get(parts[0], parts[0])
    arch = _ARCH.get(parts[-1], parts[-1]) if len(parts) > 1 else "unknown"
    return f"{os_name}-{arch}"


def python_version() -> str:
    """``major.minor.micro`` of the running interpreter (no ``+`` or release-candidate tag)."""
    match = re.match(r"\d+\.\d+(\.\d+)?", _platform.python_version())
    return match.group(0) if match else "{}.{}.{}".format(*sys.version_info[:3])


def strip_credentials(url: str) -> tuple[str, bool]:
    """``url`` without a ``user:password@`` part, and whether it had one."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, False
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), True


def find_uv_lock(start: Path) -> Path | None:
    """The ``uv.lock`` in ``start`` or its parents, stopping after the first directory
    holding ``.git`` (a repository's root) or at the filesystem root."""
    for directory in [start, *start.parents]:
        if (directory / "uv.lock").is_file():
            return directory / "uv.lock"
        if (directory / ".git").exists():
            return None
    return None


def pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files in increasing precedence (global, user, site, env).

    As pip does, the user files are skipped when ``PIP_CONFIG_FILE`` names a file.
    """
    home = Path.home()
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    env_file = environ.get("PIP_CONFIG_FILE")
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    if not (env_file and Path(env_file).is_file()):
        files += [
            home / ".pip" / "pip.conf",
            config_home / "pip" / "pip.conf",
            home / "Library" / "Application Support" / "pip" / "pip.conf",
        ]
        if appdata := environ.get("APPDATA"):
            files.append(Path(appdata) / "pip" / "pip.ini")
    files.append(Path(sys.prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def read_pip_config(environ: Mapping[str, str], notices: list[str]) -> dict[str, str]:
    """``index-url``, ``extra-index-url`` and ``find-links`` from pip's config files:
    later files override earlier ones and ``[install]`` overrides ``[global]``. An
    unreadable file is skipped with a notice."""
    sections: dict[str, dict[str, str]] = {"global": {}, "install": {}}
    for path in pip_config_files(environ):
        if not path.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError) as e:
            notices.append(f"could not read pip config {path}: {e}")
            continue
        for section, values in sections.items():
            if parser.has_section(section):
                for key, value in parser.items(section):
                    values[key.replace("_", "-")] = value
    merged = {**sections["global"], **sections["install"]}
    keys = ("index-url", "extra-index-url", "find-links")
    return {key: merged[key] for key in keys if merged.get(key)}


def package_indexes(
    environ: Mapping[str, str], notices: list[str]
) -> tuple[str | None, list[str], list[str]]:
    """``(index_url, extra_index_urls, find_links)`` the client installs from.

    Environment variables beat config files (``PIP_*`` then ``UV_*``, then pip's config).
    Credentials are stripped and local paths (unreachable from the cluster) dropped, each
    with a notice; duplicates are removed.
    """
    config = read_pip_config(environ, notices)
    sources = [
        (source, url.strip())
        for source, url in (
            ("PIP_INDEX_URL", environ.get("PIP_INDEX_URL")),
            ("UV_INDEX_URL", environ.get("UV_INDEX_URL")),
            ("pip config", config.get("index-url")),
        )
        if url and url.strip()
    ]
    extra = (environ.get("PIP_EXTRA_INDEX_URL") or config.get("extra-index-url") or "").split()
    extra += (environ.get("UV_EXTRA_INDEX_URL") or "").split()
    links = (environ.get("PIP_FIND_LINKS") or config.get("find-links") or "").split()

    index_url = None
    if sources:
        chosen_source, chosen = sources[0]
        kept = _remote_urls([chosen], "index URL", notices)
        index_url = kept[0] if kept else None
        # PIP_INDEX_URL overriding pip's config is pip's own rule; any other disagreement
        # (pip's settings against uv's) is worth a word.
        others = [
            f"{strip_credentials(url)[0]} ({source})"
            for source, url in sources[1:]
            if url != chosen and not (chosen_source == "PIP_INDEX_URL" and source == "pip config")
        ]
        if others:
            notices.append(
                f"using the index URL of {chosen_source}; also configured: {', '.join(others)}"
            )
    extra_urls = [u for u in _remote_urls(extra, "extra index URL", notices) if u != index_url]
    return index_url, extra_urls, _remote_urls(links, "find-links location", notices)


def _remote_urls(urls: Iterable[str], what: str, notices: list[str]) -> list[str]:
    kept: list[str] = []
    for url in urls:
        clean, had_credentials = strip_credentials(url)
        if not clean.lower().startswith(_URL_SCHEMES):
            notices.append(f"{what} {clean} is local to this machine; the cluster will not use it")
            continue
        if had_credentials:
            notices.append(
                f"removed credentials from {what} {clean} (the control plane stores the "
                "spec); give instances a netrc or keyring for it"
            )
        if clean not in kept:
            kept.append(clean)
    return kept


def _conda_notice(prefix: Path, pip_names: set[str]) -> str | None:
    """A notice naming the conda packages of ``prefix`` that pip metadata does not cover."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return None
    # conda-meta/<name>-<version>-<build>.json: the name is all but the last two fields.
    names = sorted(
        {
            f.name.removesuffix(".json").rsplit("-", 2)[0]
            for f in meta.glob("*.json")
            if f.name.count("-") >= 2
        }
    )
    names = [n for n in names if normalize(n) not in pip_names and n != "python"]
    if not names:
        return None
    listed = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        listed += f" and {len(names) - _MAX_LISTED} more"
    return (
        f"{len(names)} conda package(s) have no pip metadata and are not synced to the "
        f"cluster: {listed}"
    )
