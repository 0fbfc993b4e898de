"""The watchdog: one pass that stops idle, abandoned or expired clusters, fails silent or
stuck ones, warns about idle GPUs, terminates orphaned instances, releases what finished
clusters left behind, and resubmits active clusters nobody is driving.

``Watchdog.run_once()`` is what the scheduled function (EventBridge schedule, Cloud
Scheduler, or the embedded server's timer) calls, the same on every runtime. It reads only
active clusters (the store's active index) plus each one's latest heartbeat, so its cost
grows with active clusters, not with history. A cluster that is busy, meaning tasks
processing or queued at its last heartbeat, is never stopped for idleness, however long
its tasks run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from .convergence import converged, start_deadline_passed
from .lifecycle import Lifecycle
from .meter import Meter
from .models import (
    ClusterRecord,
    ClusterStatus,
    ClusterTarget,
    HeartbeatRecord,
    InstanceInfo,
)
from .pool_port import PoolKeeper
from .ports import Ports, StaleRecordError
from .settings import ControlSettings
from .units import parse_duration

log = logging.getLogger(__name__)

GPU_WARNING = "gpu-underused"


@dataclass(frozen=True)
class Verdict:
    """What the policy decided for one cluster: stop (user-style teardown), fail, or warn."""

    action: str  # "stop" | "fail" | "warn" | "none"
    reason: str = ""
    message: str = ""


def _seconds(value: str | float | None, default: float | None) -> float | None:
    parsed = parse_duration(value)
    return default if parsed is None else parsed


def steady_heartbeat(record: ClusterRecord, settings: ControlSettings) -> float:
    """How long a converged cluster's scheduler may wait between reports when nothing
    changes: ``heartbeat_steady_interval``, but at most half the cluster's idle timeout
    (the scheduler reports work that follows a quiet spell that long at once, so the
    reaper's extrapolated idleness is never wrong by more than that), and at least
    ``heartbeat_interval``."""
    idle_limit = _seconds(record.request.idle_timeout, settings.idle_timeout)
    steady = settings.heartbeat_steady_interval
    if idle_limit is not None:
        steady = min(steady, idle_limit / 2)
    return max(settings.heartbeat_interval, steady)


def judge(
    record: ClusterRecord,
    beat: HeartbeatRecord | None,
    now: datetime,
    settings: ControlSettings,
) -> Verdict:
    """The policy for one active cluster, as a pure function of its record and heartbeat.

    Order matters: failures (never started, went silent) first, then the lifetime limit,
    then idleness and abandonment, then GPU warnings.
    """
    if record.target == ClusterTarget.stopped or record.status.terminal:
        return Verdict("none")
    age = (now - record.created_at).total_seconds()
    if record.status != ClusterStatus.ready:
        late = start_deadline_passed(record, now, settings)
        return Verdict("fail", "start-timeout", late) if late else Verdict("none")
    if beat is None:
        since = (now - (record.ready_at or record.created_at)).total_seconds()
        silent = since
    else:
        silent = (now - beat.received_at).total_seconds()
    if silent > settings.heartbeat_loss_timeout:
        return Verdict(
            "fail", "heartbeat-lost", f"no heartbeat from the scheduler for {silent:.0f}s"
        )
    lifetime = _seconds(record.request.cluster_timeout, None)
    if lifetime is not None and age > lifetime:
        return Verdict(
            "stop", "lifetime", f"cluster reached its maximum lifetime ({lifetime:.0f}s)"
        )
    if beat is None:
        return Verdict("none")
    hb = beat.heartbeat
    elapsed = max(0.0, silent)
    idle_limit = _seconds(record.request.idle_timeout, settings.idle_timeout)
    if not hb.busy and idle_limit is not None and hb.idle_seconds + elapsed > idle_limit:
        return Verdict(
            "stop", "idle", f"no tasks and no client activity for {hb.idle_seconds + elapsed:.0f}s"
        )
    no_client_limit = _seconds(record.request.no_client_timeout, settings.no_client_timeout)
    if (
        not hb.busy
        and hb.seconds_without_clients is not None
        and no_client_limit is not None
        and hb.seconds_without_clients + elapsed > no_client_limit
    ):
        return Verdict(
            "stop",
            "no-client",
            f"no client connected for {hb.seconds_without_clients + elapsed:.0f}s",
        )
    if (
        hb.gpus
        and hb.gpu_low_seconds is not None
        and hb.gpu_low_seconds >= settings.gpu_idle_warning
        and not any(w.startswith(GPU_WARNING) for w in record.warnings)
    ):
        return Verdict(
            "warn",
            GPU_WARNING,
            f"{hb.gpus} GPU(s) below {settings.gpu_utilization_threshold:.0%} "
            f"utilisation for {hb.gpu_low_seconds / 60:.0f} min",
        )
    return Verdict("none")


@dataclass
class WatchdogReport:
    """What one pass did, by cluster id (logged by every runtime's timer or function)."""

    clusters_read: int = 0
    stopped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warned: dict[str, str] = field(default_factory=dict)
    orphans_terminated: list[str] = field(default_factory=list)
    resources_cleaned: list[str] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)
    metered: list[str] = field(default_factory=list)
    months_closed: list[str] = field(default_factory=list)
    pool_launched: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "clusters_read": self.clusters_read,
            "stopped": self.stopped,
            "failed": self.failed,
            "warned": self.warned,
            "orphans_terminated": self.orphans_terminated,
            "resources_cleaned": self.resources_cleaned,
            "resubmitted": self.resubmitted,
            "metered": self.metered,
            "months_closed": self.months_closed,
            "pool_launched": self.pool_launched,
        }

    @property
    def acted(self) -> bool:
        """Whether the pass changed anything (worth a log line)."""
        quiet = ("clusters_read", "metered")  # metering writes every pass: not news
        return any(v for k, v in self.summary().items() if k not in quiet)


