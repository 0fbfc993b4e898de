"""Wheels of local code (editable installs, local directories and archives), cached.

``build_wheel`` builds a project directory or source archive with ``uv build`` (or
``pip wheel`` when uv is not installed) into a cache keyed by a fingerprint of the
sources, so an unchanged project is not rebuilt; a project that already is a wheel file
is only copied. The result is placed in ``out_dir`` with its sha256, ready for upload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from billow_control.core.software import normalize

from ..errors import WheelBuildError
from .scan import LocalProject, wheel_version

# Directories that hold no sources: skipped anywhere in the tree, or only at its top.
SKIPPED_DIRS = frozenset({".git", ".hg", "__pycache__", ".mypy_cache", ".pytest_cache"})
SKIPPED_DIRS |= {".ruff_cache", ".tox", ".nox"}
SKIPPED_TOP_DIRS = frozenset({"build", "dist", ".venv", "venv"})
BUILD_TIMEOUT = 900.0
OUTPUT_LINES = 30


@dataclass(frozen=True)
class BuiltWheel:
    """A wheel of a local project: ``path`` in the caller's ``out_dir``, ``sha256`` of
    its bytes, ``version`` from its file name."""

    name: str
    version: str
    path: Path
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def pure(self) -> bool:
        """True when the wheel installs on any platform (platform tag ``any``)."""
        return self.path.name.removesuffix(".whl").rsplit("-", 1)[-1] == "any"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/billow/wheels``, by default ``~/.cache/billow/wheels``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "billow" / "wheels"


def build_wheel(
    project: LocalProject,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> BuiltWheel:
    """The wheel of ``project``, built unless the cache has one for the same sources.

    A directory or source archive is built into ``<cache_dir>/<fingerprint>/`` (see
    ``source_fingerprint``); a wheel file is used as is. The wheel is then copied to
    ``out_dir`` (left untouched when an identical copy is there already).

    Raises
    ------
    WheelBuildError
        The project is gone, the build tool failed or timed out (with the last 30 lines
        of its output), or it produced no wheel of this project.
    """
    source = Path(project.path)
    if not source.exists():
        raise WheelBuildError(project.name, f"{source} does not exist")
    if source.is_file() and source.suffix == ".whl":
        wheel = source
    else:
        wheel = _cached_build(project, source, Path(cache_dir or default_cache_dir()), timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(wheel)
    target = out_dir / wheel.name
    if not (target.is_file() and (_same_file(target, wheel) or file_sha256(target) == digest)):
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(wheel, partial)
        os.replace(partial, target)
    version = wheel_version(wheel.name) or project.version
    return BuiltWheel(name=project.name, version=version, path=target, sha256=digest)


def source_fingerprint(name: str, source: Path) -> str:
    """A hash of a project's files (relative path, size, mtime) with its name and the
    interpreter's version and platform (compiled wheels depend on them).

    Skips ``SKIPPED_DIRS`` anywhere, ``SKIPPED_TOP_DIRS`` at the top and ``*.egg-info``
    directories. A file source (an sdist) is fingerprinted by its own size and mtime.
    """
    digest = hashlib.sha256()
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    digest.update(f"{normalize(name)}\0{python}\0{sysconfig.get_platform()}\n".encode())
    if source.is_file():
        stat = source.stat()
        digest.update(f"{source.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:32]
    for root, dirs, files in os.walk(source):
        top = root == str(source)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIPPED_DIRS
            and not (top and d in SKIPPED_TOP_DIRS)
            and not d.endswith(".egg-info")
        )
        relative = Path(root).relative_to(source)
        for filename in sorted(files):
            try:
                stat = os.stat(os.path.join(root, filename))
            except OSError:  # a dangling symlink: no content to build from
                continue
            entry = f"{(relative / filename).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            digest.update(entry.encode())
    return digest.hexdigest()[:32]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_uv() -> str | None:
    """The ``uv`` binary of the ``uv`` Python package, else on ``PATH``, else None."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def build_command(source: Path, out_dir: Path) -> list[str]:
    """``uv build --wheel`` when uv is available, else ``pip wheel --no-deps``."""
    uv = find_uv()
    if uv:
        return [uv, "build", "--wheel", "--out-dir", str(out_dir), str(source)]
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out_dir), str(source)]


def _cached_build(project: LocalProject, source: Path, cache_dir: Path, timeout: float) -> Path:
    entry = cache_dir / source_fingerprint(project.name, source)
    cached = _own_wheels(entry, project.name)
    if len(cached) == 1:
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        out = Path(tmp)
        command = build_command(source, out)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
        try:
            result = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            output = e.output.decode(errors="replace") if isinstance(e.output, bytes) else e.output
            raise WheelBuildError(
                project.name, f"{command[0]} timed out after {timeout:.0f} s", _tail(output)
            ) from None
        except OSError as e:
            raise WheelBuildError(project.name, f"could not run {command[0]}: {e}") from None
        if result.returncode != 0:
            raise WheelBuildError(
                project.name,
                f"{' '.join(command[:3])} exited with {result.returncode}",
                _tail(result.stdout),
            )
        built = _own_wheels(out, project.name)
        if len(built) != 1:
            found = ", ".join(p.name for p in out.glob("*.whl")) or "none"
            raise WheelBuildError(
                project.name, f"expected one wheel of it, found: {found}", _tail(result.stdout)
            )
        entry.mkdir(parents=True, exist_ok=True)
        final = entry / built[0].name
        os.replace(built[0], final)
    return final


def _own_wheels(directory: Path, name: str) -> list[Path]:
    """The wheels in ``directory`` whose distribution name is ``name`` (normalized)."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.glob("*.whl") if normalize(p.name.split("-", 1)[0]) == normalize(name)
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _tail(output: str | None) -> list[str]:
    return (output or "").rstrip().splitlines()[-OUTPUT_LINES:]
