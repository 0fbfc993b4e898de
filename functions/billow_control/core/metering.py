"""Metering: what each instance used, from its lifetime, and the month-by-month totals.

Pure (no ports): ``observe`` turns one provider view of an instance into its
``UsageRecord``; ``close`` ends a record whose instance is gone; ``month_seconds`` splits a
lifetime at calendar-month boundaries (UTC) to the second; ``aggregate`` sums records into
CPU-, GPU- and memory-hours by cluster, user and team for one month.

A lifetime runs from the provider's launch time to its termination time. When the
provider cannot say when an instance ended (it no longer knows the instance, or reports
it terminated without a time), the record ends at the last evidence of life: the later
of the time a pass last recorded it running and the cluster's latest heartbeat, never
after the moment it was found gone. That under-bills by at most ``meter.SEEN_REFRESH``
passes (less while the scheduler heartbeats) and never bills time after it was seen
gone. Once closed, a record never changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from .models import ClusterRecord, InstanceInfo, InstanceRole, InstanceState
from .units import parse_bytes

GIB = 1024**3


class UsageRecord(BaseModel):
    """One instance's use: its size and lifetime. ``ended_at`` is ``None`` while it runs."""

    instance_id: str
    cluster_id: str
    owner: str
    team: str
    role: InstanceRole
    machine_type: str | None = None
    spot: bool = False
    vcpus: int
    gpus: int = 0
    memory_gib: float = 0.0
    started_at: datetime
    ended_at: datetime | None = None
    last_seen_at: datetime
    end_source: str | None = Field(
        default=None,
        description="'provider' (the provider's termination time) or 'last-seen' (the "
        "last evidence of life: a pass that saw it running, or a heartbeat).",
    )

    @property
    def open(self) -> bool:
        return self.ended_at is None


def month_of(at: datetime) -> str:
    """``YYYY-MM`` of ``at`` in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``YYYY-MM`` in UTC; ``ValueError`` for anything else."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def month_seconds(record: UsageRecord, month: str, now: datetime) -> float:
    """Seconds of ``record``'s lifetime inside ``month`` (an open record runs to ``now``)."""
    start, end = month_bounds(month)
    lo = max(record.started_at, start)
    hi = min(record.ended_at or now, end, now)
    return max(0.0, (hi - lo).total_seconds())


def _size(inst: InstanceInfo, cluster: ClusterRecord | None) -> tuple[int, float]:
    """vCPUs and memory (GiB): the provider's figure when it has one, else the request's."""
    if cluster is None:
        return inst.vcpus or 1, 0.0
    scheduler = inst.role == InstanceRole.scheduler
    req = cluster.request
    cpu = req.scheduler_cpu if scheduler else req.worker_cpu
    memory = parse_bytes(req.scheduler_memory if scheduler else req.worker_memory) / GIB
    return inst.vcpus or cpu, memory


def observe(
    inst: InstanceInfo,
    cluster: ClusterRecord | None,
    owner: str,
    team: str,
    previous: UsageRecord | None,
    now: datetime,
    heartbeat_at: datetime | None = None,
) -> UsageRecord:
    """The record of ``inst`` as the provider shows it at ``now``.

    A closed ``previous`` is returned unchanged (records are final once closed). A running
    (or pending) instance gets an open record seen at ``now``; a terminated one is closed
    at the provider's ``terminated_at``, else at the last evidence of life (``previous``'s
    ``last_seen_at``, ``heartbeat_at``), else at its launch (never seen alive: nothing).
    """
    if previous is not None and not previous.open:
        return previous
    vcpus, memory = _size(inst, cluster)
    record = UsageRecord(
        instance_id=inst.id,
        cluster_id=inst.cluster_id,
        owner=previous.owner if previous else owner,
        team=previous.team if previous else team,
        role=inst.role,
        machine_type=inst.machine_type,
        spot=inst.spot,
        vcpus=vcpus,
        gpus=inst.gpus,
        memory_gib=memory,
        started_at=inst.launched_at,
        last_seen_at=previous.last_seen_at if previous else inst.launched_at,
    )
    if inst.state != InstanceState.terminated:
        record.last_seen_at = max(record.last_seen_at, now)
        return record
    if inst.terminated_at is not None:
        return close(record, inst.terminated_at, "provider", now)
    return close(record, last_evidence(record, heartbeat_at, now), "last-seen", now)


