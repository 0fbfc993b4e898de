"""Build (or reuse) a cluster's software environment on an instance, with uv.

The agent calls ``ensure_environment`` before it starts Dask: the ``SoftwareSpec`` is a
lock of the client's environment, and every instance of the cluster installs exactly it
into a virtual environment under ``cache_dir/<spec.key>/``. Environments are shared by
every cluster on the host with the same spec, built once (a file lock serialises
builders), and never half-used: a build happens in a temporary directory that is renamed
into place, and ``.complete`` is written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx

from billow.errors import EnvironmentBuildError
from billow_control.core.software import (
    MAX_WHEEL_BYTES,
    PackagePin,
    SoftwareSpec,
    index_arguments,
    normalize,
)

COMPLETE = ".complete"
ERROR_LINES = 40  # lines of uv's stderr quoted in a failure message
_DOWNLOAD_ATTEMPTS = 3
# A requirement in uv's text: ``name==1.0``, ``name[extra]>=2``.
_SPECIFIER = re.compile(
    r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:===?|>=|<=|!=|~=|<|>)"
)
_QUOTED = re.compile(r"`([A-Za-z0-9][A-Za-z0-9._-]*)")

Log = Callable[[str], object]


def environment_python_for(spec: SoftwareSpec, cache_dir: Path) -> Path | None:
    """The python of ``spec``'s environment if it is built and complete, else ``None``.

    Only checks for ``.complete`` (no subprocess, no lock): a directory without it is a
    build that crashed or is under way, and is never used.
    """
    env = Path(cache_dir) / spec.key
    return _python(env) if (env / COMPLETE).is_file() else None


def ensure_environment(
    spec: SoftwareSpec,
    wheel_urls: dict[str, str],
    cache_dir: Path,
    *,
    log: Log = print,
    timeout: float = 1800,
    uv: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the python of ``spec``'s environment, building it first if needed.

    ``wheel_urls`` maps the sha256 of each wheel pin (``spec.wheels()``) to a URL to GET
    it from (a pre-signed object-store URL). ``uv`` is the uv binary (default: the one of
    the ``uv`` package, else ``uv`` on ``PATH``). ``timeout`` bounds the whole call,
    including waiting for another process building the same environment.

    A complete environment is returned at once, without running anything. Otherwise the
    build takes ``cache_dir/<key>.lock`` (so one builder per host and spec), and happens
    in ``cache_dir/<key>.tmp-<pid>``, renamed to ``cache_dir/<key>`` when installed; the
    ``.complete`` marker is written last. Leftovers of crashed builds are removed.

    Raises
    ------
    EnvironmentBuildError
        uv is missing; no system Python matches ``spec.python_minor`` (uv never downloads
        one); a wheel is missing from ``wheel_urls``, cannot be downloaded or does not
        match its sha256; uv cannot resolve or install the pins; or ``timeout`` expired.
        The message starts with "could not build the cluster's environment (...)" and
        quotes uv's own error output. Nothing is left in ``cache_dir`` but the lock file
        and uv's download cache.
    """
    cache_dir = Path(cache_dir)
    python = environment_python_for(spec, cache_dir)
    if python is not None:
        return python
    deadline = time.monotonic() + timeout
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"{spec.key}.lock", deadline, spec):
        python = environment_python_for(spec, cache_dir)
        if python is not None:
            log(f"environment {spec.key[:12]} was built by another process")
            return python
        return _build(spec, wheel_urls, cache_dir, Path(uv) if uv else find_uv(), log, deadline)


