"""``resolve_requirements`` with the real uv against the package index (PyPI).

Every environment gets the client's Dask core versions and Billow; requirements come
from pip lines, a requirements file or a uv.lock; conflicts raise ``ResolutionError``
naming the packages and quoting uv.
"""

from __future__ import annotations

import subprocess
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from billow.errors import ResolutionError
from billow.software.resolve import resolve_requirements
from billow.software.wheels import find_uv
from billow_control.core.software import CORE_PACKAGES

pytestmark = pytest.mark.integration


def test_pip_lines_plus_the_clients_core_versions_and_billow(tmp_path: Path) -> None:
    resolved = resolve_requirements(["tabulate==0.9.0"], wheel_dir=tmp_path, python="3.11")
    spec = resolved.spec
    assert (spec.python, spec.platform) == ("3.11", "linux-x86_64")
    assert spec.version_of("tabulate") == "0.9.0"
    for name in CORE_PACKAGES:
        assert spec.version_of(name) == metadata.version(name), name
    # Billow runs from this checkout: its wheel is built, named by the spec, to upload.
    (wheel,) = resolved.wheels
    (pin,) = spec.wheels()
    assert (pin.name, pin.sha256, pin.filename) == ("billow", wheel.sha256, wheel.filename)
    assert wheel.path.parent == tmp_path


def test_a_requirements_file_and_a_uv_lock(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tabulate==0.8.10\n")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [project]
            name = "proj"
            version = "0.1"
            requires-python = ">=3.11"
            dependencies = ["inflection==0.5.1"]
            """
        )
    )
    uv = find_uv()
    assert uv is not None
    subprocess.run([uv, "lock", "--project", str(project)], check=True, capture_output=True)
    resolved = resolve_requirements(
        requirements=requirements, uv_lock=project / "uv.lock", wheel_dir=tmp_path / "w"
    )
    assert resolved.spec.version_of("tabulate") == "0.8.10"
    assert resolved.spec.version_of("inflection") == "0.5.1"
    assert resolved.spec.version_of("proj") is None  # the project itself is left out


def test_a_conflict_names_the_packages_and_quotes_uv(tmp_path: Path) -> None:
    distributed = metadata.version("distributed")
    with pytest.raises(ResolutionError) as e:
        resolve_requirements(["distributed==2024.8.0", "tabulate"], wheel_dir=tmp_path)
    assert "distributed" in e.value.packages
    assert "No solution found" in e.value.output
    assert distributed in str(e.value)  # the client's version, which the cluster must run
    assert "must be this client's version" in str(e.value)


def test_a_stale_uv_lock_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "0.1"\ndependencies = []\n'
    )
    (tmp_path / "uv.lock").write_text("version = 1\nnot a lock\n")
    with pytest.raises(ResolutionError, match="uv export"):
        resolve_requirements(uv_lock=tmp_path, wheel_dir=tmp_path / "w")
