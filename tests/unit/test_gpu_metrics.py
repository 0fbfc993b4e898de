"""GPU use is measured on workers and judged from their reports: a worker's report of an
idle GPU warns once; a GPU on the scheduler's machine never counts. NVML is injected at
the boundary (no GPU here): a fake ``pynvml`` module with what billow.gpu calls."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from billow.gpu import METRIC, GPUProbe, aggregate, worker_metrics
from billow.plugin import BillowSchedulerPlugin
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    Heartbeat,
    HeartbeatRecord,
)
from billow_control.core.settings import ControlSettings
from billow_control.core.watchdog import judge

pytestmark = pytest.mark.unit

GiB = 2**30


class FakeNVML:
    """What ``pynvml`` answers on a machine with ``count`` GPUs at ``use`` (0..100)."""

    def __init__(self, count: int, use: int = 0) -> None:
        self.count, self.use, self.inits = count, use, 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self.use)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=2 * GiB, total=16 * GiB)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scheduler_with(*reports: dict[str, Any] | None) -> Any:
    workers = {
        f"tls://10.0.0.{i}:4000": SimpleNamespace(
            name=f"worker-{i}",
            metrics={METRIC: report} if report else {},
            nthreads=4,
            memory_limit=16 * GiB,
            processing=set(),
            nbytes=0,
        )
        for i, report in enumerate(reports)
    }
    return SimpleNamespace(
        workers=workers,
        services={},
        address="tls://10.0.0.100:8786",
        clients={},
        queued=[],
        unrunnable=[],
    )


def plugin_over(scheduler: Any, clock: Clock) -> BillowSchedulerPlugin:
    plugin = BillowSchedulerPlugin("http://cp", "c-1", "bct_x", analytics="off", clock=clock)
    plugin.scheduler = scheduler
    return plugin


def verdicts(beats: list[dict[str, Any]]) -> list[str]:
    """What the watchdog decides on each heartbeat in turn, recording warnings as it does
    (tasks are running: a busy cluster is never stopped for idleness)."""
    settings = ControlSettings(gpu_idle_warning=900)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = ClusterRecord(
        id="c-1", owner="u-1", name="gpu", request=ClusterRequest(), desired_workers=2
    )
    record.status, record.ready_at = ClusterStatus.ready, now
    out = []
    for beat in beats:
        hb = HeartbeatRecord(
            cluster_id="c-1", received_at=now, heartbeat=Heartbeat(**{**beat, "busy": True})
        )
        verdict = judge(record, hb, now, settings)
        if verdict.action == "warn":
            record.warnings = [*record.warnings, f"{verdict.reason}: {verdict.message}"]
        out.append(verdict.action)
    return out


def test_a_workers_idle_gpu_warns_once() -> None:
    nvml = FakeNVML(count=1, use=3)
    metric = worker_metrics(GPUProbe(nvml))[METRIC]  # what the worker's heartbeat carries
    report = metric(None)
    assert report == {
        "count": 1,
        "utilization": [0.03],
        "memory_used": [2 * GiB],
        "memory_total": [16 * GiB],
    }
    clock = Clock()
    plugin = plugin_over(scheduler_with(report, None), clock)
    beats = []
    for t in (0, 600, 1000, 1200):
        clock.now = t
        beats.append(plugin.snapshot())
    assert [b["gpus"] for b in beats] == [1, 1, 1, 1]
    assert [b["gpu_low_seconds"] for b in beats] == [0, 600, 1000, 1200]
    assert beats[-1]["gpu_memory_used"] == 2 * GiB and beats[-1]["gpu_utilization"] == 0.03
    assert verdicts(beats) == ["none", "none", "warn", "none"]  # once, past 15 min

    nvml.use = 80  # busy again: the low period restarts
    clock.now = 1300
    busy = plugin_over(scheduler_with(metric(None)), clock)
    assert busy.snapshot()["gpu_low_seconds"] is None


def test_a_gpu_on_the_schedulers_machine_never_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    idle = FakeNVML(count=4, use=0)
    monkeypatch.setitem(sys.modules, "pynvml", idle)  # the scheduler's machine has GPUs
    clock = Clock()
    plugin = plugin_over(scheduler_with(None, None), clock)  # its workers report none
    beats = []
    for t in (0, 1000, 5000):
        clock.now = t
        beats.append(plugin.snapshot())
    assert [b["gpus"] for b in beats] == [0, 0, 0]
    assert verdicts(beats) == ["none", "none", "none"]
    assert idle.inits == 0  # the scheduler never even asked NVML
    assert worker_metrics(GPUProbe(FakeNVML(count=0))) == {}  # no GPU: no metric


def test_reports_of_several_workers_add_up() -> None:
    found = aggregate(
        [
            {"count": 2, "utilization": [0.5, 0.0], "memory_used": [1, 2], "memory_total": [8, 8]},
            None,
            {"count": 1, "utilization": [0.9], "memory_used": [4], "memory_total": [8]},
            "garbage",
        ]
    )
    assert found == {
        "gpus": 3,
        "utilization_max": 0.9,
        "utilization_mean": pytest.approx(1.4 / 3),
        "memory_used": 7,
        "memory_total": 24,
    }
    assert aggregate([]) == {"gpus": 0}
