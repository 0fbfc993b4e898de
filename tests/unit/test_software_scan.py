"""The environment scan on fake site directories, and the client/cluster version check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import billow
from billow.errors import BillowError
from billow.software import (
    LocalProject,
    VersionMismatchError,
    check_versions,
    client_versions,
    normalize_platform,
    scan_environment,
    source_fingerprint,
)
from billow_control.core.software import PackagePin, SoftwareSpec

pytestmark = pytest.mark.unit

INDEX_VARS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_index_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No index settings from the machine: env unset, pip's user config replaced by an
    empty ``PIP_CONFIG_FILE`` (which pip reads instead of the user files)."""
    for var in INDEX_VARS:
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "pip.conf"
    config.write_text("")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    return config


def add_dist(site: Path, name: str, version: str, direct_url: dict | None = None) -> Path:
    """A ``<name>-<version>.dist-info`` with METADATA (and ``direct_url.json``)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    return info


def scan(site: Path, **kwargs) -> billow.software.ScanResult:
    kwargs.setdefault("client_platform", "linux-x86_64")
    return scan_environment(paths=[str(site)], prefix=site, **kwargs)


def by_name(pins: list[PackagePin]) -> dict[str, PackagePin]:
    return {pin.name: pin for pin in pins}


def test_index_pins_normalized_and_first_path_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    add_dist(first, "Foo_Bar", "1.0")
    add_dist(second, "foo-bar", "2.0")
    add_dist(second, "numpy", "1.26.4")
    result = scan_environment(
        paths=[str(first), str(second)], prefix=tmp_path, client_platform="linux-x86_64"
    )
    pins = by_name(result.pins)
    assert {name: pin.version for name, pin in pins.items()} == {
        "foo-bar": "1.0",
        "numpy": "1.26.4",
    }
    assert all(pin.source == "index" for pin in pins.values())
    assert result.local_projects == [] and result.dropped == []
    assert result.versions == {"foo-bar": "1.0", "numpy": "1.26.4"}
    assert result.platform == result.target_platform == "linux-x86_64"


def test_broken_metadata_is_skipped_with_a_notice(tmp_path: Path) -> None:
    site = tmp_path / "site"
    add_dist(site, "good", "1.0")
    (site / "empty-1.0.dist-info").mkdir()
    (site / "nover-1.0.dist-info").mkdir()
    (site / "nover-1.0.dist-info" / "METADATA").write_text("Name: nover\n")
    result = scan(site)
    assert [pin.name for pin in result.pins] == ["good"]
    assert sorted(n for n in result.notices if n.startswith("skipped")) == [
        "skipped a distribution with no name or version: ?",
        "skipped a distribution with no name or version: nover",
    ]


def test_editable_and_local_installs_are_local_projects(tmp_path: Path) -> None:
    site, project, sdist = tmp_path / "site", tmp_path / "my proj", tmp_path / "lib-1.0.tar.gz"
    project.mkdir()
    sdist.write_bytes(b"not really an sdist")
    wheel = tmp_path / "wheels" / "tool-2.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"not really a wheel")
    add_dist(site, "mine", "0.1", {"url": project.as_uri(), "dir_info": {"editable": True}})
    add_dist(site, "plain", "0.2", {"url": project.as_uri(), "dir_info": {}})
    add_dist(site, "tool", "2.0", {"url": wheel.as_uri(), "archive_info": {}})
    add_dist(site, "lib", "1.0", {"url": sdist.as_uri(), "archive_info": {}})
    result = scan(site)
    assert result.local_projects == [
        LocalProject("lib", "1.0", sdist),
        LocalProject("mine", "0.1", project),
        LocalProject("plain", "0.2", project),
        LocalProject("tool", "2.0", wheel),
    ]
    assert result.pins == [] and result.notices == []


def test_local_install_whose_source_is_gone_falls_back_to_the_index(tmp_path: Path) -> None:
    site, gone = tmp_path / "site", tmp_path / "gone-1.0-py3-none-any.whl"
    add_dist(site, "gone", "1.0", {"url": gone.as_uri(), "archive_info": {}})
    result = scan(site)
    assert by_name(result.pins)["gone"].requirement() == "gone==1.0"
    assert result.local_projects == []
    assert any(str(gone) in n and "no longer exists" in n for n in result.notices)


def test_vcs_installs_pin_the_commit(tmp_path: Path) -> None:
    site = tmp_path / "site"
    add_dist(
        site,
        "from-git",
        "0.3",
        {"url": "https://github.com/org/repo", "vcs_info": {"vcs": "git", "commit_id": COMMIT}},
    )
    add_dist(
        site,
        "sub",
        "1.1",
        {
            "url": "https://tok:x-oauth@github.com/org/mono.git",
            "vcs_info": {"vcs": "git", "commit_id": COMMIT, "requested_revision": "main"},
            "subdirectory": "pkgs/sub",
        },
    )
    add_dist(
        site,
        "over-ssh",
        "0.9",
        {
            "url": "ssh://git@github.com/org/priv.git",
            "vcs_info": {"vcs": "git", "commit_id": COMMIT},
        },
    )
    result = scan(site)
    pins = by_name(result.pins)
    assert pins["from-git"].source == "vcs"
    assert pins["from-git"].url == f"git+https://github.com/org/repo@{COMMIT}"
    assert pins["sub"].url == f"git+https://github.com/org/mono.git@{COMMIT}#subdirectory=pkgs/sub"
    assert pins["over-ssh"].source == "index" and pins["over-ssh"].version == "0.9"
    assert any("over-ssh" in n and "cannot fetch" in n for n in result.notices)
    assert any("removed credentials" in n and "sub" in n for n in result.notices)
    assert not any("x-oauth" in n for n in result.notices)


def test_remote_archive_is_pinned_from_the_index_with_a_notice(tmp_path: Path) -> None:
    site = tmp_path / "site"
    url = "https://files.example.org/pkgs/thing-4.0.tar.gz"
    add_dist(site, "thing", "4.0", {"url": url, "archive_info": {"hash": "sha256=00"}})
    result = scan(site)
    assert by_name(result.pins)["thing"].requirement() == "thing==4.0"
    assert any(url in n and "best effort" in n for n in result.notices)


@pytest.mark.parametrize(
    ("client", "dropped"),
    [
        ("win-amd64", ["appnope", "pyobjc-core", "pyobjc-framework-cocoa", "pywin32"]),
        ("macosx-14.0-arm64", ["appnope", "pyobjc-core", "pyobjc-framework-cocoa", "pywin32"]),
        ("linux-aarch64", ["appnope", "pyobjc-core", "pyobjc-framework-cocoa", "pywin32"]),
        ("linux-x86_64", []),
    ],
)
def test_platform_only_packages_dropped_for_another_platform(
    tmp_path: Path, client: str, dropped: list[str]
) -> None:
    site = tmp_path / "site"
    for name in ("pywin32", "appnope", "pyobjc-core", "pyobjc-framework-Cocoa", "colorama"):
        add_dist(site, name, "1.0")
    result = scan(site, client_platform=client, target_platform="linux-x86_64")
    assert result.dropped == dropped
    assert "colorama" in by_name(result.pins)
    assert set(by_name(result.pins)) == {
        "colorama",
        "appnope",
        "pywin32",
        "pyobjc-core",
        "pyobjc-framework-cocoa",
    } - set(dropped)
    listed = [n for n in result.notices if "only for the client's platform" in n]
    assert len(listed) == (1 if dropped else 0)
    if dropped:
        assert ", ".join(dropped) in listed[0]
        assert not set(dropped) & set(result.versions)


def test_ignore_and_only(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name, version in [("dask", "2024.8.0"), ("requests", "2.32.3"), ("numpy", "2.0.0")]:
        add_dist(site, name, version)
    ignored = scan(site, ignore=["Requests", "dask"], strict=True)
    assert set(by_name(ignored.pins)) == {"numpy"}
    assert ignored.dropped == ["dask", "requests"]
    assert ignored.versions["dask"] == "2024.8.0"  # the skew check still sees it
    assert ignored.strict is True
    assert any("at your request" in n and "dask" in n for n in ignored.notices)

    only = scan(site, only=["NumPy", "pandas"])
    assert set(by_name(only.pins)) == {"numpy"}
    assert only.dropped == ["dask", "requests"]
    assert any("not installed: pandas" in n for n in only.notices)


def test_index_urls_from_env_lose_their_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "2.0.0")
    monkeypatch.setenv("PIP_INDEX_URL", "https://alice:s3cret@pypi.corp.example/simple")
    monkeypatch.setenv(
        "PIP_EXTRA_INDEX_URL", "https://extra.example/simple https://tok@more.example/simple"
    )
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", "https://uv.example/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "https://links.example/wheels /opt/local-wheels")
    result = scan(site)
    assert result.index_url == "https://pypi.corp.example/simple"
    assert result.extra_index_urls == [
        "https://extra.example/simple",
        "https://more.example/simple",
        "https://uv.example/simple",
    ]
    assert result.find_links == ["https://links.example/wheels"]
    assert sum("removed credentials" in n for n in result.notices) == 2
    assert any("/opt/local-wheels" in n and "local" in n for n in result.notices)
    assert not any("s3cret" in n or "tok@" in n for n in result.notices)
    spec = result.spec({})  # the core refuses credentials: this must validate
    assert spec.index_url == "https://pypi.corp.example/simple"


def test_uv_index_url_used_when_pip_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_index_config: Path
) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "2.0.0")
    monkeypatch.setenv("UV_INDEX_URL", "https://uv-index.example/simple")
    assert scan(site).index_url == "https://uv-index.example/simple"
    no_index_config.write_text("[global]\nindex-url = https://pip-index.example/simple\n")
    both = scan(site)
    assert both.index_url == "https://uv-index.example/simple"
    assert any("also configured: https://pip-index.example/simple" in n for n in both.notices)


def test_pip_config_file(tmp_path: Path, no_index_config: Path) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "2.0.0")
    no_index_config.write_text(
        "[global]\n"
        "index-url = https://global.example/simple\n"
        "extra_index_url =\n"
        "    https://one.example/simple\n"
        "    https://user:pw@two.example/simple\n"
        "find-links = file:///srv/wheels https://links.example/\n"
        "[install]\n"
        "index-url = https://install.example/simple\n"
    )
    result = scan(site)
    assert result.index_url == "https://install.example/simple"
    assert result.extra_index_urls == ["https://one.example/simple", "https://two.example/simple"]
    assert result.find_links == ["https://links.example/"]
    assert any("file:///srv/wheels" in n for n in result.notices)
    assert not any("pw@" in n for n in result.notices)


def test_env_beats_pip_config_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_index_config: Path
) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "2.0.0")
    no_index_config.write_text("[global]\nindex-url = https://config.example/simple\n")
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")
    result = scan(site)
    assert result.index_url == "https://env.example/simple"
    assert result.notices == []


def test_uv_lock_found_up_to_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "2.0.0")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "uv.lock").write_text("version = 1\n")
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert scan(site).uv_lock == repo / "uv.lock"

    inner = repo / "vendored"
    (inner / ".git").mkdir(parents=True)
    monkeypatch.chdir(inner)
    assert scan(site).uv_lock is None  # stops at the inner repository's root


def test_conda_packages_without_pip_metadata_are_noted(tmp_path: Path) -> None:
    site = tmp_path / "site"
    add_dist(site, "numpy", "1.26.4")
    meta = tmp_path / "conda-meta"
    meta.mkdir()
    for entry in ("numpy-1.26.4-py311h1.json", "openssl-3.3.1-h4.json", "python-3.11.7-h5.json"):
        (meta / entry).write_text("{}")
    (meta / "history").write_text("")
    result = scan_environment(paths=[str(site)], prefix=tmp_path, client_platform="linux-x86_64")
    conda = [n for n in result.notices if "conda" in n]
    assert len(conda) == 1 and "openssl" in conda[0]
    assert "numpy" not in conda[0] and "python" not in conda[0]


def test_spec_from_scan_and_wheels(tmp_path: Path) -> None:
    site, project = tmp_path / "site", tmp_path / "proj"
    project.mkdir()
    add_dist(site, "numpy", "2.0.0")
    add_dist(site, "my_proj", "0.1.dev3", {"url": project.as_uri(), "dir_info": {"editable": True}})
    add_dist(
        site,
        "from-git",
        "0.3",
        {"url": "https://github.com/org/repo", "vcs_info": {"vcs": "git", "commit_id": COMMIT}},
    )
    result = scan(site, target_platform="linux-aarch64")
    assert [p.name for p in result.local_projects] == ["my-proj"]
    with pytest.raises(ValueError, match="my-proj"):
        result.spec({})
    with pytest.raises(ValueError, match="other"):
        result.spec({"my-proj": ("a-1-py3-none-any.whl", "0" * 64), "other": ("b.whl", "0" * 64)})
    sha = "ab" * 32
    spec = result.spec({"My_Proj": ("my_proj-0.1.dev3+g1234-py3-none-any.whl", sha)})
    assert spec.platform == "linux-aarch64"
    assert spec.python == result.python
    assert [(p.name, p.source) for p in spec.packages] == [
        ("from-git", "vcs"),
        ("my-proj", "wheel"),
        ("numpy", "index"),
    ]
    wheel = spec.wheels()[0]
    assert (wheel.version, wheel.sha256) == ("0.1.dev3+g1234", sha)
    assert wheel.requirement() == "my_proj-0.1.dev3+g1234-py3-none-any.whl"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("linux-x86_64", "linux-x86_64"),
        ("linux-aarch64", "linux-aarch64"),
        ("macosx-11.0-arm64", "macos-aarch64"),
        ("macosx-10.9-x86_64", "macos-x86_64"),
        ("win-amd64", "windows-x86_64"),
        ("win-arm64", "windows-aarch64"),
        ("win32", "windows-x86"),
    ],
)
def test_normalize_platform(given: str, expected: str) -> None:
    assert normalize_platform(given) == expected


def test_source_fingerprint_follows_sources_not_build_output(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "pkg" / "__pycache__").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("x = 1\n")
    before = source_fingerprint("proj", project)
    for junk in ("pkg/__pycache__/m.pyc", "build/lib/x.py", "dist/a.whl", "pkg.egg-info/PKG-INFO"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    assert source_fingerprint("proj", project) == before
    assert source_fingerprint("other", project) != before
    (project / "pkg" / "build").mkdir()  # a package called build is source, not output
    (project / "pkg" / "build" / "__init__.py").write_text("")
    after = source_fingerprint("proj", project)
    assert after != before
    (project / "pkg" / "__init__.py").write_text("x = 22\n")
    assert source_fingerprint("proj", project) != after


def spec_with(python: str = "3.11.7", **versions: str) -> SoftwareSpec:
    return SoftwareSpec(
        python=python,
        packages=[PackagePin(name=name, version=version) for name, version in versions.items()],
    )


CORE = {
    "dask": "2024.8.0",
    "distributed": "2024.8.0",
    "cloudpickle": "3.0.0",
    "msgpack": "1.0.8",
    "tornado": "6.4.1",
    "toolz": "0.12.1",
}


@pytest.mark.parametrize(
    ("client", "cluster", "python", "strict", "expected"),
    [
        ({**CORE, "numpy": "2.0.0"}, spec_with(**CORE), "3.11.9", False, None),
        (CORE, spec_with(**CORE), "3.12.1", False, ["python: client 3.12, cluster 3.11"]),
        (
            CORE,
            spec_with(**{**CORE, "distributed": "2024.9.0"}),
            "3.11.7",
            False,
            ["distributed: client 2024.8.0, cluster 2024.9.0"],
        ),
        (
            {k: v for k, v in CORE.items() if k != "msgpack"},
            spec_with(**CORE),
            "3.11.7",
            False,
            ["msgpack: client absent, cluster 1.0.8"],
        ),
        (
            CORE,
            spec_with(**{k: v for k, v in CORE.items() if k != "toolz"}),
            "3.11.7",
            False,
            ["toolz: client 0.12.1, cluster absent"],
        ),
        (
            {**CORE, "dask": "2024.8"},
            spec_with(**{**CORE, "dask": "2024.8.0"}),
            "3.11",
            False,
            None,
        ),
        ({**CORE, "numpy": "2.0.0"}, spec_with(**CORE, numpy="1.26.4"), "3.11.7", False, None),
        (
            {**CORE, "numpy": "2.0.0", "Pandas": "2.2.2"},
            spec_with(**CORE, numpy="1.26.4"),
            "3.11.7",
            True,
            ["numpy: client 2.0.0, cluster 1.26.4", "pandas: client 2.2.2, cluster absent"],
        ),
        ({**CORE, "numpy": "2.0.0"}, spec_with(**CORE, numpy="2.0.0"), "3.11.7", True, None),
    ],
    ids=[
        "match",
        "python-minor",
        "distributed",
        "absent-on-client",
        "absent-on-cluster",
        "pep440-equal",
        "non-core-ignored",
        "strict",
        "strict-match",
    ],
)
def test_check_versions(
    client: dict[str, str],
    cluster: SoftwareSpec,
    python: str,
    strict: bool,
    expected: list[str] | None,
) -> None:
    if expected is None:
        check_versions(client, cluster, python, strict=strict)
        return
    with pytest.raises(VersionMismatchError) as caught:
        check_versions(client, cluster, python, strict=strict)
    lines = [line.strip() for line in str(caught.value).splitlines()]
    for line in expected:
        assert line in lines
    assert len(caught.value.mismatches) == len(expected)


def test_version_mismatch_error_is_public() -> None:
    assert billow.VersionMismatchError is VersionMismatchError
    assert issubclass(VersionMismatchError, BillowError)


def test_client_versions_of_the_running_interpreter() -> None:
    import pydantic
    import pytest as pytest_module

    versions = client_versions()
    assert versions["pydantic"] == pydantic.VERSION
    assert versions["pytest"] == pytest_module.__version__
    assert all(name == name.lower() and "_" not in name for name in versions)
