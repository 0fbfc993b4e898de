"""Quotas: what a user and their team use, against their limits.

Concurrent figures (cores, GPUs, instances, clusters) count active clusters at their
desired size: a scheduler plus ``desired_workers`` workers. CPU-hours of the calendar
month (UTC) are metered (``core.metering``): each instance's vCPUs over its lifetime as
the provider reports it, from the usage records the watchdog writes (an instance
launched since the last pass is not counted yet: at most one ``reaper_interval`` late).

A user's limit is their own (``User.limits``), else the deployment's default
(``billow.quotas.user.*``); deployment admins have only the limits set on them. A team's
limit is the team's own, else none. A request that would go over any limit is refused
with ``QuotaExceeded`` (403) naming the limit, what the request asks and what is in use;
nothing is written. The check is not a reservation: concurrent creates may each pass it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from .accounts import Limits, Team, User
from .errors import Forbidden
from .metering import MonthUsage, aggregate, month_of
from .models import ClusterRecord, ClusterRequest
from .ports import Ports

FIELDS = ("cores", "gpus", "instances", "clusters", "cpu_hours")
UNITS = {
    "cores": "cores",
    "gpus": "GPUs",
    "instances": "instances",
    "clusters": "clusters",
    "cpu_hours": "CPU-hours this month",
}


class QuotaExceeded(Forbidden):
    code = "quota-exceeded"


class Use(BaseModel):
    cores: int = 0
    gpus: int = 0
    instances: int = 0
    clusters: int = 0
    cpu_hours: float = 0.0

    def plus(self, other: Use) -> Use:
        return Use(**{f: getattr(self, f) + getattr(other, f) for f in FIELDS})


def size(request: ClusterRequest, workers: int) -> Use:
    """What a cluster of ``request`` holds with ``workers`` workers (GPUs: a request's
    ``worker_gpus``/``scheduler_gpus`` when the model has them)."""
    gpus = getattr(request, "worker_gpus", 0) or 0
    scheduler_gpus = getattr(request, "scheduler_gpus", 0) or 0
    return Use(
        cores=request.scheduler_cpu + workers * request.worker_cpu,
        gpus=scheduler_gpus + workers * gpus,
        instances=1 + workers,
        clusters=1,
    )


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


class Quotas:
    """Usage and limits over the runtime's ``Ports``."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    def user_limits(self, user: User) -> Limits:
        s = self.ports.settings
        defaults = Limits(
            cores=s.quotas_user_cores,
            gpus=s.quotas_user_gpus,
            instances=s.quotas_user_instances,
            clusters=s.quotas_user_clusters,
            cpu_hours=s.quotas_user_cpu_hours,
        )
        own = user.limits.model_dump(exclude_none=True)
        return Limits(**own) if user.is_admin else defaults.model_copy(update=own)

    def team_limits(self, team: str) -> Limits:
        found: Team | None = self.ports.store.get_team(team)
        return found.limits if found is not None else Limits()

    def usage(self, clusters: list[ClusterRecord], skip: str | None = None) -> Use:
        """What ``clusters`` use now (active ones); ``cpu_hours`` is left 0 (``metered``)."""
        use = Use()
        for c in clusters:
            if c.id != skip and c.active:
                use = use.plus(size(c.request, c.desired_workers))
        return use

    def metered(self) -> MonthUsage:
        """This month's metered use (``core.metering.aggregate`` of the usage records)."""
        now = self.ports.clock.now()
        since = month_start(now)
        return aggregate(self.ports.store.list_usage(since), month_of(now), now)

    def _of(self, user: User) -> tuple[list[ClusterRecord], list[ClusterRecord]]:
        """The user's clusters, and their team's, that count this month."""
        store, since = self.ports.store, month_start(self.ports.clock.now())
        mine = store.list_clusters(user.id, active_only=False)
        team_limits = self.team_limits(user.team)
        if all(getattr(team_limits, f) is None for f in FIELDS):
            return mine, []  # no team limit: no need to read the team's clusters
        everyone = store.list_clusters(None, active_only=False)
        team = [c for c in everyone if c.team == user.team]
        recent = [c for c in team if c.active or (c.stopped_at or since) >= since]
        return mine, recent

    def check(
        self, user: User, request: ClusterRequest, workers: int, cluster_id: str = ""
    ) -> None:
        """Refuse (``QuotaExceeded``) a cluster of ``request`` at ``workers`` workers
        (``cluster_id``: one that exists and is being scaled, counted at the new size)."""
        mine, team = self._of(user)
        asked = size(request, workers)
        metered: MonthUsage | None = None
        for who, limits, clusters, key in (
            (f"user {user.name}", self.user_limits(user), mine, ("by_user", user.id)),
            (f"team {user.team}", self.team_limits(user.team), team, ("by_team", user.team)),
        ):
            if all(getattr(limits, f) is None for f in FIELDS):
                continue
            used = self.usage(clusters, skip=cluster_id)
            if limits.cpu_hours is not None:
                metered = metered or self.metered()
                used.cpu_hours = _hours(metered, *key)
            for field in FIELDS:
                limit = getattr(limits, field)
                if limit is None:
                    continue
                need = getattr(asked, field)
                have = getattr(used, field)
                # CPU-hours: a month's budget spent stops new cores; others: the sum.
                over = have >= limit if field == "cpu_hours" else have + need > limit
                if over:
                    raise QuotaExceeded(
                        f"quota exceeded: the {UNITS[field]} limit of {who} is {limit:g}; "
                        f"this request asks for {need:g} and {have:g} are in use. Ask an "
                        "admin to raise it (billow admin limits), or stop clusters",
                        field="n_workers",
                    )

    def report(self, user: User) -> dict[str, Any]:
        """The caller's and their team's use against their limits (``billow usage``)."""
        mine, team = self._of(user)
        team_limits = self.team_limits(user.team)
        metered = self.metered()
        mine_use = self.usage(mine)
        mine_use.cpu_hours = _hours(metered, "by_user", user.id)
        team_use = self.usage(team) if team else None
        if team_use is not None:
            team_use.cpu_hours = _hours(metered, "by_team", user.team)
        return {
            "user": {
                "name": user.name,
                "limits": self.user_limits(user).model_dump(),
                "use": mine_use.model_dump(),
            },
            "team": {
                "name": user.team,
                "limits": team_limits.model_dump(),
                "use": team_use.model_dump() if team_use is not None else None,
            },
        }


def _hours(usage: MonthUsage, group: str, key: str) -> float:
    totals = getattr(usage, group).get(key)
    return round(totals.cpu_hours, 6) if totals is not None else 0.0
