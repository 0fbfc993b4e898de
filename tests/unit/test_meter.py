"""The watchdog's metering pass over a real SQLite store: usage comes from what the
provider shows, so a lost event, a vanished instance or an orphan is still billed, each
instance once; the month-closed event goes out once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core import tags
from billow_control.core.accounts import User
from billow_control.core.metering import aggregate
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    Heartbeat,
    HeartbeatRecord,
    InstanceRole,
    InstanceSpec,
)
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.core.watchdog import Watchdog
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 31, 23, 0, tzinfo=UTC)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock(START)
        self.store = SqliteStore(tmp_path / "billow.db")
        self.provider = MemoryProvider(self.clock)
        self.bus = MemoryBus()
        self.ports = Ports(
            store=self.store,
            provider=self.provider,
            orchestrator=RecordingOrchestrator(),
            secrets=FernetSecretBox(Fernet.generate_key()),
            clock=self.clock,
            events=self.bus,
            settings=ControlSettings(deployment="t", heartbeat_loss_timeout=1e9),
        )
        self.watchdog = ControlPlane(self.ports).watchdog
        self.store.put_user(User(id="u-alice", name="alice", team="etl"))
        self.store.put_user(User(id="u-bob", name="bob", team="ml"))

    def cluster(self, owner: str = "u-alice", team: str = "etl") -> ClusterRecord:
        record = ClusterRecord(
            id=f"c-{owner}",
            owner=owner,
            team=team,
            name="etl",
            request=ClusterRequest(worker_cpu=4, scheduler_cpu=2),
            status=ClusterStatus.ready,
            desired_workers=1,
            created_at=self.clock.now(),
            ready_at=self.clock.now(),
        )
        record, _ = self.store.create_cluster(record, None, "h")
        self.beat(record.id)
        return record

    def beat(self, cluster_id: str) -> None:
        hb = Heartbeat(scheduler_address="tls://127.0.0.1:1", busy=True, tasks_processing=1)
        self.store.put_heartbeat(
            HeartbeatRecord(cluster_id=cluster_id, received_at=self.clock.now(), heartbeat=hb)
        )

    def launch(self, cluster_id: str, name: str, role: InstanceRole, owner: str) -> str:
        spec = InstanceSpec(
            cluster_id=cluster_id,
            name=name,
            role=role,
            cpu=1,
            memory="2 GiB",
            tags=tags.cluster_tags(cluster_id, owner, "t"),
            environment={},
        )
        return self.provider.launch(spec).id

    def hours(self, month: str, group: str = "team") -> dict[str, float]:
        usage = aggregate(
            self.store.list_usage(datetime(2000, 1, 1, tzinfo=UTC)), month, self.clock.now()
        )
        groups = {"team": usage.by_team, "user": usage.by_user, "cluster": usage.by_cluster}
        return {k: round(v.cpu_hours, 9) for k, v in groups[group].items()}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_usage_comes_from_the_provider_without_any_lifecycle_event(world: World) -> None:
    c = world.cluster()
    world.launch(c.id, "scheduler", InstanceRole.scheduler, c.owner)
    worker = world.launch(c.id, "w-1", InstanceRole.worker, c.owner)
    assert sorted(world.watchdog.run_once().metered) == ["i-0", "i-1"]
    assert world.watchdog.run_once().metered == []  # nothing new: no write
    world.clock.advance(5400)  # 00:30 on February 1st: the worker dies, nobody is told
    world.beat(c.id)
    world.provider.exit(worker, None)
    world.clock.advance(1800)
    world.beat(c.id)
    world.watchdog.run_once()
    records = {r.instance_id: r for r in world.store.list_usage(START)}
    assert records[worker].ended_at == datetime(2025, 2, 1, 0, 30, tzinfo=UTC)
    assert records[worker].end_source == "provider"
    assert records["i-0"].open
    # January: 1 h of 2 + 4 vCPUs; February so far: the scheduler 1 h, the worker 0.5 h
    assert world.hours("2025-01") == {"etl": 6.0}
    assert world.hours("2025-02") == {"etl": 2.0 + 2.0}
    assert world.hours("2025-02", "user") == {"u-alice": 4.0}
    # a repeated pass changes nothing that is closed, and counts nothing twice
    world.watchdog.run_once()
    assert world.hours("2025-01") == {"etl": 6.0}


def test_an_instance_the_provider_forgot_ends_at_its_last_heartbeat(world: World) -> None:
    c = world.cluster()
    scheduler = world.launch(c.id, "scheduler", InstanceRole.scheduler, c.owner)
    world.watchdog.run_once()
    world.clock.advance(600)
    world.beat(c.id)  # the last sign of life: 23:10
    world.clock.advance(1200)
    del world.provider.instances[scheduler]  # gone, no termination time anywhere
    world.watchdog.run_once()
    (record,) = world.store.list_usage(START)
    assert record.ended_at == datetime(2025, 1, 31, 23, 10, tzinfo=UTC)
    assert record.end_source == "last-seen"
    assert world.hours("2025-01") == {"etl": round(2 * 600 / 3600, 9)}


def test_an_orphan_is_billed_to_its_tagged_owner_and_their_team(world: World) -> None:
    orphan = world.launch("c-gone", "w-0", InstanceRole.worker, "u-bob")  # no record
    world.clock.advance(3600)
    report = world.watchdog.run_once()
    assert report.orphans_terminated == [orphan]  # the sweep stops it...
    world.clock.advance(60)
    world.watchdog.run_once()  # ...and the meter closes it at its termination
    (record,) = world.store.list_usage(START)
    assert (record.owner, record.team, record.ended_at) == ("u-bob", "ml", record.ended_at)
    assert world.hours("2025-01") == {"ml": 1.0}  # 1 vCPU (the provider's unknown: 1) x 1 h


def test_a_closed_record_is_final_in_the_store(world: World) -> None:
    c = world.cluster()
    worker = world.launch(c.id, "w-1", InstanceRole.worker, c.owner)
    world.watchdog.run_once()
    world.clock.advance(60)
    world.provider.exit(worker, 0)
    world.watchdog.run_once()
    (closed,) = world.store.list_usage(START)
    reopened = closed.model_copy(update={"ended_at": None, "last_seen_at": world.clock.now()})
    assert world.store.put_usage(reopened) == closed
    assert world.store.list_usage() == []  # no open record


def test_month_closed_is_published_once_with_each_teams_totals(world: World) -> None:
    c = world.cluster()
    world.launch(c.id, "w-1", InstanceRole.worker, c.owner)
    world.watchdog.run_once()
    world.clock.advance(3600 + 60)  # 00:01 on February 1st
    world.beat(c.id)
    report = world.watchdog.run_once()
    assert report.months_closed == ["2025-01"]
    ((kind, detail),) = world.bus.usage_events
    assert kind == "usage.month-closed" and detail["month"] == "2025-01"
    assert detail["teams"]["etl"]["cpu_hours"] == 4.0
    # another process (a second watchdog on the same store) does not publish it again
    other = Watchdog(world.ports, world.watchdog.lifecycle)
    assert other.run_once().months_closed == []
    assert world.watchdog.run_once().months_closed == []
    assert len(world.bus.usage_events) == 1


def test_the_embedded_bus_writes_the_month_closed_event(tmp_path: Path) -> None:
    import json

    from billow_control.adapters.local.event_log import JsonLinesEventBus
    from billow_control.core.usage_port import UsageEvents

    bus = JsonLinesEventBus(tmp_path / "events.jsonl")
    assert isinstance(bus, UsageEvents)
    bus.publish_usage("usage.month-closed", {"month": "2025-01", "teams": {"etl": {}}})
    (line,) = (tmp_path / "events.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert event["kind"] == "usage.month-closed" and event["detail"]["month"] == "2025-01"


def test_gpus_of_a_known_machine_type_come_from_the_instance_table(world: World) -> None:
    c = world.cluster()
    gpu = world.launch(c.id, "w-gpu", InstanceRole.worker, c.owner)
    # as EC2 reports it: type, vCPUs and spot, but no GPUs
    world.provider.instances[gpu] = world.provider.instances[gpu].model_copy(
        update={"machine_type": "g5.xlarge", "vcpus": 4, "spot": True}
    )
    world.watchdog.run_once()
    world.clock.advance(1800)
    world.provider.exit(gpu, 0)
    world.watchdog.run_once()
    usage = aggregate(world.store.list_usage(START), "2025-01", world.clock.now())
    assert (usage.total.gpu_hours, usage.total.cpu_hours, usage.total.spot_cpu_hours) == (
        0.5,
        2.0,
        2.0,
    )
