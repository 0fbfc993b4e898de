"""``ensure_environment`` with real uv, real PyPI and wheels served over loopback HTTP."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from billow.errors import EnvironmentBuildError
from billow.software.environment import (
    ensure_environment,
    environment_python_for,
    find_uv,
)
from billow_control.core.software import PackagePin, SoftwareSpec

pytestmark = pytest.mark.integration

PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
TOOLZ = "1.0.0"  # small, pure Python, on PyPI

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "billowtestpkg"
version = "0.1.0"

[project.scripts]
billowtestpkg-answer = "billowtestpkg:main"
"""
MODULE = """\
def answer():
    return 42


def main():
    print(answer())
"""


@pytest.fixture(scope="module")
def uv() -> Path:
    return find_uv()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, uv: Path) -> Path:
    """``billowtestpkg`` built into a wheel by ``uv build``."""
    project = tmp_path_factory.mktemp("project")
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "billowtestpkg").mkdir()
    (project / "billowtestpkg" / "__init__.py").write_text(MODULE)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [str(uv), "build", "--wheel", "--out-dir", str(out), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("billowtestpkg-*.whl")
    return built


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1: (directory, base URL)."""
    root = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(served: tuple[Path, str], wheel: Path, name: str | None = None) -> str:
    """Copy ``wheel`` into the served directory; return its URL."""
    root, base = served
    target = root / (name or wheel.name)
    target.write_bytes(wheel.read_bytes())
    return f"{base}/{target.name}"


def spec_for(wheel: Path, toolz: str = TOOLZ, sha: str | None = None) -> SoftwareSpec:
    return SoftwareSpec(
        python=PYTHON,
        packages=[
            PackagePin(
                name="billowtestpkg",
                version="0.1.0",
                source="wheel",
                sha256=sha or sha256(wheel),
                filename=wheel.name,
            ),
            PackagePin(name="toolz", version=toolz),
        ],
    )


def leftovers(cache_dir: Path, spec: SoftwareSpec) -> list[str]:
    """Entries of ``cache_dir`` for ``spec`` besides its lock file."""
    return sorted(
        p.name for p in cache_dir.iterdir() if p.name.startswith(spec.key) and p.suffix != ".lock"
    )


def test_builds_then_reuses_the_environment(
    tmp_path: Path, uv: Path, wheel: Path, served: tuple[Path, str]
) -> None:
    spec = spec_for(wheel)
    urls = {sha256(wheel): publish(served, wheel)}
    # The leftovers of a crashed build: a tmp dir, and a final dir without .complete.
    (tmp_path / f"{spec.key}.tmp-999999").mkdir(parents=True)
    (tmp_path / spec.key / "bin").mkdir(parents=True)
    (tmp_path / spec.key / "junk").write_text("half-built")
    assert environment_python_for(spec, tmp_path) is None

    lines: list[str] = []
    python = ensure_environment(spec, urls, tmp_path, log=lines.append, uv=uv)

    assert python == tmp_path / spec.key / "bin" / "python"
    assert environment_python_for(spec, tmp_path) == python
    assert leftovers(tmp_path, spec) == [spec.key]
    assert not (tmp_path / spec.key / "junk").exists()
    assert not (tmp_path / spec.key / "wheels").exists()
    assert any(f"building environment {spec.key[:12]} (2 packages)" in x for x in lines)
    assert any(f"downloaded wheel {wheel.name}" in x for x in lines)
    assert any(x.startswith("installed in ") for x in lines)
    assert not any("missing from the spec" in x for x in lines)  # the lock was complete
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import billowtestpkg, toolz; print(billowtestpkg.answer(), toolz.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["42", TOOLZ]
    # Built in a tmp dir then renamed: entry points must still find their python.
    script = python.parent / "billowtestpkg-answer"
    assert subprocess.run([str(script)], capture_output=True, text=True).stdout.strip() == "42"

    # A cache hit runs nothing: a uv that fails if run, and wheel URLs that do not exist.
    broken = tmp_path / "broken-uv"
    broken.write_text('#!/bin/sh\necho ran >> "$0.ran"\nexit 1\n')
    broken.chmod(0o755)
    again = ensure_environment(spec, {}, tmp_path, log=lines.append, uv=broken)
    assert again == python
    assert not Path(f"{broken}.ran").exists()


def test_an_unresolvable_pin_fails_with_uvs_message(
    tmp_path: Path, uv: Path, wheel: Path, served: tuple[Path, str]
) -> None:
    spec = spec_for(wheel, toolz="0.0.0.999")
    urls = {sha256(wheel): publish(served, wheel)}

    with pytest.raises(EnvironmentBuildError) as raised:
        ensure_environment(spec, urls, tmp_path, log=lambda _: None, uv=uv)

    message = str(raised.value)
    first, rest = message.split("\n", 1)
    assert first == (
        "could not build the cluster's environment "
        f"(2 packages, python {sys.version_info[0]}.{sys.version_info[1]})"
    )
    assert "packages involved: toolz" in rest
    assert "toolz==0.0.0.999" in rest  # uv's own resolver text
    assert "no version of toolz" in rest
    assert leftovers(tmp_path, spec) == []
    assert environment_python_for(spec, tmp_path) is None


def test_a_wheel_that_does_not_match_its_hash_is_refused(
    tmp_path: Path, uv: Path, wheel: Path, served: tuple[Path, str]
) -> None:
    claimed = hashlib.sha256(b"not the wheel").hexdigest()
    spec = spec_for(wheel, sha=claimed)
    urls = {claimed: publish(served, wheel, name="tampered-" + wheel.name)}

    with pytest.raises(EnvironmentBuildError, match="billowtestpkg") as raised:
        ensure_environment(spec, urls, tmp_path, log=lambda _: None, uv=uv)

    assert "does not match its sha256" in str(raised.value)
    assert claimed in str(raised.value)
    assert leftovers(tmp_path, spec) == []


def test_a_wheel_without_a_url_is_refused(tmp_path: Path, uv: Path, wheel: Path) -> None:
    spec = spec_for(wheel)
    with pytest.raises(EnvironmentBuildError, match="no download URL for the wheel of "):
        ensure_environment(spec, {}, tmp_path, log=lambda _: None, uv=uv)
    assert leftovers(tmp_path, spec) == []


def test_a_python_the_host_lacks_names_the_wanted_and_found_versions(
    tmp_path: Path, uv: Path
) -> None:
    spec = SoftwareSpec(python="3.4", packages=[PackagePin(name="toolz", version=TOOLZ)])
    with pytest.raises(EnvironmentBuildError, match=r"no Python 3\.4 on this instance") as raised:
        ensure_environment(spec, {}, tmp_path, log=lambda _: None, uv=uv)
    assert f"{sys.version_info[0]}.{sys.version_info[1]}." in str(raised.value)  # found
    assert leftovers(tmp_path, spec) == []


def test_concurrent_callers_build_once(
    tmp_path: Path, uv: Path, wheel: Path, served: tuple[Path, str]
) -> None:
    spec = spec_for(wheel, toolz="0.12.1")
    urls = {sha256(wheel): publish(served, wheel)}
    lines: list[str] = []
    results: list[Path | BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_environment(spec, urls, tmp_path, log=lines.append, uv=uv))
        except BaseException as e:  # reported by the assertions below
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)

    assert results == [tmp_path / spec.key / "bin" / "python"] * 2
    assert sum("building environment" in x for x in lines) == 1
    assert leftovers(tmp_path, spec) == [spec.key]


def test_a_wheel_that_cannot_be_downloaded_is_named(
    tmp_path: Path, uv: Path, wheel: Path, served: tuple[Path, str]
) -> None:
    spec = spec_for(wheel)
    urls = {sha256(wheel): f"{served[1]}/no-such-{wheel.name}"}
    with pytest.raises(EnvironmentBuildError, match=r"download the wheel of billowtestpkg.*404"):
        ensure_environment(spec, urls, tmp_path, log=lambda _: None, uv=uv)
    assert leftovers(tmp_path, spec) == []


def test_without_uv_the_error_says_so(
    tmp_path: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uv", None)  # `import uv` raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentBuildError, match="uv is not installed"):
        ensure_environment(spec_for(wheel), {}, tmp_path / "cache", log=lambda _: None)
