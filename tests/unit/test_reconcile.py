"""The reconciler, step by step, on a real SQLite store and an in-memory provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.auth import hash_token
from billow_control.core.errors import NotReady
from billow_control.core.models import (
    ClusterRequest,
    ClusterStatus,
    Heartbeat,
    HeartbeatRecord,
    InstanceRole,
    User,
)
from billow_control.core.ports import LaunchRefused, Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock()
        self.store = SqliteStore(tmp / "db.sqlite")
        self.provider = MemoryProvider(self.clock)
        self.bus = MemoryBus()
        self.settings = ControlSettings(start_timeout=600)
        self.plane = ControlPlane(
            Ports(
                store=self.store,
                provider=self.provider,
                orchestrator=RecordingOrchestrator(),
                secrets=FernetSecretBox.from_key_file(tmp / "key"),
                clock=self.clock,
                events=self.bus,
                settings=self.settings,
            )
        )
        self.reconciler = self.plane.lifecycle
        self.user = User(id="u-1", name="ann")
        self.store.put_user(self.user)

    def create(self, n: int = 2) -> str:
        cluster, _ = self.plane.create_cluster(self.user, ClusterRequest(n_workers=n), None)
        return cluster["id"]

    def status(self, cluster_id: str) -> ClusterStatus:
        record = self.store.get_cluster(cluster_id)
        assert record is not None
        return record.status

    def beat(self, cluster_id: str, workers: list[str]) -> None:
        self.store.put_heartbeat(
            HeartbeatRecord(
                cluster_id=cluster_id,
                received_at=self.clock.now(),
                heartbeat=Heartbeat(scheduler_address="tls://127.0.0.1:1", workers=workers),
            )
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_first_step_launches_scheduler_and_workers_together(world: World) -> None:
    cid = world.create(2)
    result = world.reconciler.reconcile(cid)
    assert not result.done and world.status(cid) == ClusterStatus.provisioning
    roles = sorted(i.role.value for i in world.provider.live(cid))
    assert roles == ["scheduler", "worker", "worker"]
    spec = next(iter(world.provider.specs.values()))
    assert {"billow:cluster-id", "billow:deployment", "billow:owner"} <= set(spec.tags)
    assert spec.environment["BILLOW_INSTANCE_TOKEN"].startswith("bwi_")


def worker_token(world: World) -> str:
    spec = next(s for s in world.provider.specs.values() if s.role == InstanceRole.worker)
    return spec.environment["BILLOW_INSTANCE_TOKEN"]


def test_workers_wait_for_the_scheduler_to_report_where_it_listens(world: World) -> None:
    world.reconciler.reconcile(world.create(1))
    with pytest.raises(NotReady):
        world.plane.agents.bootstrap(worker_token(world))


def test_workers_learn_a_scheduler_address_fixed_at_launch_before_it_reports(
    world: World,
) -> None:
    world.provider.scheduler_listens_at = "127.0.0.1:4321"
    cid = world.create(1)
    # A step that died after launching the scheduler: the next one reads the address
    # from the provider's view of it.
    world.provider.refuse_role = ("worker", RuntimeError("crash"))
    with pytest.raises(RuntimeError):
        world.reconciler.reconcile(cid)
    world.provider.refuse_role = None
    world.reconciler.reconcile(cid)
    config = world.plane.agents.bootstrap(worker_token(world))
    assert config["scheduler_address"] == "tls://127.0.0.1:4321"
    assert config["role"] == "worker" and "cert" in config


def test_rerun_is_idempotent_and_ready_waits_for_workers(world: World) -> None:
    cid = world.create(2)
    world.reconciler.reconcile(cid)
    world.reconciler.reconcile(cid)
    assert world.provider.launches == 3
    world.beat(cid, ["worker-0"])
    assert not world.reconciler.reconcile(cid).done
    world.beat(cid, ["worker-0", "worker-1"])
    assert world.reconciler.reconcile(cid).done
    assert world.status(cid) == ClusterStatus.ready


def test_a_heartbeat_that_counts_the_workers_marks_the_cluster_ready_at_once(
    world: World,
) -> None:
    """Ready does not wait for the reconcile loop's next look, however long its wait."""
    cid = world.create(2)
    world.reconciler.reconcile(cid)
    world.store.put_cluster_token(cid, hash_token("bwc_t"))

    def report(workers: list[str]) -> dict:
        beat = Heartbeat(scheduler_address="tls://127.0.0.1:1", workers=workers)
        return world.plane.agents.heartbeat(cid, "bwc_t", beat)

    assert report(["worker-0"])["status"] == "provisioning"
    answer = report(["worker-0", "worker-1"])
    assert answer["status"] == "ready" and world.status(cid) == ClusterStatus.ready
    record = world.store.get_cluster(cid)
    assert record is not None and record.scheduler_address == "tls://127.0.0.1:1"
    assert world.reconciler.reconcile(cid).done  # the loop confirms it
    assert world.bus.events.count(("ready", cid)) == 1


