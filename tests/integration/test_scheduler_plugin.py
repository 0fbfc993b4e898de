"""The scheduler plugin's reports from a real (in-process) Dask scheduler."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster

from billow.plugin import BillowSchedulerPlugin
from billow_control.core.models import Heartbeat

pytestmark = pytest.mark.integration

REAPER_FIELDS = {
    "scheduler_address",
    "dashboard_address",
    "workers",
    "busy",
    "idle_seconds",
    "clients",
    "seconds_without_clients",
    "gpus",
    "gpu_low_seconds",
}


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as c:
        yield c


def plugin_for(cluster: LocalCluster, analytics: str, clock=time.monotonic):
    plugin = BillowSchedulerPlugin(
        "http://127.0.0.1:9", "c-1", "t", analytics=analytics, clock=clock
    )
    plugin.scheduler = cluster.scheduler
    return plugin


def test_off_sends_only_what_the_reaper_needs(cluster: LocalCluster) -> None:
    beat = plugin_for(cluster, "off").snapshot()
    assert set(beat) == REAPER_FIELDS
    Heartbeat.model_validate(beat)


def test_minimal_and_full_add_sizes_versions_and_detail(cluster: LocalCluster) -> None:
    minimal = plugin_for(cluster, "minimal").snapshot()
    assert minimal["versions"]["distributed"] and minimal["n_threads"] == 1
    assert "worker_detail" not in minimal
    full = plugin_for(cluster, "full").snapshot()
    assert full["worker_detail"][0]["nthreads"] == 1
    Heartbeat.model_validate(full)


def test_running_task_is_busy_and_idle_time_follows_the_monotonic_clock(
    cluster: LocalCluster,
) -> None:
    clock = FakeMonotonic()
    plugin = plugin_for(cluster, "minimal", clock)
    clock.t += 50  # fifty idle seconds; wall-clock time is irrelevant
    assert plugin.snapshot()["idle_seconds"] == 50
    with Client(cluster) as client:
        future = client.submit(time.sleep, 2, pure=False)
        deadline = time.monotonic() + 10
        while not plugin.snapshot()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        clock.t += 500
        beat = plugin.snapshot()
        assert beat["busy"] and beat["idle_seconds"] == 0 and beat["tasks_processing"] == 1
        assert beat["clients"] == 1
        Heartbeat.model_validate(beat)
        future.result()


def test_unknown_analytics_level_is_refused() -> None:
    with pytest.raises(ValueError, match="analytics must be one of"):
        BillowSchedulerPlugin("http://x", "c", "t", analytics="everything")