class Watchdog:
    """Runs ``judge`` over active clusters and keeps the deployment tidy, through the
    ports of one runtime; failures and stops go through ``Lifecycle`` like any other."""

    def __init__(self, ports: Ports, lifecycle: Lifecycle) -> None:
        self.ports = ports
        self.lifecycle = lifecycle
        self.meter = Meter(ports)

    def run_once(self) -> WatchdogReport:
        """One pass: the policy over active clusters, the orphan sweep, metering
        (``core.meter``), the release of finished clusters' resources, resync, then the
        provider's warm pool refill (when it keeps one). Never raises for one cluster's
        failure or one failing phase: it is logged and retried on the next pass."""
        report = WatchdogReport()
        store, now = self.ports.store, self.ports.clock.now()
        active = store.list_clusters(None, active_only=True)
        report.clusters_read = len(active)
        unconverged: list[ClusterRecord] = []
        beats = store.get_heartbeats([r.id for r in active])
        for record in active:
            try:
                beat = beats.get(record.id)
                verdict = judge(record, beat, now, self.ports.settings)
                self._apply(record, verdict, report)  # a stop or failure submits itself
                if verdict.action in ("none", "warn") and not converged(record, beat):
                    unconverged.append(record)
            except StaleRecordError:
                pass  # changed under us; the next pass sees the new state
            except Exception:
                log.exception("watchdog failed on cluster %s", record.id)
        active_ids = {r.id for r in active}
        live: list[InstanceInfo] | None = None
        try:
            live = self.ports.provider.list_deployment_instances()
        except Exception:
            log.exception("listing the deployment's instances failed; retried next pass")
        changing = [r.id for r in unconverged] + [r.id for r in active if r.id in report.stopped]
        for phase in (
            lambda: self._sweep_orphans(active_ids, now, report, live),
            lambda: self._meter(live, now, changing, report),
            lambda: self._release_resources(active_ids, report),
            lambda: self._resync(unconverged, report),
            lambda: self._refill_pool(report),
        ):
            try:
                phase()
            except Exception:
                log.exception("watchdog phase failed; retried next pass")
        return report

    def _apply(self, record: ClusterRecord, verdict: Verdict, report: WatchdogReport) -> None:
        if verdict.action == "stop":
            detail = {"reason": verdict.reason, "message": verdict.message}
            self.lifecycle.request_stop(record, verdict.reason, event="reaped", detail=detail)
            report.stopped[record.id] = verdict.reason
        elif verdict.action == "fail":
            self.lifecycle.fail(record.id, verdict.reason, verdict.message)
            self.ports.orchestrator.submit(record.id)
            report.failed[record.id] = verdict.reason
        elif verdict.action == "warn":
            record.warnings = [*record.warnings, f"{verdict.reason}: {verdict.message}"]
            record.updated_at = self.ports.clock.now()
            record = self.ports.store.update_cluster(record)
            self.ports.events.publish(
                "warning", record, {"warning": verdict.reason, "message": verdict.message}
            )
            report.warned[record.id] = verdict.message

    def _still_active(self, cluster_id: str) -> bool:
        """A strongly consistent re-read: the active index may not show a cluster created
        (or made active) a moment ago."""
        record = self.ports.store.get_cluster(cluster_id)
        return record is not None and record.active

    def _meter(
        self,
        live: list[InstanceInfo] | None,
        now: datetime,
        changing: list[str],
        report: WatchdogReport,
    ) -> None:
        """Usage records of every instance (``core.meter``), then the month-closed event."""
        if live is not None:
            report.metered = self.meter.run(live, now, changing)
        report.months_closed = self.meter.close_months(now)

    def _sweep_orphans(
        self,
        active_ids: set[str],
        now: datetime,
        report: WatchdogReport,
        live: list[InstanceInfo] | None,
    ) -> None:
        """Terminate tagged instances that no active record backs, after a grace period
        (so an instance launched a moment before its record was written is spared)."""
        if live is None:
            return
        orphans: list[InstanceInfo] = []
        for inst in live:
            if inst.cluster_id in active_ids:
                continue
            if (now - inst.launched_at).total_seconds() < self.ports.settings.orphan_grace:
                continue
            if self._still_active(inst.cluster_id):
                continue
            orphans.append(inst)
        if orphans:
            self.ports.provider.terminate([i.id for i in orphans])
            for inst in orphans:
                log.warning("terminated orphan instance %s of cluster %s", inst.id, inst.cluster_id)
            report.orphans_terminated = [i.id for i in orphans]

    def _release_resources(self, active_ids: set[str], report: WatchdogReport) -> None:
        """What finished clusters hold besides instances (launch templates, security
        groups, scratch directories): the provider releases it once no instance lives."""
        report.resources_cleaned = self.ports.provider.sweep_cluster_resources(
            lambda cluster_id: cluster_id in active_ids or self._still_active(cluster_id)
        )

    def _refill_pool(self, report: WatchdogReport) -> None:
        """Keep the provider's warm pool full, when it has one (``PoolKeeper``)."""
        provider = self.ports.provider
        if isinstance(provider, PoolKeeper):
            report.pool_launched = provider.refill_pool()

    def _resync(self, unconverged: list[ClusterRecord], report: WatchdogReport) -> None:
        """Submit every active cluster that has not converged and that the orchestrator
        is not driving: the level-triggered backstop for a submit that was lost."""
        if not unconverged:
            return
        running = self.ports.orchestrator.running_clusters()
        for record in unconverged:
            if record.id in running or not self._still_active(record.id):
                continue
            self.ports.orchestrator.submit(record.id)
            report.resubmitted.append(record.id)
