"""Adaptive heartbeats keep every watchdog deadline, under an injected clock.

A simulation, one second a step, of three real pieces: the scheduler plugin (its snapshot,
its wake-ups and the answer it obeys), the control plane's heartbeat route
(``ClusterAgents.heartbeat`` over SQLite, which answers ``next_heartbeat``), and the
watchdog pass every ``reaper_interval``. Only Dask's scheduler is a stand-in (workers,
clients, tasks in progress), and the plugin's loop is mirrored: it reports when woken
(its 20 ms debounce aside) or when ``seconds_until_due`` says.

What must hold: heartbeats are rare in a steady state; an idle cluster is stopped within
one reaper period of ``idle_timeout``, and never before it however its activity falls
between reports; a silent scheduler fails the cluster within one reaper period of
``heartbeat_loss_timeout`` after its last report, and never before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from billow.plugin import BillowSchedulerPlugin
from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.auth import hash_token
from billow_control.core.models import ClusterStatus, Heartbeat
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.core.watchdog import steady_heartbeat
from tests.support.fleet import Fleet
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit

IDLE = 1200.0
LOSS = 1200.0
REAPER = 30.0
STEADY = 60.0


@dataclass
class Worker:
    name: str
    processing: set = field(default_factory=set)
    nthreads: int = 1
    memory_limit: int = 1 << 30
    nbytes: int = 0
    metrics: dict = field(default_factory=dict)


class Scheduler:
    """What the plugin reads of ``distributed.Scheduler``."""

    address = "tls://127.0.0.1:8786"
    services: dict[str, Any] = {}

    def __init__(self, workers: int) -> None:
        self.workers = {f"w{i}": Worker(f"worker-{i}") for i in range(workers)}
        self.clients: dict[str, Any] = {}
        self.queued: list = []
        self.unrunnable: list = []


class Simulation:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock()
        settings = ControlSettings(
            idle_timeout=IDLE,
            heartbeat_loss_timeout=LOSS,
            no_client_timeout=10**6,
            reaper_interval=REAPER,
            heartbeat_steady_interval=STEADY,
        )
        store = SqliteStore(tmp / "billow.db")
        self.plane = ControlPlane(
            Ports(
                store=store,
                provider=MemoryProvider(self.clock),
                orchestrator=RecordingOrchestrator(),
                secrets=FernetSecretBox(Fernet.generate_key()),
                clock=self.clock,
                events=MemoryBus(),
                settings=settings,
            )
        )
        fleet = Fleet(store)
        fleet.clock = self.clock
        [self.cluster_id] = fleet.add_active(1)  # ready with 2 workers, busy just now
        store.put_cluster_token(self.cluster_id, hash_token("bwc_sim"))
        self.t = 0.0  # seconds since the start, on the plugin's monotonic clock
        self.scheduler = Scheduler(workers=2)
        self.plugin = BillowSchedulerPlugin(
            "http://127.0.0.1:9", self.cluster_id, "bwc_sim", interval=5.0, clock=lambda: self.t
        )
        self.plugin.scheduler = self.scheduler
        self.plugin._wake = asyncio.Event()
        self.alive = True
        self.sent: list[float] = []
        self.last_sent = 0.0
        self.report()

    def report(self) -> None:
        beat = Heartbeat.model_validate(self.plugin.snapshot())
        answer = self.plane.agents.heartbeat(self.cluster_id, "bwc_sim", beat)
        self.plugin.apply_answer(answer)
        self.plugin._wake.clear()
        self.plugin._went_idle_at = None  # as the loop does before each send
        self.sent.append(self.t)
        self.last_sent = self.t

    def run_until(self, end: float, activity: Iterable[float] = (), task=(-1.0, -1.0)) -> None:
        """Step to ``end``: a short task runs at each second in ``activity`` and one long
        task over ``task`` (start, end); the plugin reports when due; the watchdog passes
        every ``REAPER`` seconds."""
        short = set(activity)
        worker = next(iter(self.scheduler.workers.values()))
        while self.t < end:
            self.t += 1.0
            self.clock.advance(1)
            if self.t in short:
                self.plugin.transition("short", "waiting", "processing")
                self.plugin.transition("short", "processing", "memory")
            if self.t == task[0]:
                worker.processing.add("long")
                self.plugin.transition("long", "waiting", "processing")
            if self.t == task[1]:
                worker.processing.discard("long")
                self.plugin.transition("long", "processing", "memory")
            if self.alive and (
                self.plugin._wake.is_set() or self.plugin.seconds_until_due(self.last_sent) <= 0
            ):
                self.report()
            if self.t % REAPER == 0:
                self.plane.watchdog.run_once()
                if self.record().target.value == "stopped" or self.record().status.terminal:
                    return

    def record(self):
        record = self.plane.ports.store.get_cluster(self.cluster_id)
        assert record is not None
        return record


@pytest.fixture
def sim(tmp_path: Path) -> Simulation:
    return Simulation(tmp_path)


def test_a_steady_cluster_reports_once_a_minute(sim: Simulation) -> None:
    sim.run_until(600, activity=set(range(1, 600)))  # busy all along: no idle reaping
    assert sim.record().status == ClusterStatus.ready
    gaps = [b - a for a, b in zip(sim.sent, sim.sent[1:], strict=False)]
    assert gaps and max(gaps) == STEADY, gaps
    assert len(sim.sent) <= 600 / STEADY + 2, sim.sent  # not every 5 s


def test_sporadic_short_tasks_do_not_make_reports_frequent(sim: Simulation) -> None:
    sim.run_until(900, activity=range(3, 900, 10))  # a quick task every 10 s
    assert sim.record().status == ClusterStatus.ready
    assert len(sim.sent) <= 900 / STEADY + 2, sim.sent


def test_an_idle_cluster_is_stopped_within_one_reaper_period_of_the_timeout(
    sim: Simulation,
) -> None:
    last_work = 100.0
    sim.run_until(3000, activity=set(range(1, int(last_work) + 1)))
    record = sim.record()
    assert record.target.value == "stopped" and record.stop_reason == "idle", record
    assert last_work + IDLE <= sim.t <= last_work + IDLE + REAPER, sim.t


def test_work_between_reports_after_a_long_quiet_spell_is_reported_at_once(
    sim: Simulation,
) -> None:
    """Work 50 s before the idle deadline, between two steady reports: the plugin
    reports it on the spot, so the cluster lives a full idle timeout more."""
    late_work = IDLE - 50  # idle since t=0 (the fleet's busy beat), then one task
    sim.run_until(late_work + IDLE + 2 * REAPER, activity={late_work})
    assert late_work in sim.sent  # reported when it happened, not a minute later
    record = sim.record()
    assert record.target.value == "stopped" and record.stop_reason == "idle"
    assert late_work + IDLE <= sim.t <= late_work + IDLE + REAPER, sim.t


def test_the_end_of_a_long_task_is_reported_at_once(sim: Simulation) -> None:
    """Busy at every steady report, then the task ends between two of them: the plugin
    reports the end ``interval`` seconds later, so the idle clock starts when it ended."""
    sim.run_until(3000, task=(10.0, 533.0))
    assert 533.0 + 5 in sim.sent
    record = sim.record()
    assert record.target.value == "stopped" and record.stop_reason == "idle", record
    assert 533 + IDLE <= sim.t <= 533 + IDLE + REAPER, sim.t


def test_a_silent_scheduler_fails_the_cluster_within_the_heartbeat_loss_rule(
    sim: Simulation,
) -> None:
    sim.run_until(300, activity=set(range(1, 301)))
    sim.alive = False  # the scheduler's machine is gone: no more reports
    last = sim.sent[-1]
    sim.run_until(300 + LOSS + 3 * REAPER, activity=set(range(301, 3000)))
    record = sim.record()
    assert record.fail_on_stop and record.stop_reason == "heartbeat-lost", record
    assert last + LOSS <= sim.t <= last + LOSS + REAPER, (last, sim.t)


@pytest.mark.parametrize(("idle_timeout", "expected"), [(None, STEADY), ("30s", 15.0), ("6s", 5.0)])
def test_the_steady_interval_is_at_most_half_the_idle_timeout(
    sim: Simulation, idle_timeout: str | None, expected: float
) -> None:
    record = sim.record()
    record.request = record.request.model_copy(update={"idle_timeout": idle_timeout})
    assert steady_heartbeat(record, sim.plane.ports.settings) == expected


def test_a_worker_joining_while_a_report_is_in_flight_is_reported_at_once() -> None:
    """The news of a join during a report (the first report leaves as the workers
    connect) is not lost: the next report follows at once, not a steady interval later."""

    async def scenario() -> int:
        plugin = BillowSchedulerPlugin("http://cp", "c-1", "bct_x", analytics="off")
        sent: list[float] = []

        async def send() -> None:
            sent.append(time.monotonic())
            if len(sent) == 1:
                await asyncio.sleep(0)
                plugin.add_worker(worker="tls://127.0.0.1:1")  # joins mid-report
            plugin.next_heartbeat = 60.0  # a steady cluster: the next is a minute away

        plugin.send = send  # type: ignore[method-assign]
        loop = asyncio.create_task(plugin._loop())
        try:
            for _ in range(500):  # at most 5 s
                if len(sent) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            loop.cancel()
        return len(sent)

    assert asyncio.run(scenario()) >= 2
