"""The warm pool: clusters start on pre-booted agents, each used by one cluster only.

A server keeps 3 pooled agents (``billow.warm-pool.size``). A 2-worker cluster (3
instances) takes all three: its instances are the processes that were waiting before it
was asked for. After it closes, the pool refills with new processes. A 3-worker cluster
(4 instances) then takes the three new ones and starts its fourth cold: none of its
processes served the first cluster, its workers hold its own CA and not the first's, and
both compute. Run as root, an assigned agent runs as its owner's OS user, not root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask.distributed import Client

import billow
from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = 3


def pooled_pids(server: EmbeddedServer) -> set[int]:
    """Agents waiting in the pool: ``billow.agent --pooled`` processes working in the
    server's pool directory that logged they are warm."""
    pool = (server.data_dir / "instances" / "pool").resolve()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
            if b"--pooled" not in cmdline or cwd.parent != pool:
                continue
            log = (cwd / "instance.log").read_text(errors="replace")
        except OSError:  # gone, or being assigned (its directory renamed)
            continue
        if "pooled agent warm" in log and "assigned" not in log:
            found.add(int(entry.name))
    return found


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(
        tmp_path_factory.mktemp("warm-pool"), env={"DASK_BILLOW__WARM_POOL__SIZE": str(POOL)}
    ).start()
    try:
        wait_until(lambda: "warm pool: 3 agents" in srv.log_path.read_text(), 120, "pool full")
        yield srv
    finally:
        srv.stop()
        srv.kill_instances()


def compute(cluster: billow.Cluster) -> tuple[int, set[str]]:
    with Client(cluster) as client:
        total = client.submit(sum, range(100)).result()
        cas = set(client.run(lambda dask_worker: dask_worker.security.tls_ca_file).values())
    return total, cas


def test_clusters_start_on_pooled_agents_used_once(server: EmbeddedServer) -> None:
    kwargs = dict(server=server.url, token=server.token, show_progress=False)
    waiting = pooled_pids(server)
    assert len(waiting) == POOL
    with billow.Cluster(n_workers=2, name="pooled-1", **kwargs) as first:
        first_pids = set(server.instance_pids(first.cluster_id))
        assert first_pids == waiting  # all three instances came from the pool
        total, cas = compute(first)
        assert total == 4950 and cas == {first.security.tls_ca_file}
        if server.multi_tenant:  # run as root: each assigned agent dropped to its user
            assert all(uid_of(pid) != 0 for pid in first_pids)
            assert len({uid_of(pid) for pid in first_pids}) == 1
    wait_until(lambda: len(pooled_pids(server)) == POOL, 120, "pool refilled")
    refilled = pooled_pids(server)
    assert not refilled & first_pids  # fresh processes, not the first cluster's
    with billow.Cluster(n_workers=3, name="pooled-2", **kwargs) as second:
        second_pids = set(server.instance_pids(second.cluster_id))
        assert len(second_pids) == 4 and not second_pids & first_pids
        assert len(second_pids & refilled) == POOL  # and one started cold
        total, cas = compute(second)
        assert total == 4950 and cas == {second.security.tls_ca_file}
        assert first.security.tls_ca_file not in cas