def find_uv() -> Path:
    """The uv binary: the ``uv`` package's, else ``uv`` on ``PATH``.

    Raises ``EnvironmentBuildError`` when there is neither.
    """
    try:
        import uv as uv_package

        return Path(uv_package.find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found is None:
        raise EnvironmentBuildError(
            "uv is not installed on this instance: the cluster's environment is built with "
            "uv (pip install 'uv>=0.5', or install billow[server])"
        )
    return Path(found)


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def _headline(spec: SoftwareSpec) -> str:
    return (
        f"could not build the cluster's environment "
        f"({len(spec.packages)} packages, python {spec.python_minor})"
    )


def _fail(spec: SoftwareSpec, detail: str) -> EnvironmentBuildError:
    return EnvironmentBuildError(f"{_headline(spec)}\n{detail.rstrip()}")


def _remaining(deadline: float, spec: SoftwareSpec, step: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _fail(spec, f"timed out before {step}")
    return left


@contextlib.contextmanager
def _locked(path: Path, deadline: float, spec: SoftwareSpec) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (per open file: excludes threads too)."""
    with open(path, "a") as f:
        delay = 0.05
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + delay > deadline:
                    raise _fail(
                        spec, "timed out waiting for another build of the same environment"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path, key: str, log: Log) -> None:
    """Under the lock: any tmp dir of this key, or final dir without ``.complete``, is a
    crashed build."""
    stale = list(cache_dir.glob(f"{key}.tmp-*"))
    if (cache_dir / key).exists():
        stale.append(cache_dir / key)
    for path in stale:
        log(f"removing the leftovers of an interrupted build: {path.name}")
        shutil.rmtree(path, ignore_errors=True)


def _build(
    spec: SoftwareSpec,
    wheel_urls: dict[str, str],
    cache_dir: Path,
    uv: Path,
    log: Log,
    deadline: float,
) -> Path:
    key = spec.key
    _remove_leftovers(cache_dir, key, log)
    log(f"building environment {key[:12]} ({len(spec.packages)} packages)")
    tmp = cache_dir / f"{key}.tmp-{os.getpid()}"
    started = time.monotonic()
    try:
        _create_venv(spec, uv, tmp, cache_dir, deadline)
        wheels = _download_wheels(spec, wheel_urls, tmp / "wheels", log, deadline)
        _install(spec, uv, tmp, wheels, cache_dir, log, deadline)
        shutil.rmtree(tmp / "wheels", ignore_errors=True)
        (tmp / "requirements.txt").unlink(missing_ok=True)
        final = cache_dir / key
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    marker = final / f"{COMPLETE}.partial"
    marker.write_text(json.dumps({"key": key, "spec": spec.model_dump(mode="json")}))
    os.replace(marker, final / COMPLETE)
    log(f"installed in {time.monotonic() - started:.1f} s")
    return _python(final)


def _downloads() -> bool:
    """Whether uv may download a Python the machine lacks: ``BILLOW_PYTHON_DOWNLOADS=
    automatic`` (EC2 user data sets it: instances reach python.org's builds); never by
    default, where instances share the machine's interpreters (the embedded server)."""
    return os.environ.get("BILLOW_PYTHON_DOWNLOADS", "never") == "automatic"


def _uv_env() -> dict[str, str]:
    downloads = "automatic" if _downloads() else "never"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": downloads, "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)  # only ever the --python we name
    return env


def _run_uv(
    spec: SoftwareSpec, uv: Path, args: list[str], cwd: Path, deadline: float, step: str
) -> subprocess.CompletedProcess[str]:
    """Run uv; a timeout becomes ``EnvironmentBuildError`` quoting what uv printed."""
    try:
        return subprocess.run(
            [str(uv), *args],
            cwd=cwd,
            env=_uv_env(),
            capture_output=True,
            text=True,
            timeout=_remaining(deadline, spec, step),
        )
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise _fail(spec, f"timed out while {step}\n{_tail(out or '')}") from None
    except OSError as e:
        raise _fail(spec, f"cannot run uv ({uv}): {e}") from None


def _tail(text: str, lines: int = ERROR_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _create_venv(spec: SoftwareSpec, uv: Path, tmp: Path, cwd: Path, deadline: float) -> None:
    want = spec.python_minor
    # --relocatable: entry-point scripts find their python relative to themselves, so
    # they still work after the rename of tmp to the final directory.
    preference = "system" if _downloads() else "only-system"
    args = ["venv", "--color", "never", "--python", want, "--python-preference", preference]
    done = _run_uv(spec, uv, [*args, "--relocatable", str(tmp)], cwd, deadline, "creating the venv")
    if done.returncode == 0:
        return
    found = _system_pythons(uv, cwd)
    raise _fail(
        spec,
        f"no Python {want} on this instance (found: {', '.join(found) or 'none'}); "
        f"the cluster's Python must match the client's major.minor\n{_tail(done.stderr)}",
    )


def _system_pythons(uv: Path, cwd: Path) -> list[str]:
    """Versions of the system interpreters uv can see (best effort, for the message)."""
    try:
        done = subprocess.run(
            [str(uv), "python", "list", "--only-installed", "--python-preference"]
            + ["only-system", "--output-format", "json", "--color", "never"],
            cwd=cwd,
            env=_uv_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return sorted({p["version"] for p in json.loads(done.stdout)})
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return []


def _download_wheels(
    spec: SoftwareSpec, wheel_urls: dict[str, str], into: Path, log: Log, deadline: float
) -> dict[str, Path]:
    """GET each wheel pin into ``into``; the sha256 of the bytes must be the pin's."""
    pins = spec.wheels()
    if not pins:
        return {}
    into.mkdir(parents=True, exist_ok=True)
    missing = [p.name for p in pins if str(p.sha256) not in wheel_urls]
    if missing:
        raise _fail(spec, f"no download URL for the wheel of {', '.join(missing)}")
    paths: dict[str, Path] = {}
    with httpx.Client(follow_redirects=True, timeout=60) as http:
        for pin in pins:
            path = into / str(pin.filename)
            _download(spec, http, pin, wheel_urls[str(pin.sha256)], path, deadline)
            paths[pin.name] = path
            log(f"downloaded wheel {pin.filename} ({path.stat().st_size / 1024:.0f} KiB)")
    return paths


def _download(
    spec: SoftwareSpec,
    http: httpx.Client,
    pin: PackagePin,
    url: str,
    path: Path,
    deadline: float,
) -> None:
    """GET one wheel to ``path``, retrying transport errors and 5xx; check its sha256."""
    step = f"downloading the wheel of {pin.name}"
    error = ""
    for attempt in range(_DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(min(2.0**attempt, _remaining(deadline, spec, step)))
        timeout = httpx.Timeout(min(60.0, _remaining(deadline, spec, step)))
        digest = hashlib.sha256()
        size = 0
        try:
            with http.stream("GET", url, timeout=timeout) as response, open(path, "wb") as f:
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
                    if response.status_code < 500:
                        break  # an expired or wrong URL: retrying will not help
                    continue
                for chunk in response.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > MAX_WHEEL_BYTES:
                        raise _fail(
                            spec,
                            f"the wheel of {pin.name} ({pin.filename}) is larger than "
                            f"{MAX_WHEEL_BYTES // 2**20} MiB",
                        )
                    digest.update(chunk)
                    f.write(chunk)
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
            continue
        if digest.hexdigest() != pin.sha256:
            raise _fail(
                spec,
                f"the wheel of {pin.name} ({pin.filename}) does not match its sha256: "
                f"expected {pin.sha256}, downloaded {digest.hexdigest()} ({size} bytes)",
            )
        return
    raise _fail(spec, f"cannot download the wheel of {pin.name} ({pin.filename}): {error}")


def _install(
    spec: SoftwareSpec,
    uv: Path,
    tmp: Path,
    wheels: dict[str, Path],
    cache_dir: Path,
    log: Log,
    deadline: float,
) -> None:
    """``uv pip install`` every pin, exactly. Not ``--no-deps``: a lock that misses a
    dependency gets it resolved (and logged) rather than an ImportError on the cluster.
    Bytecode is compiled once here: otherwise every scheduler and worker start compiles
    Dask from source again wherever ``PYTHONDONTWRITEBYTECODE`` is set or the environment
    is read-only (seconds per process)."""
    lines = [str(wheels[p.name]) if p.name in wheels else p.requirement() for p in spec.packages]
    requirements = tmp / "requirements.txt"
    requirements.write_text("".join(f"{line}\n" for line in lines))
    args = [
        "pip",
        "install",
        "--color",
        "never",
        "--compile-bytecode",
        "--python",
        str(_python(tmp)),
    ]
    args += ["--cache-dir", str(cache_dir / "uv-cache"), "-r", str(requirements)]
    args += index_arguments(spec.index_url, spec.extra_index_urls, spec.find_links)
    done = _run_uv(spec, uv, args, cache_dir, deadline, "installing packages")
    if done.returncode != 0:
        raise _fail(spec, _resolver_report(spec, done.stderr))
    for line in done.stderr.splitlines():
        if line.startswith(("Resolved ", "Prepared ", "Installed ")):
            log(f"uv: {line.strip()}")
    added = _added_beyond_spec(spec, uv, tmp, cache_dir, deadline)
    if added:
        log(f"uv added {len(added)} packages missing from the spec: {', '.join(added)}")


def _resolver_report(spec: SoftwareSpec, stderr: str) -> str:
    """uv's error output, with the packages it names first (less its line naming the
    build's temporary directory, which means nothing to the user)."""
    kept = [x for x in stderr.splitlines() if not x.startswith("Using Python ")]
    tail = _tail("\n".join(kept))
    names = _mentioned_packages(spec, tail)
    head = f"packages involved: {', '.join(names)}\n" if names else ""
    return f"{head}uv pip install failed:\n{tail}"


def _mentioned_packages(spec: SoftwareSpec, text: str) -> list[str]:
    return mentioned_packages(text, [pin.name for pin in spec.packages])


def mentioned_packages(text: str, known: Iterable[str] = ()) -> list[str]:
    """Distribution names in uv's text: requirements (``name==1.0``), backquoted names,
    and the ``known`` names as whole words; normalized, in order of first appearance."""
    found: dict[str, int] = {}

    def saw(name: str, at: int) -> None:
        found[name] = min(found.get(name, at), at)

    for pattern in (_SPECIFIER, _QUOTED):
        for m in pattern.finditer(text):
            saw(normalize(m.group(1)), m.start())
    for name in {normalize(n) for n in known}:
        for variant in {name, name.replace("-", "_")}:
            m = re.search(rf"(?<![\w.-]){re.escape(variant)}(?![\w-])", text, re.IGNORECASE)
            if m:
                saw(name, m.start())
    return sorted(found, key=found.__getitem__)


def _added_beyond_spec(
    spec: SoftwareSpec, uv: Path, tmp: Path, cwd: Path, deadline: float
) -> list[str]:
    """``name==version`` of each installed distribution the spec does not pin."""
    args = ["pip", "list", "--color", "never", "--format", "json", "--python", str(_python(tmp))]
    done = _run_uv(spec, uv, args, cwd, deadline, "listing installed packages")
    try:
        installed = json.loads(done.stdout) if done.returncode == 0 else []
    except ValueError:
        return []
    pinned = {p.name for p in spec.packages}
    return [f"{d['name']}=={d['version']}" for d in installed if normalize(d["name"]) not in pinned]
