"""``make bench``: billow.Cluster against LocalCluster, measured in the same run.

Prints, for 4 single-threaded workers, the time from constructing the cluster to 4
connected workers, and the seed computation's time, each as billow / LocalCluster. The
embedded server runs as a separate process, as it would for a user. Medians of ROUNDS.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
from dask.distributed import Client, LocalCluster

import billow
from tests.support.processes import EmbeddedServer

ROUNDS = 3
N_WORKERS = 4


def seed(client: Client) -> float:
    start = time.perf_counter()
    result = da.random.random((10000, 10000)).sum().compute()
    assert abs(result - 5e7) < 1e5, result
    return time.perf_counter() - start


def run_billow(server: EmbeddedServer, i: int) -> tuple[float, float]:
    start = time.perf_counter()
    with (
        billow.Cluster(
            n_workers=N_WORKERS,
            name=f"bench-{i}",
            server=server.url,
            token=server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(N_WORKERS)
        started = time.perf_counter() - start
        return started, seed(client)


def run_local() -> tuple[float, float]:
    start = time.perf_counter()
    with (
        LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(N_WORKERS)
        started = time.perf_counter() - start
        return started, seed(client)


def main() -> int:
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="billow-bench-"))).start()
    try:
        billow_runs, local_runs = [], []
        for i in range(ROUNDS):
            local_runs.append(run_local())
            billow_runs.append(run_billow(server, i))
    finally:
        server.stop()
        server.kill_instances()
    b_start = statistics.median(r[0] for r in billow_runs)
    l_start = statistics.median(r[0] for r in local_runs)
    b_seed = statistics.median(r[1] for r in billow_runs)
    l_seed = statistics.median(r[1] for r in local_runs)
    print(f"billow vs LocalCluster, {N_WORKERS} workers, median of {ROUNDS} rounds")
    print(
        f"  start to {N_WORKERS} workers: billow {b_start:.2f} s, LocalCluster "
        f"{l_start:.2f} s, ratio {b_start / l_start:.2f}x  (goal <= 1.5x)"
    )
    print(
        f"  seed computation:    billow {b_seed:.2f} s, LocalCluster {l_seed:.2f} s, "
        f"ratio {b_seed / l_seed:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
