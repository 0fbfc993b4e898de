"""Metering from instance lifetimes, table-driven: each case is one instance as providers
show it (launch and termination times, spot, GPUs) and the hours it must count in each
month, exact to the second."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from billow_control.core.metering import (
    UsageRecord,
    aggregate,
    month_bounds,
    month_seconds,
    observe,
)
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    InstanceInfo,
    InstanceRole,
    InstanceState,
)

pytestmark = pytest.mark.unit


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CLUSTER = ClusterRecord(
    id="c-1",
    owner="u-alice",
    name="etl",
    team="etl",
    request=ClusterRequest(worker_cpu=4, worker_memory="16 GiB", scheduler_cpu=2),
    desired_workers=1,
)


@dataclass
class Case:
    name: str
    launched: str
    now: str
    terminated: str | None = None  # the provider's termination time
    gone: bool = False  # terminated, but the provider gives no time
    last_seen: str | None = None  # the previous pass's open record
    heartbeat: str | None = None
    role: InstanceRole = InstanceRole.worker
    vcpus: int | None = None
    gpus: int = 0
    spot: bool = False
    expect: dict[str, float] = field(default_factory=dict)  # month -> CPU-hours
    gpu_hours: float = 0.0
    spot_hours: float = 0.0
    end_source: str | None = None


CASES = [
    Case(
        "a worker across the January/February boundary",
        launched="2025-01-31 23:00:00",
        terminated="2025-02-01 01:30:00",
        now="2025-02-02 00:00:00",
        expect={"2025-01": 4.0, "2025-02": 6.0},  # 4 vCPUs x 1 h, then x 1.5 h
        end_source="provider",
    ),
    Case(
        "one second of one vCPU on each side of midnight of the new year",
        launched="2024-12-31 23:59:59",
        terminated="2025-01-01 00:00:01",
        now="2025-01-02 00:00:00",
        vcpus=1,
        expect={"2024-12": 1 / 3600, "2025-01": 1 / 3600},
        end_source="provider",
    ),
    Case(
        "killed without a termination event: ends at its last heartbeat",
        launched="2025-03-10 10:00:00",
        last_seen="2025-03-10 10:20:00",
        heartbeat="2025-03-10 10:25:07",
        gone=True,
        now="2025-03-10 11:00:00",
        role=InstanceRole.scheduler,  # the request's 2 scheduler vCPUs
        expect={"2025-03": 2 * 1507 / 3600},
        end_source="last-seen",
    ),
    Case(
        "killed without an event or a heartbeat: ends when last seen running",
        launched="2025-03-10 10:00:00",
        last_seen="2025-03-10 10:20:00",
        gone=True,
        now="2025-03-10 11:00:00",
        expect={"2025-03": 4 * 20 / 60},
        end_source="last-seen",
    ),
    Case(
        "a spot instance still running counts up to now",
        launched="2025-04-30 22:00:00",
        now="2025-05-01 00:30:00",
        spot=True,
        vcpus=8,  # the provider's own figure wins over the request's 4
        expect={"2025-04": 16.0, "2025-05": 4.0},
        spot_hours=20.0,
    ),
    Case(
        "an on-demand GPU instance: GPU-hours kept apart from CPU-hours",
        launched="2025-06-01 00:00:00",
        terminated="2025-06-01 02:00:00",
        now="2025-06-03 00:00:00",
        vcpus=8,
        gpus=4,
        expect={"2025-06": 16.0},
        gpu_hours=8.0,
        end_source="provider",
    ),
    Case(
        "a provider time after the moment it was found gone is clamped to now",
        launched="2025-07-01 00:00:00",
        terminated="2025-07-01 05:00:00",
        now="2025-07-01 01:00:00",
        expect={"2025-07": 4.0},
        end_source="provider",
    ),
]


def _record(case: Case) -> UsageRecord:
    state = InstanceState.terminated if case.terminated or case.gone else InstanceState.running
    inst = InstanceInfo(
        id="i-1",
        cluster_id=CLUSTER.id,
        name="w-1",
        role=case.role,
        state=state,
        launched_at=t(case.launched),
        terminated_at=t(case.terminated) if case.terminated else None,
        vcpus=case.vcpus,
        gpus=case.gpus,
        spot=case.spot,
    )
    previous = None
    if case.last_seen:
        running = inst.model_copy(update={"state": InstanceState.running, "terminated_at": None})
        previous = observe(running, CLUSTER, "u-alice", "etl", None, t(case.last_seen))
    beat = t(case.heartbeat) if case.heartbeat else None
    return observe(inst, CLUSTER, "u-alice", "etl", previous, t(case.now), beat)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cpu_hours_per_month_are_exact_to_the_second(case: Case) -> None:
    record = _record(case)
    now = t(case.now)
    assert record.end_source == case.end_source
    for month, hours in case.expect.items():
        usage = aggregate([record], month, now)
        assert usage.total.cpu_hours == pytest.approx(hours, rel=0, abs=1e-12), month
        assert usage.by_team["etl"].cpu_hours == usage.total.cpu_hours
        assert usage.by_user["u-alice"].cpu_hours == usage.total.cpu_hours
        assert usage.by_cluster["c-1"].cpu_hours == usage.total.cpu_hours
        assert sum(usage.by_day.values()) == pytest.approx(hours, abs=1e-12)
    # the months split the lifetime exactly: nothing lost or counted twice at a boundary
    end = record.ended_at or now
    total = sum(month_seconds(record, m, now) for m in case.expect)
    assert total == (end - record.started_at).total_seconds()
    gpu = sum(aggregate([record], m, now).total.gpu_hours for m in case.expect)
    spot = sum(aggregate([record], m, now).total.spot_cpu_hours for m in case.expect)
    assert gpu == pytest.approx(case.gpu_hours) and spot == pytest.approx(case.spot_hours)


def test_memory_hours_come_from_the_request() -> None:
    case = CASES[0]
    record = _record(case)
    assert record.memory_gib == 16.0
    assert aggregate([record], "2025-01", t(case.now)).total.memory_gib_hours == 16.0


def test_a_closed_record_never_changes_again() -> None:
    closed = _record(CASES[0])
    later = InstanceInfo(
        id="i-1",
        cluster_id="c-1",
        name="w-1",
        role=InstanceRole.worker,
        state=InstanceState.running,
        launched_at=t("2025-01-01 00:00:00"),
    )
    assert observe(later, CLUSTER, "x", "y", closed, t("2025-03-01 00:00:00")) == closed


def test_records_group_by_cluster_user_and_team() -> None:
    base = _record(CASES[5])  # 16 CPU-hours in June
    other = base.model_copy(
        update={"instance_id": "i-2", "cluster_id": "c-2", "owner": "u-bob", "team": "ml"}
    )
    usage = aggregate(
        [base, other, base.model_copy(update={"instance_id": "i-3"})],
        "2025-06",
        t("2025-07-01 00:00:00"),
    )
    assert usage.total.cpu_hours == 48.0 and usage.total.instances == 3
    assert {k: v.cpu_hours for k, v in usage.by_team.items()} == {"etl": 32.0, "ml": 16.0}
    assert {k: v.cpu_hours for k, v in usage.by_user.items()} == {"u-alice": 32.0, "u-bob": 16.0}
    assert {k: v.cpu_hours for k, v in usage.by_cluster.items()} == {"c-1": 32.0, "c-2": 16.0}


def test_month_bounds() -> None:
    assert month_bounds("2024-12") == (t("2024-12-01 00:00:00"), t("2025-01-01 00:00:00"))
    assert month_bounds("2024-02")[1] - month_bounds("2024-02")[0] == timedelta(days=29)
    with pytest.raises(ValueError):
        month_bounds("2024-13")
