"""Wheels of local projects built by the real build tool (uv, else pip), and cached.

The build backend (setuptools) comes from the configured package index: this needs the
index pip is configured with (PyPI by default) to be reachable.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from billow.software import LocalProject, WheelBuildError, build_wheel

pytestmark = pytest.mark.integration


def make_project(root: Path, name: str = "tiny_proj", version: str = "0.1.0") -> Path:
    """A one-module setuptools project."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n'
        "[project]\n"
        f'name = "{name}"\n'
        f'version = "{version}"\n'
        "[tool.setuptools]\n"
        f'py-modules = ["{name}"]\n'
    )
    (root / f"{name}.py").write_text("ANSWER = 42\n")
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_then_cache_hit_then_rebuild_on_change(tmp_path: Path) -> None:
    source = make_project(tmp_path / "src")
    project = LocalProject("tiny-proj", "0.1.0", source)
    cache, out = tmp_path / "cache", tmp_path / "out"

    first = build_wheel(project, out, cache_dir=cache)
    assert first.path.is_file() and first.path.parent == out
    assert first.filename == "tiny_proj-0.1.0-py3-none-any.whl"
    assert (first.name, first.version, first.pure) == ("tiny-proj", "0.1.0", True)
    assert first.sha256 == sha256(first.path)
    with zipfile.ZipFile(first.path) as wheel:
        assert "tiny_proj.py" in wheel.namelist()
    [cached] = cache.glob("*/*.whl")
    stamps = (first.path.stat().st_mtime_ns, cached.stat().st_mtime_ns)

    again = build_wheel(project, out, cache_dir=cache)
    assert again == first
    assert (again.path.stat().st_mtime_ns, cached.stat().st_mtime_ns) == stamps
    assert list(cache.glob("*/*.whl")) == [cached]

    (source / "tiny_proj.py").write_text("ANSWER = 43  # changed\n")
    changed = build_wheel(project, out, cache_dir=cache)
    assert changed.path == first.path
    assert changed.sha256 == sha256(changed.path) != first.sha256
    assert len(list(cache.glob("*/*.whl"))) == 2


def test_a_wheel_file_is_copied_and_hashed(tmp_path: Path) -> None:
    wheel = tmp_path / "given" / "thing-2.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"wheel bytes")
    built = build_wheel(LocalProject("thing", "2.0", wheel), tmp_path / "out", cache_dir=tmp_path)
    assert built.path == tmp_path / "out" / wheel.name
    assert built.path.read_bytes() == b"wheel bytes"
    assert (built.version, built.sha256) == ("2.0", sha256(wheel))


def test_a_failing_build_reports_the_tool_output(tmp_path: Path) -> None:
    source = tmp_path / "broken"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "no_such_backend_xyz"\n'
    )
    with pytest.raises(WheelBuildError) as caught:
        build_wheel(LocalProject("broken", "0", source), tmp_path / "out", cache_dir=tmp_path)
    assert caught.value.project == "broken"
    assert caught.value.output and len(caught.value.output) <= 30
    assert "no_such_backend_xyz" in str(caught.value)
    assert not list(tmp_path.glob("*/*.whl"))


def test_a_missing_project_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WheelBuildError, match="does not exist"):
        build_wheel(LocalProject("gone", "1", tmp_path / "gone"), tmp_path / "out")
