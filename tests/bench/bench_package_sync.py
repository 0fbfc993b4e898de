"""``make bench``: package sync, measured against baselines in the same run.

1. **Environment build, uv against pip.** The same 30-package lock (pinned from this
   interpreter's own distributions) is installed into empty virtualenvs, once with
   ``uv pip install`` and once with ``pip install``, each with its download cache warmed
   by a first, unmeasured install (what an instance's cache holds after the first
   cluster). Medians of ROUNDS; goal: uv at least 5x faster.
2. **Cluster start with package sync**, from ``billow.Cluster(package_sync=True)`` to 4
   connected workers, on a fresh ``billow server``: the first cluster builds the
   environment (cold cache), the second reuses it (warm cache); against
   ``LocalCluster`` with the same worker count in the same run. The environment phase
   of each instance is read from its log (``environment ... ready in X s``); goal for the
   warm cache: at most 0.5 s.

Nothing is asserted about time.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from dask.distributed import Client, LocalCluster
from uv import find_uv_bin

import billow
from tests.support.processes import EmbeddedServer

ROUNDS = 3
N_PACKAGES = 30
N_WORKERS = 4
SKIP = {"billow", "pip", "setuptools", "wheel", "uv"}
READY = re.compile(r"environment \w+ ready in ([0-9.]+) s \((cached|built)\)")


def lock_of_this_interpreter(n: int) -> list[str]:
    """``name==version`` of ``n`` distributions installed here from an index (sorted, so
    every run installs the same set)."""
    pins = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in SKIP or dist.read_text("direct_url.json"):
            continue
        pins.add(f"{name.lower()}=={dist.version}")
    return sorted(pins)[:n]


def install_seconds(tool: str, lock: Path, root: Path, cache: Path) -> float:
    target = root / f"{tool}-{time.monotonic_ns()}"
    uv = find_uv_bin()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(target)], check=True)
    python = target / "bin" / "python"
    if tool == "uv":
        command = [uv, "pip", "install", "-q", "--python", str(python), "--cache-dir", str(cache)]
        command += ["--no-deps", "-r", str(lock)]
    else:
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "pip"], check=True)
        command = [str(python), "-m", "pip", "install", "-q", "--cache-dir", str(cache)]
        command += ["--no-deps", "-r", str(lock)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def bench_installers() -> None:
    root = Path(tempfile.mkdtemp(prefix="billow-bench-install-"))
    try:
        lock = root / "lock.txt"
        pins = lock_of_this_interpreter(N_PACKAGES)
        lock.write_text("\n".join(pins) + "\n")
        times: dict[str, list[float]] = {"uv": [], "pip": []}
        for tool in times:
            install_seconds(tool, lock, root, root / f"{tool}-cache")  # warm the cache
        for _ in range(ROUNDS):
            for tool in times:
                times[tool].append(install_seconds(tool, lock, root, root / f"{tool}-cache"))
        uv_s, pip_s = (statistics.median(times[t]) for t in ("uv", "pip"))
        print(f"environment build, {len(pins)} pinned packages, warm caches, median of {ROUNDS}")
        print(f"  uv pip install  {uv_s:6.2f} s")
        print(f"  pip install     {pip_s:6.2f} s  (baseline)")
        print(f"  uv is {pip_s / uv_s:.1f}x faster  (goal >= 5x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def start_seconds(make: object) -> float:
    start = time.perf_counter()
    with make() as cluster, Client(cluster) as client:  # type: ignore[operator]
        client.wait_for_workers(N_WORKERS)
        return time.perf_counter() - start


def instance_logs(server: EmbeddedServer) -> set[Path]:
    return set((server.data_dir / "instances").glob("*/instance.log"))


def environment_phase(logs: set[Path]) -> float:
    """The slowest ``environment ... ready in X s`` among these instances' logs."""
    found = [float(m[1]) for log in logs for m in READY.finditer(log.read_text(errors="replace"))]
    return max(found) if found else float("nan")


def bench_cluster_start() -> None:
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="billow-bench-sync-"))).start()

    def synced() -> billow.Cluster:
        return billow.Cluster(
            n_workers=N_WORKERS,
            package_sync=True,
            server=server.url,
            token=server.token,
            show_progress=False,
        )

    try:
        local = start_seconds(lambda: LocalCluster(n_workers=N_WORKERS, threads_per_worker=1))
        runs = {}
        for label in ("cold", "warm"):
            before = instance_logs(server)
            runs[label] = start_seconds(synced)
            runs[f"{label}-env"] = environment_phase(instance_logs(server) - before)
    finally:
        server.stop()
        server.kill_instances()
    print(f"Cluster(package_sync=True) to {N_WORKERS} workers vs LocalCluster, same run")
    print(f"  LocalCluster                 {local:6.2f} s  (baseline)")
    for label in ("cold", "warm"):
        ratio = runs[label] / local
        print(
            f"  package sync, {label} cache     {runs[label]:6.2f} s  ({ratio:.1f}x); "
            f"environment phase, slowest instance {runs[label + '-env']:.2f} s"
        )
    print("  goal: environment phase of the warm cache <= 0.5 s")


def main() -> int:
    bench_installers()
    bench_cluster_start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
