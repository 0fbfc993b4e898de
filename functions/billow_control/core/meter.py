"""The metering pass: the watchdog writes one usage record per instance from what the
provider shows, so usage never depends on lifecycle events having been delivered.

Each pass (``Meter.run``):

GPUs of an instance whose provider reports none (EC2) come from the bundled instance
table (``billing.instance_type``) when it knows the machine type.

1. every live instance of the deployment (the one listing the orphan sweep also uses)
   gets an open record, seen now; its owner and team are its cluster record's, or, for an
   instance no record backs (an orphan), its ``billow:owner`` tag and that user's team;
2. every open record whose instance is no longer live, and every instance of the clusters
   the pass names (those starting, scaling or stopping, where instances come and go
   between passes), is read back with ``Provider.describe`` (one call per cluster) and
   closed at the provider's termination time, else at the last evidence of life
   (``metering.observe``);
3. once a month has ended, ``billow.usage.month-closed`` is published once with each
   team's totals (``Store.claim_usage_month`` makes it once across passes and runtimes).

Not metered: an instance whose whole life falls between two passes in a cluster no pass
saw active (a cluster created and stopped within one ``reaper_interval``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from . import tags
from .accounts import DEFAULT_TEAM
from .billing import instance_type
from .metering import (
    UsageRecord,
    aggregate,
    close,
    last_evidence,
    month_bounds,
    month_of,
    observe,
)
from .models import ClusterRecord, InstanceInfo, InstanceState
from .ports import Ports
from .usage_port import UsageEvents

log = logging.getLogger(__name__)

MONTH_CLOSED = "usage.month-closed"
# An open record's time seen is rewritten at most once per this many passes (it bounds
# how much an instance gone without a termination time and without heartbeats is
# under-billed: ten passes, five minutes at the default reaper interval).
SEEN_REFRESH = 10


class Meter:
    """Writes usage records through the ``Store`` of one runtime's ``Ports``."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self._clusters: dict[str, ClusterRecord | None] = {}
        self._claimed: set[str] = set()  # months this process saw closed: no write again

    def _cluster(self, cluster_id: str) -> ClusterRecord | None:
        if cluster_id not in self._clusters:
            self._clusters[cluster_id] = self.ports.store.get_cluster(cluster_id)
        return self._clusters[cluster_id]

    def _owner(self, inst: InstanceInfo, cluster: ClusterRecord | None) -> tuple[str, str]:
        """The user id and team billed for ``inst``: its cluster's, else its tag's."""
        if cluster is not None:
            return cluster.owner, cluster.team
        owner = inst.tags.get(tags.OWNER, "")
        user = self.ports.store.get_user(owner) if owner else None
        return owner or "unknown", user.team if user is not None else DEFAULT_TEAM

    def _write(
        self, inst: InstanceInfo, previous: UsageRecord | None, now: datetime
    ) -> UsageRecord | None:
        if previous is not None and not previous.open:
            return None
        known = instance_type(inst.machine_type) if inst.machine_type else None
        if known is not None and not inst.gpus:  # EC2 does not report GPUs: the table does
            inst = inst.model_copy(update={"gpus": int(known["gpus"])})
        cluster = self._cluster(inst.cluster_id)
        owner, team = self._owner(inst, cluster)
        beat = None
        if inst.state == InstanceState.terminated and inst.terminated_at is None:
            beat = self.ports.store.get_heartbeat(inst.cluster_id)
        at = beat.received_at if beat is not None else None
        record = observe(inst, cluster, owner, team, previous, now, at)
        if previous is not None and record.open and self._fresh(previous, record):
            return None  # nothing new but the time seen: saves a write per instance and pass
        return self.ports.store.put_usage(record)

    def _fresh(self, previous: UsageRecord, record: UsageRecord) -> bool:
        """Whether ``previous`` differs from ``record`` only by a time seen that is less
        than ``SEEN_REFRESH`` passes old."""
        refresh = timedelta(seconds=SEEN_REFRESH * self.ports.settings.reaper_interval)
        same = previous.model_copy(update={"last_seen_at": record.last_seen_at}) == record
        return same and record.last_seen_at - previous.last_seen_at < refresh

    def run(
        self, live: list[InstanceInfo], now: datetime, describe: Iterable[str] = ()
    ) -> list[str]:
        """One pass over ``live`` (the provider's live instances) and the clusters in
        ``describe``; returns the ids of records written. Raises on store or provider
        errors (the watchdog logs them and the next pass repeats the work)."""
        self._clusters = {}
        store = self.ports.store
        open_records = {r.instance_id: r for r in store.list_usage()}
        written: list[str] = []
        seen: set[str] = set()
        for inst in live:
            seen.add(inst.id)
            if self._write(inst, open_records.get(inst.id), now) is not None:
                written.append(inst.id)
        to_describe = {r.cluster_id for r in open_records.values() if r.instance_id not in seen}
        to_describe.update(describe)
        for cluster_id in sorted(to_describe):
            known = {r.instance_id for r in open_records.values() if r.cluster_id == cluster_id}
            for inst in self.ports.provider.describe(cluster_id):
                known.discard(inst.id)
                if inst.id in seen:
                    continue
                if self._write(inst, open_records.get(inst.id), now) is not None:
                    written.append(inst.id)
            for instance_id in known:  # the provider no longer knows it: last evidence
                gone = open_records[instance_id]
                beat = store.get_heartbeat(cluster_id)
                end = last_evidence(gone, beat.received_at if beat else None, now)
                store.put_usage(close(gone, end, "last-seen", now))
                written.append(instance_id)
        return written

    def close_months(self, now: datetime) -> list[str]:
        """Publish ``usage.month-closed`` for the month that ended before ``now`` (once a
        grace period of one reaper interval has passed, so its last records are closed),
        unless nothing ran in it; returns the months published by this call."""
        start, _ = month_bounds(month_of(now))
        if (now - start) < timedelta(seconds=self.ports.settings.reaper_interval):
            return []
        previous = month_of(start - timedelta(seconds=1))
        prev_start, _ = month_bounds(previous)
        if previous in self._claimed:
            return []
        self._claimed.add(previous)
        if not self.ports.store.claim_usage_month(previous):
            return []
        usage = aggregate(self.ports.store.list_usage(prev_start), previous, now)
        if not usage.by_team:
            return []  # nothing ran that month (a deployment newer than it): no event
        detail = {
            "month": previous,
            "teams": {team: t.rounded() for team, t in sorted(usage.by_team.items())},
            "total": usage.total.rounded(),
        }
        bus = self.ports.events
        if isinstance(bus, UsageEvents):
            bus.publish_usage(MONTH_CLOSED, detail)
        else:
            log.info("month %s closed: %s", previous, detail)
        return [previous]