def test_the_loop_looks_less_often_the_longer_instances_take(world: World) -> None:
    """Each look is billed on AWS (a Step Functions transition or three): from
    ``reconcile_interval`` the wait grows with the quiet time, up to 10 s."""
    cid = world.create(1)
    first = world.reconciler.reconcile(cid).wait
    assert first == world.settings.reconcile_interval
    world.clock.advance(8)
    assert world.reconciler.reconcile(cid).wait == 2.0
    world.clock.advance(120)
    assert world.reconciler.reconcile(cid).wait == 10.0


def test_a_launch_the_provider_can_never_make_fails_the_cluster_at_once(world: World) -> None:
    """No retries until the start timeout: the message names the field, and what was
    launched already is torn down."""
    world.provider.refuse_role = (
        "worker",
        LaunchRefused("no machine type has 512 vCPUs (the largest has 96)", "worker_cpu"),
    )
    cid = world.create(2)
    for _ in range(5):
        if world.reconciler.reconcile(cid).done:
            break
    record = world.store.get_cluster(cid)
    assert record is not None and record.status == ClusterStatus.failed
    assert record.stop_reason == "launch-refused"
    assert record.error == "worker_cpu: no machine type has 512 vCPUs (the largest has 96)"
    assert world.provider.live(cid) == []  # the scheduler launched first is gone


def test_scheduler_exit_fails_with_its_logs_and_tears_down(world: World) -> None:
    cid = world.create(1)
    world.reconciler.reconcile(cid)
    scheduler = next(i for i in world.provider.live(cid) if i.role == InstanceRole.scheduler)
    world.provider.logs[scheduler.id] = ["boom: ImportError"]
    world.provider.exit(scheduler.id, 1)
    for _ in range(5):
        if world.reconciler.reconcile(cid).done:
            break
    record = world.store.get_cluster(cid)
    assert record is not None and record.status == ClusterStatus.failed
    assert record.stop_reason == "scheduler-exited" and "code 1" in (record.error or "")
    assert record.error_logs == ["boom: ImportError"]
    assert world.provider.live(cid) == []


def test_start_timeout_fails_and_terminates(world: World) -> None:
    cid = world.create(1)
    world.reconciler.reconcile(cid)
    world.clock.advance(601)
    for _ in range(5):
        if world.reconciler.reconcile(cid).done:
            break
    record = world.store.get_cluster(cid)
    assert record is not None and record.status == ClusterStatus.failed
    assert record.stop_reason == "start-timeout"
    assert world.provider.live(cid) == []


def test_stop_terminates_then_marks_stopped(world: World) -> None:
    cid = world.create(2)
    world.reconciler.reconcile(cid)
    world.plane.stop_cluster(world.user, cid)
    first = world.reconciler.reconcile(cid)  # asks the provider to terminate
    assert not first.done and first.status == ClusterStatus.stopping
    assert world.reconciler.reconcile(cid).done  # sees them gone
    assert world.status(cid) == ClusterStatus.stopped
    assert world.provider.live(cid) == []
    kinds = [k for k, c in world.bus.events if c == cid]
    assert kinds[0] == "requested" and kinds[-1] == "stopped"


def test_teardown_releases_only_its_clusters_resources_before_stopped(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a ``terminate`` of the last instances (a crash came between) the provider
    is still asked to release the cluster's other resources, and only that cluster's; a
    failure to do so is left to the reaper and does not hold the stop."""
    other, cid = world.create(1), world.create(1)
    world.reconciler.reconcile(cid)
    asked: list[tuple[str, bool]] = []

    def sweep(is_active: object) -> list[str]:
        assert callable(is_active)
        asked.extend((c, bool(is_active(c))) for c in (cid, other))
        raise RuntimeError("the cloud API is down")

    monkeypatch.setattr(world.provider, "sweep_cluster_resources", sweep)
    world.plane.stop_cluster(world.user, cid)
    for instance in world.provider.live(cid):  # gone without the reconciler asking
        world.provider.terminate([instance.id])
    assert world.reconciler.reconcile(cid).done
    assert world.status(cid) == ClusterStatus.stopped
    assert asked == [(cid, False), (other, True)]


def test_scale_down_removes_named_workers_first_then_newest(world: World) -> None:
    from billow_control.core.models import ScaleRequest

    cid = world.create(3)
    world.reconciler.reconcile(cid)
    world.beat(cid, ["worker-0", "worker-1", "worker-2"])
    world.reconciler.reconcile(cid)
    world.plane.scale_cluster(world.user, cid, ScaleRequest(n_workers=1, remove=["worker-0"]))
    world.reconciler.reconcile(cid)
    names = sorted(i.name for i in world.provider.live(cid) if i.role == InstanceRole.worker)
    assert names == ["worker-1"]


def test_dead_worker_is_replaced_with_a_fresh_name_once_ready(world: World) -> None:
    cid = world.create(1)
    world.reconciler.reconcile(cid)
    world.beat(cid, ["worker-0"])
    world.reconciler.reconcile(cid)
    worker = next(i for i in world.provider.live(cid) if i.role == InstanceRole.worker)
    world.provider.exit(worker.id, -9)
    world.reconciler.reconcile(cid)
    names = [i.name for i in world.provider.live(cid) if i.role == InstanceRole.worker]
    assert names == ["worker-1"]
    assert world.status(cid) == ClusterStatus.ready