def last_evidence(record: UsageRecord, heartbeat_at: datetime | None, now: datetime) -> datetime:
    """The last moment ``record``'s instance is known to have been alive, at most ``now``."""
    seen = record.last_seen_at
    if heartbeat_at is not None and heartbeat_at > seen:
        seen = heartbeat_at
    return min(seen, now)


def close(record: UsageRecord, ended_at: datetime, source: str, now: datetime) -> UsageRecord:
    """``record`` ended at ``ended_at`` (clamped to ``[started_at, now]``)."""
    end = min(max(ended_at, record.started_at), now)
    return record.model_copy(update={"ended_at": end, "end_source": source})


class Totals(BaseModel):
    """Hours of one group in one month (``cpu_hours`` = vCPUs x hours, and so on)."""

    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    spot_cpu_hours: float = 0.0
    instances: int = 0

    def add(self, record: UsageRecord, seconds: float) -> None:
        hours = seconds / 3600
        self.cpu_hours += record.vcpus * hours
        self.gpu_hours += record.gpus * hours
        self.memory_gib_hours += record.memory_gib * hours
        if record.spot:
            self.spot_cpu_hours += record.vcpus * hours
        self.instances += 1

    def rounded(self) -> dict[str, float | int]:
        """For display: hours to 6 decimals (better than a second of one vCPU)."""
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self}


class MonthUsage(BaseModel):
    """One month's use, in total and by cluster, user (owner id) and team."""

    month: str
    total: Totals = Field(default_factory=Totals)
    by_cluster: dict[str, Totals] = Field(default_factory=dict)
    by_user: dict[str, Totals] = Field(default_factory=dict)
    by_team: dict[str, Totals] = Field(default_factory=dict)
    by_day: dict[str, float] = Field(default_factory=dict, description="CPU-hours per UTC day")
    daily_by_team: dict[str, dict[str, float]] = Field(default_factory=dict)
    daily_by_user: dict[str, dict[str, float]] = Field(default_factory=dict)


def _days(record: UsageRecord, month: str, now: datetime) -> Iterable[tuple[str, float]]:
    start, end = month_bounds(month)
    lo, hi = max(record.started_at, start), min(record.ended_at or now, end, now)
    while lo < hi:
        midnight = datetime(lo.year, lo.month, lo.day, tzinfo=UTC) + timedelta(days=1)
        step = min(midnight, hi)
        yield lo.strftime("%Y-%m-%d"), (step - lo).total_seconds()
        lo = step


def aggregate(records: Iterable[UsageRecord], month: str, now: datetime) -> MonthUsage:
    """Sum ``records`` over ``month`` (the part of each lifetime inside it, to the second)."""
    usage = MonthUsage(month=month)
    for record in records:
        seconds = month_seconds(record, month, now)
        if seconds <= 0:
            continue
        usage.total.add(record, seconds)
        for groups, key in (
            (usage.by_cluster, record.cluster_id),
            (usage.by_user, record.owner),
            (usage.by_team, record.team),
        ):
            groups.setdefault(key, Totals()).add(record, seconds)
        for day, secs in _days(record, month, now):
            hours = record.vcpus * secs / 3600
            usage.by_day[day] = usage.by_day.get(day, 0.0) + hours
            for daily, key in (
                (usage.daily_by_team, record.team),
                (usage.daily_by_user, record.owner),
            ):
                days = daily.setdefault(key, {})
                days[day] = days.get(day, 0.0) + hours
    return usage
