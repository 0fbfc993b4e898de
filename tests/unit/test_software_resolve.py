"""Reading ``uv pip compile`` output into pins, and the cluster's uv platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow.errors import ResolutionError
from billow.software.resolve import parse_compiled, python_platform, source_checkout
from billow.software.wheels import BuiltWheel

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def test_index_vcs_and_billow_wheel_lines_become_pins() -> None:
    wheel = BuiltWheel("billow", "0.1.0", Path("/tmp/w/billow-0.1.0-py3-none-any.whl"), SHA)
    text = """
        dask==2026.8.0
        Jinja2==3.1.6    # via distributed
        billow @ file:///tmp/w/billow-0.1.0-py3-none-any.whl
        mylib @ git+https://github.com/org/mylib@0123456789abcdef0123456789abcdef01234567
        --index-url https://pypi.org/simple
    """
    pins = {p.name: p for p in parse_compiled(text, wheel)}
    assert set(pins) == {"dask", "jinja2", "billow", "mylib"}
    assert (pins["dask"].version, pins["dask"].source) == ("2026.8.0", "index")
    assert pins["billow"].source == "wheel" and pins["billow"].sha256 == SHA
    assert pins["billow"].filename == "billow-0.1.0-py3-none-any.whl"
    assert pins["mylib"].source == "vcs" and pins["mylib"].version.startswith("0123456789")


def test_local_paths_and_archive_urls_are_refused_by_name() -> None:
    for line in ("mine @ file:///home/me/mine", "other @ https://example.com/other-1.0.tar.gz"):
        with pytest.raises(ResolutionError, match="cluster instances cannot install") as e:
            parse_compiled(line, None)
        assert e.value.packages == [line.split()[0]]


@pytest.mark.parametrize(
    ("platform", "target"),
    [("linux-x86_64", "x86_64-manylinux_2_28"), ("linux-aarch64", "aarch64-manylinux_2_28")],
)
def test_cluster_platforms_map_to_manylinux(platform: str, target: str) -> None:
    assert python_platform(platform) == target


@pytest.mark.parametrize("platform", ["macos-aarch64", "windows-x86_64", "linux"])
def test_other_platforms_are_refused(platform: str) -> None:
    with pytest.raises(ValueError, match="clusters run linux"):
        python_platform(platform)


def test_this_checkout_is_found_as_billows_source() -> None:
    import billow

    root = source_checkout()
    assert root is not None and Path(billow.__file__).resolve().is_relative_to(root)
