"""The seed's example on a real TLS-secured cluster run by `billow server`."""

from __future__ import annotations

import dask.array as da
import httpx
import pytest
from dask.distributed import Client

import billow
from tests.support.processes import EmbeddedServer, pid_alive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_seed_computation_then_close_leaves_nothing_running(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    with (
        billow.Cluster(
            n_workers=4,
            name="seed-demo",
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.scheduler_address.startswith("tls://")
        assert len(client.scheduler_info()["workers"]) == 4
        result = da.random.random((10000, 10000)).sum().compute()
        cluster_id = cluster.cluster_id
        pids = embedded_server.instance_pids(cluster.cluster_id)
        assert "seed-demo" in repr(cluster) and "ready" in repr(cluster)
        page = cluster._repr_html_()
        assert "seed-demo" in page and cluster.cluster_id in page and "4 of 4" in page
        assert cluster.dashboard_link.startswith("https://127.0.0.1:")

    assert abs(result - 5e7) < 1e5  # mean 0.5 of 1e8 uniforms; std ~2.9e3
    record = api.get(f"/v1/clusters/{cluster_id}").json()
    assert record["status"] == "stopped"
    assert record["stop_reason"] == "user"
    assert len(pids) == 5
    assert not [p for p in pids if pid_alive(p)]


def test_reconnect_by_name_reuses_the_running_cluster(embedded_server: EmbeddedServer) -> None:
    kwargs = dict(server=embedded_server.url, token=embedded_server.token, show_progress=False)
    first = billow.Cluster(n_workers=1, name="reconnect-me", **kwargs)
    try:
        second = billow.Cluster(name="reconnect-me", shutdown_on_close=False, **kwargs)
        assert second.reconnected and second.cluster_id == first.cluster_id
        with Client(second) as client:
            assert client.submit(lambda x: x + 1, 1).result() == 2
        second.close()
        assert first.record["status"] == "ready"
        logs = first.get_logs()
        assert "scheduler" in logs and any(name.startswith("worker-") for name in logs)
        assert "Scheduler at" in logs["scheduler"]
    finally:
        first.close()
    assert first.record["status"] == "stopped"


def test_scale_up_and_down(embedded_server: EmbeddedServer) -> None:
    with (
        billow.Cluster(
            n_workers=1,
            name="scaler",
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        cluster.scale(1)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 60, "scale down to 1")


def test_asynchronous_use(embedded_server: EmbeddedServer) -> None:
    import asyncio

    async def main() -> int:
        async with (
            billow.Cluster(
                n_workers=1,
                name="async-user",
                server=embedded_server.url,
                token=embedded_server.token,
                show_progress=False,
                asynchronous=True,
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            return await client.submit(sum, [1, 2, 3])

    assert asyncio.run(main()) == 6


def test_startup_failure_reports_the_failing_instance_logs(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    broken = {"DASK_DISTRIBUTED__WORKER__PRELOAD": '["billow_no_such_module"]'}
    with pytest.raises(billow.ClusterStartError) as failure:
        billow.Cluster(
            n_workers=1,
            name="broken",
            environ=broken,
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        )
    error = failure.value
    assert "worker" in str(error) and "exited" in str(error)
    assert any("billow_no_such_module" in line for line in error.logs)
    clusters = api.get("/v1/clusters", params={"name": "broken"}).json()["clusters"]
    assert clusters[0]["status"] == "failed"
    assert clusters[0]["stop_reason"] == "worker-exited"
    cluster_id = clusters[0]["id"]
    assert embedded_server.instance_pids(cluster_id)
    wait_until(
        lambda: not embedded_server.live_instance_pids(cluster_id), 30, "instances of broken gone"
    )
