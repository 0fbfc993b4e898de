"""The watchdog on a real store and real (stub) instance processes, with a manual clock."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.process_provider import LocalProcessProvider
from billow_control.core.models import (
    ClusterRequest,
    ClusterStatus,
    Heartbeat,
    HeartbeatRecord,
    InstanceRole,
    InstanceSpec,
    InstanceState,
    User,
)
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from tests.support.processes import wait_until
from tests.support.stores import STORE_KINDS, store_of_kind
from tests.unit.fakes import MemoryBus, RecordingOrchestrator

pytestmark = pytest.mark.integration

STUB = "#!/bin/sh\nwhile true; do sleep 0.2; done\n"
PERIOD = 30.0  # one reaper period, as the schedule would run it


class Watchdog:
    def __init__(self, tmp: Path, store: object) -> None:
        script = tmp / "stub-python"
        script.write_text(STUB)
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        self.clock = ManualClock()
        self.settings = ControlSettings(
            start_timeout=600,
            idle_timeout=1200,
            no_client_timeout=120,
            heartbeat_loss_timeout=1200,
            orphan_grace=300,
            gpu_idle_warning=900,
            deployment="reaper-test",
        )
        self.store = store
        self.provider = LocalProcessProvider(
            tmp / "instances", "reaper-test", self.clock, grace_period=0.0, python=str(script)
        )
        self.bus = MemoryBus()
        self.orchestrator = RecordingOrchestrator()
        self.plane = ControlPlane(
            Ports(
                store=store,
                provider=self.provider,
                orchestrator=self.orchestrator,
                secrets=FernetSecretBox.from_key_file(tmp / "key"),
                clock=self.clock,
                events=self.bus,
                settings=self.settings,
            )
        )
        self.reconciler = self.plane.lifecycle
        self.reaper = self.plane.watchdog
        self.user = User(id="u-1", name="ann")
        store.put_user(self.user)

    def create(self, ready: bool = True, **request: object) -> str:
        cluster, _ = self.plane.create_cluster(
            self.user, ClusterRequest(n_workers=1, **request), None
        )
        cid = cluster["id"]
        self.reconciler.reconcile(cid)
        if ready:
            self.beat(cid)
            assert self.reconciler.reconcile(cid).done
        return cid

    def beat(self, cid: str, **fields: object) -> None:
        self.store.put_heartbeat(
            HeartbeatRecord(
                cluster_id=cid,
                received_at=self.clock.now(),
                heartbeat=Heartbeat(
                    scheduler_address="tls://127.0.0.1:1", workers=["worker-0"], **fields
                ),
            )
        )

    def settle(self, cid: str) -> None:
        """Drive the reconciler until the cluster reaches its target (teardown included)."""
        wait_until(lambda: self.reconciler.reconcile(cid).done, 20, f"{cid} settles")

    def record(self, cid: str):
        record = self.store.get_cluster(cid)
        assert record is not None
        return record

    def live(self, cid: str) -> list:
        return [i for i in self.provider.describe(cid) if i.state != InstanceState.terminated]


@pytest.fixture(params=STORE_KINDS)
def dog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Watchdog]:
    with store_of_kind(request.param, tmp_path, request) as store:
        dog = Watchdog(tmp_path, store)
        yield dog
        dog.provider.kill_all()


def test_busy_cluster_running_one_long_task_is_never_reaped(dog: Watchdog) -> None:
    cid = dog.create()
    # An hour of one task (three times the longest default timeout), a pass every two
    # minutes: each pass judges the latest heartbeat alone, so passes in between add
    # nothing but time (the steady heartbeat comes every 60 s; loss is judged at 20 min).
    for _ in range(int(3600 / (4 * PERIOD))):
        dog.clock.advance(4 * PERIOD)
        dog.beat(
            cid,
            busy=True,
            idle_seconds=0,
            tasks_processing=1,
            clients=0,
            seconds_without_clients=10_000,
        )
        report = dog.reaper.run_once()
        assert cid not in report.stopped and cid not in report.failed
    assert dog.record(cid).status == ClusterStatus.ready


def test_idle_cluster_is_reaped_within_one_period_after_idle_timeout(dog: Watchdog) -> None:
    cid = dog.create()
    idle, reaped_at = 0.0, None
    while reaped_at is None and idle < 2 * 1200:  # heartbeats keep coming, idle grows
        dog.clock.advance(PERIOD)
        idle += PERIOD
        dog.beat(cid, idle_seconds=idle - 3)  # sent a few seconds before the pass
        if dog.reaper.run_once().stopped == {cid: "idle"}:
            reaped_at = idle
    assert reaped_at is not None and 1200 <= reaped_at <= 1200 + PERIOD
    dog.settle(cid)
    record = dog.record(cid)
    assert record.status == ClusterStatus.stopped and record.stop_reason == "idle"
    assert dog.live(cid) == []
    assert ("reaped", cid) in dog.bus.events


def test_idle_timeout_of_the_request_overrides_the_default(dog: Watchdog) -> None:
    cid = dog.create(idle_timeout="30s")
    dog.beat(cid, idle_seconds=25)
    assert dog.reaper.run_once().stopped == {}
    dog.clock.advance(6)
    assert dog.reaper.run_once().stopped == {cid: "idle"}


def test_client_left_cluster_is_stopped_after_no_client_timeout(dog: Watchdog) -> None:
    cid = dog.create()
    dog.beat(cid, idle_seconds=10, clients=0, seconds_without_clients=None)  # never had one
    dog.clock.advance(300)
    assert dog.reaper.run_once().stopped == {}
    dog.beat(cid, idle_seconds=10, clients=0, seconds_without_clients=100)
    dog.clock.advance(21)
    assert dog.reaper.run_once().stopped == {cid: "no-client"}


def test_silent_cluster_fails_after_heartbeat_loss(dog: Watchdog) -> None:
    cid = dog.create()
    dog.beat(cid, busy=True)
    dog.clock.advance(1201)
    assert dog.reaper.run_once().failed == {cid: "heartbeat-lost"}
    dog.settle(cid)
    record = dog.record(cid)
    assert record.status == ClusterStatus.failed and record.stop_reason == "heartbeat-lost"
    assert dog.live(cid) == []


def test_cluster_that_never_became_ready_fails_and_is_torn_down(dog: Watchdog) -> None:
    cid = dog.create(ready=False)
    assert len(dog.live(cid)) == 2
    dog.clock.advance(601)
    assert dog.reaper.run_once().failed == {cid: "start-timeout"}
    dog.settle(cid)
    assert dog.record(cid).status == ClusterStatus.failed
    assert dog.live(cid) == []


def test_lifetime_limit_stops_even_a_busy_cluster(dog: Watchdog) -> None:
    cid = dog.create(cluster_timeout="1h")
    dog.clock.advance(3601)
    dog.beat(cid, busy=True)
    assert dog.reaper.run_once().stopped == {cid: "lifetime"}


def test_instance_without_a_record_is_swept_after_the_grace_period(dog: Watchdog) -> None:
    orphan = dog.provider.launch(
        InstanceSpec(
            cluster_id="c-00000000deadbeef",
            name="worker-0",
            role=InstanceRole.worker,
            cpu=1,
            memory="1 GiB",
            tags={
                "billow:cluster-id": "c-00000000deadbeef",
                "billow:deployment": "reaper-test",
                "billow:owner": "u-1",
            },
            environment={},
        )
    )
    kept = dog.create()
    assert dog.reaper.run_once().orphans_terminated == []  # still within the grace period
    dog.clock.advance(301)
    dog.beat(kept)
    assert dog.reaper.run_once().orphans_terminated == [orphan.id]
    wait_until(
        lambda: dog.provider.describe("c-00000000deadbeef")[0].state == InstanceState.terminated,
        10,
        "orphan terminated",
    )
    assert len(dog.live(kept)) == 2  # backed instances are untouched


def test_underused_gpus_raise_one_warning(dog: Watchdog) -> None:
    cid = dog.create()
    dog.beat(cid, busy=True, gpus=2, gpu_low_seconds=600)
    assert dog.reaper.run_once().warned == {}
    dog.beat(cid, busy=True, gpus=2, gpu_low_seconds=901)
    assert cid in dog.reaper.run_once().warned
    assert dog.reaper.run_once().warned == {}  # once, not every pass
    [warning] = dog.record(cid).warnings
    assert warning.startswith("gpu-underused: 2 GPU(s) below 10% utilisation")
    assert dog.record(cid).status == ClusterStatus.ready
