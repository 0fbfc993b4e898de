"""``make bench``: billow.Cluster against LocalCluster, measured in the same run.

For 4 single-threaded workers, ROUNDS rounds, each running in turn:

* LocalCluster (processes) to 4 connected workers, then the seed computation;
* billow.Cluster on an embedded server (a separate process, as for a user), cold: every
  instance is a new ``python -m billow.agent`` process;
* billow.Cluster on a second server with a warm pool of 5 agents (``billow.warm-pool.size``),
  waiting between rounds until the pool is full and warm again.

Printed: the median and the worst round of start to 4 workers as ratios to LocalCluster's
(goals: cold median <= 1.2x, no round above 1.35x; warm pool faster than LocalCluster and
<= 0.3 s), the seed computation right after the start (goal <= 1.1x), and where a cold
start's time goes, from the server's records and the agents' logs: the API call, the
first reconcile step, process start, agent bootstrap, scheduler up, workers joined, and
the control plane and SDK seeing it ready.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dask.array as da
from dask.distributed import Client, LocalCluster

import billow
from tests.support.processes import EmbeddedServer, wait_until

ROUNDS = 5
N_WORKERS = 4
POOL = N_WORKERS + 1
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def seed() -> float:
    start = time.perf_counter()
    result = da.random.random((10000, 10000)).sum().compute()
    assert abs(result - 5e7) < 1e5, result
    return time.perf_counter() - start


def run_local() -> tuple[float, float]:
    start = time.perf_counter()
    with (
        LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(N_WORKERS)
        return time.perf_counter() - start, seed()


def run_billow(server: EmbeddedServer, name: str) -> tuple[float, float, dict[str, float]]:
    wall_start = time.time()
    start = time.perf_counter()
    with (
        billow.Cluster(
            n_workers=N_WORKERS,
            name=name,
            server=server.url,
            token=server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(N_WORKERS)
        started = time.perf_counter() - start
        wall_ready = time.time()
        computed = seed()
        phases = start_phases(server, str(cluster.cluster_id), wall_start, wall_ready)
        return started, computed, phases


def start_phases(
    server: EmbeddedServer, cluster_id: str, wall_start: float, wall_seen: float
) -> dict[str, float]:
    """Seconds of each phase of one start, from the record, the provider's launch times
    and the agents' log lines (all on this machine's clock)."""
    events = [
        json.loads(line)
        for line in (server.data_dir / "events.jsonl").read_text().splitlines()
        if cluster_id in line
    ]
    at = {e["kind"]: _epoch(e["time"]) for e in events}
    with sqlite3.connect(server.data_dir / "instances" / "instances.db") as db:
        rows = db.execute(
            "SELECT id, role, launched_at FROM instances WHERE cluster_id=?", (cluster_id,)
        ).fetchall()
    scheduler_launched = next(_epoch(r[2]) for r in rows if r[1] == "scheduler")
    marks: dict[str, float] = {}
    joined = []
    for instance_id, role, _ in rows:
        for stamp, line in _log_lines(server.data_dir / "instances" / instance_id):
            if role == "worker":
                if " connected to " in line:
                    joined.append(stamp)
                continue
            for mark, text in (
                ("agent", "running on"),
                ("assigned", "pooled agent assigned"),
                ("bootstrapped", "bootstrapped:"),
                ("listening", "scheduler listening at"),
            ):
                if text in line:
                    marks[mark] = stamp
    agent = marks.get("assigned", marks["agent"])  # a pooled agent ran long before
    return {
        "API create": at["requested"] - wall_start,
        "first reconcile": scheduler_launched - at["requested"],
        "process start (scheduler)": agent - scheduler_launched,
        "agent bootstrap": marks["bootstrapped"] - agent,
        "scheduler up": marks["listening"] - marks["bootstrapped"],
        "workers joined": max(joined) - marks["listening"],
        "ready (control plane)": at["ready"] - max(joined),
        "ready seen (SDK)": wall_seen - at["ready"],
    }


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _log_lines(directory: Path) -> Iterator[tuple[float, str]]:
    for name in ("instance.log.1", "instance.log"):
        path = directory / name
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_TIME.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                yield stamp.timestamp(), line


def pool_warm(server: EmbeddedServer) -> bool:
    """Whether every pooled agent of the server logged that it is warm."""
    pool = server.data_dir / "instances" / "pool"
    logs = [d / "instance.log" for d in pool.iterdir()] if pool.exists() else []
    warm = [p for p in logs if p.exists() and "pooled agent warm" in p.read_text()]
    return len(warm) >= POOL


@contextmanager
def servers() -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    cold = EmbeddedServer(Path(tempfile.mkdtemp(prefix="billow-bench-"))).start()
    warm = EmbeddedServer(
        Path(tempfile.mkdtemp(prefix="billow-bench-pool-")),
        env={"DASK_BILLOW__WARM_POOL__SIZE": str(POOL)},
    ).start()
    try:
        yield cold, warm
    finally:
        for server in (cold, warm):
            server.stop()
            server.kill_instances()


def main() -> int:
    local, cold, warm, phases, warm_phases = [], [], [], [], []
    with servers() as (cold_server, warm_server):
        for i in range(ROUNDS):
            # Nothing warms in the background during any measured start: the pool's
            # refill after the last warm round would slow whichever run it overlaps.
            wait_until(lambda: pool_warm(warm_server), 180, "warm pool refilled")
            local.append(run_local())
            started, computed, split = run_billow(cold_server, f"bench-{i}")
            cold.append((started, computed))
            phases.append(split)
            started, computed, split = run_billow(warm_server, f"bench-warm-{i}")
            warm.append((started, computed))
            warm_phases.append(split)
    ratios = [c[0] / lc[0] for c, lc in zip(cold, local, strict=True)]
    warm_ratios = [w[0] / lc[0] for w, lc in zip(warm, local, strict=True)]
    l_start = statistics.median(r[0] for r in local)
    print(f"billow vs LocalCluster, {N_WORKERS} workers, {ROUNDS} rounds (medians)")
    print(
        f"  start to {N_WORKERS} workers, cold: billow {statistics.median(r[0] for r in cold):.2f}"
        f" s, LocalCluster {l_start:.2f} s; ratio median {statistics.median(ratios):.2f}x, "
        f"worst {max(ratios):.2f}x  (goal: median <= 1.2x, no round above 1.35x)"
    )
    rounds = ", ".join(
        f"{lc[0]:.2f}/{c[0]:.2f}/{w[0]:.2f}" for lc, c, w in zip(local, cold, warm, strict=True)
    )
    print(f"  each round, LocalCluster/cold/warm seconds: {rounds}")
    w_start = statistics.median(r[0] for r in warm)
    print(
        f"  start from a warm pool of {POOL}: {w_start:.2f} s; ratio median "
        f"{statistics.median(warm_ratios):.2f}x, worst {max(warm_ratios):.2f}x  "
        f"(goal: <= 0.3 s, and faster than LocalCluster)"
    )
    l_seed = statistics.median(r[1] for r in local)
    for label, runs in (("cold", cold), ("warm pool", warm)):
        b_seed = statistics.median(r[1] for r in runs)
        print(
            f"  first seed computation ({label}): billow {b_seed:.2f} s, LocalCluster "
            f"{l_seed:.2f} s, ratio {b_seed / l_seed:.2f}x  (goal <= 1.1x)"
        )
    print("  where a start's time goes, median of the rounds:   cold    warm pool")
    for phase in phases[0]:
        cold_s = statistics.median(p[phase] for p in phases)
        warm_s = statistics.median(p[phase] for p in warm_phases)
        print(f"    {phase:45} {cold_s:6.2f} s {warm_s:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
