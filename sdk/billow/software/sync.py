"""``Cluster(package_sync=True)``: turn the client's environment into the cluster's spec.

Phases, each reported with its counts and time: scan the installed distributions, check
version skew (before anything is built, uploaded or started), build wheels of local and
editable code, upload the wheels the deployment's object store lacks (straight to
pre-signed URLs, never through the API), and produce the ``SoftwareSpec`` the create
request carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from billow_control.core.software import PackagePin, SoftwareSpec, index_arguments

from ..errors import WheelBuildError
from .scan import ScanResult, scan_environment
from .skew import check_versions
from .wheels import build_wheel

Report = Callable[[str], None]
DASHBOARD = "bokeh>=3.1.0"  # what distributed's dashboard needs
UV_PLATFORMS = {"linux-x86_64": "x86_64-manylinux_2_28", "linux-aarch64": "aarch64-manylinux_2_28"}


def dashboard_pins(scan: ScanResult, timeout: float = 120.0) -> tuple[list[PackagePin], str]:
    """Pins that add bokeh, and what it needs, to a spec that lacks it, resolved by
    ``uv pip compile`` against the spec's own pins so nothing else changes. Returns the
    new pins and a notice for the user; ``([], reason)`` when it cannot resolve."""
    import subprocess
    import tempfile

    from uv import find_uv_bin

    have = {p.name: p.version for p in scan.pins} | {p.name: p.version for p in scan.local_projects}
    if "bokeh" in have:
        return [], ""
    with tempfile.TemporaryDirectory(prefix="billow-dashboard-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(have.items())))
        command = [
            find_uv_bin(), "pip", "compile", "-", "--constraint", str(constraints),
            "--python-version", ".".join(scan.python.split(".")[:2]),
            "--no-header", "--no-annotate", "--quiet",
        ]  # fmt: skip
        if scan.target_platform in UV_PLATFORMS:
            command += ["--python-platform", UV_PLATFORMS[scan.target_platform]]
        command += index_arguments(scan.index_url, scan.extra_index_urls, scan.find_links)
        proc = subprocess.run(
            command, input=DASHBOARD, capture_output=True, text=True, timeout=timeout
        )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["uv pip compile failed"])[-1]
        return [], f"the dashboard needs bokeh, which could not be added: {reason}"
    pins = []
    for line in proc.stdout.splitlines():
        name, _, version = line.strip().partition("==")
        if version and name and name.lower() not in have:
            pins.append(PackagePin(name=name, version=version.split(";")[0].strip()))
    added = ", ".join(f"{p.name} {p.version}" for p in pins)
    return pins, f"added {added} so the cluster's dashboard works (bokeh was not installed here)"


def versions_only(scan: ScanResult) -> SoftwareSpec:
    """The spec as it will be, with local projects pinned by version alone: enough for
    the skew check, before any wheel exists."""
    local = [PackagePin(name=p.name, version=p.version) for p in scan.local_projects]
    packages = [*scan.pins, *local]
    return SoftwareSpec(python=scan.python, platform=scan.target_platform, packages=packages)


async def package_sync(
    api: Any,
    *,
    ignore: Iterable[str] = (),
    only: Iterable[str] | None = None,
    strict: bool = False,
    wheel_dir: Path,
    report: Report = print,
) -> SoftwareSpec:
    """The spec of this client's environment, with its local code uploaded.

    Raises ``VersionMismatchError`` (nothing built or uploaded), ``WheelBuildError`` naming
    the project, or the API's errors for a refused upload.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    scan = await loop.run_in_executor(
        None, lambda: scan_environment(ignore=ignore, only=only, strict=strict)
    )
    report(
        f"package sync: scanned {len(scan.pins) + len(scan.local_projects)} packages, "
        f"{len(scan.local_projects)} of them local ({time.monotonic() - started:.1f} s)"
    )
    for notice in scan.notices:
        report(f"  notice: {notice}")
    check_versions(scan.versions, versions_only(scan), scan.python, strict=strict)
    extra, notice = await loop.run_in_executor(None, dashboard_pins, scan)
    scan.pins.extend(extra)
    if notice:
        report(f"  notice: {notice}")

    started = time.monotonic()
    built = []
    for project in scan.local_projects:
        wheel = await loop.run_in_executor(None, build_wheel, project, wheel_dir)
        if not wheel.pure and scan.platform != scan.target_platform:
            raise WheelBuildError(
                project.name,
                f"it has compiled code built for {scan.platform}, and the cluster runs "
                f"{scan.target_platform}; publish it to an index with wheels for that "
                "platform, or leave it out (package_sync_ignore)",
            )
        built.append(wheel)
    if built:
        names = ", ".join(b.path.name for b in built)
        seconds = time.monotonic() - started
        report(f"package sync: built {len(built)} wheel(s) ({seconds:.1f} s): {names}")

    started = time.monotonic()
    uploaded, present = await api.upload_wheels([(b.path, b.sha256) for b in built])
    if built:
        report(
            f"package sync: uploaded {uploaded} wheel(s), {present} already stored "
            f"({time.monotonic() - started:.1f} s)"
        )
    return scan.spec({b.name: (b.path.name, b.sha256) for b in built})
