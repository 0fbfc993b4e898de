"""A real cluster on Compute Engine (the loopback fake): the core ``Lifecycle`` driven by
the local orchestrator over SQLite creates it through ``GceProvider``; each instance
boots its real startup script on a bare python3 (uv and the billow wheel through signed
URLs), the SDK computes over mutual TLS, logs come back through Cloud Logging (the
fake), and after close no labelled instance remains. See ``tests/support/gce.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import httpx
import pytest
from dask.distributed import Client

import billow
from tests.support.gce import GcePlane, gce_control_plane
from tests.support.instances import InstanceKit
from tests.support.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def gce(tmp_path: Path, instance_kit: InstanceKit) -> Iterator[GcePlane]:
    with gce_control_plane(tmp_path, instance_kit, f"e2e{uuid.uuid4().hex[:6]}") as plane:
        yield plane
    assert not plane.compute.server.errors and not plane.compute.errors
    assert not plane.logging.server.errors
    assert not plane.compute.live_pids()


def test_seed_computation_on_compute_engine(gce: GcePlane) -> None:
    with (
        billow.Cluster(
            n_workers=2,
            name="gce-seed",
            server=gce.url,
            token=gce.token,
            show_progress=False,
            timeout=120,
        ) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert len(client.scheduler_info()["workers"]) == 2
        result = da.random.random((1000, 1000)).sum().compute()
        cluster_id = cluster.cluster_id
        running_logs = cluster.get_logs()
        instances = {i.name: i for i in gce.provider.describe(cluster_id)}
    assert abs(result - 5e5) < 5e3  # mean 0.5 of 1e6 uniforms; std ~289
    assert cluster.record["status"] == "stopped"
    assert set(instances) == {"scheduler", "worker-0", "worker-1"}
    assert "scheduler listening at tls://" in running_logs["scheduler"]

    # After close: no instance labelled with the cluster or the deployment is left, nor
    # the cluster's template and firewall rule; every agent process is gone.
    labelled = [
        i
        for i in gce.compute.instances.values()
        if i["labels"]["billow-deployment"] == gce.deployment
    ]
    assert labelled == []
    assert f"billow-{cluster_id}" not in gce.compute.templates
    assert f"billow-{cluster_id}" not in gce.compute.firewalls
    wait_until(lambda: not gce.compute.live_pids(), 30, "agent processes gone")

    # Each instance ran its real startup script on a bare python3: it fetched uv and the
    # wheel through signed URLs (checked by sha256) and ran the agent from its venv. Its
    # lines come back from Cloud Logging after the instances are gone, through the API
    # that `billow cluster logs` calls.
    answer = httpx.get(
        f"{gce.url}/v1/clusters/{cluster_id}/logs",
        params={"lines": 500},
        headers={"Authorization": f"Bearer {gce.token}"},
        timeout=30,
    )
    answer.raise_for_status()
    logs = {i["name"]: i for i in answer.json()["instances"]}
    assert set(logs) == {"scheduler", "worker-0", "worker-1"}
    assert {i["state"] for i in logs.values()} == {"terminated"}
    assert any("scheduler listening at tls://" in line for line in logs["scheduler"]["lines"])
    for name, info in instances.items():
        home = f"{gce.compute.booted[info.id].root}/opt/billow"
        lines = logs[name]["lines"]
        assert any(f"billow bootstrap: kit: {home}/uv (" in line for line in lines), lines
        assert any(f"running on {home}/agent/bin/python" in line for line in lines), lines
