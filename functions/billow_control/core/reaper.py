"""The watchdog: one policy that stops idle, abandoned, expired, silent or stuck clusters,
warns about idle GPUs, and terminates orphaned instances.

``Reaper.run_once()`` is what the scheduled function (EventBridge schedule, Cloud
Scheduler, or the embedded server's timer) calls. It reads only active clusters (the
store's active index) plus each one's latest heartbeat, so its cost grows with active
clusters, not with history. A cluster that is busy, meaning tasks processing or queued at
its last heartbeat, is never stopped for idleness, however long its tasks run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from .models import (
    ClusterRecord,
    ClusterStatus,
    ClusterTarget,
    HeartbeatRecord,
    InstanceInfo,
    parse_duration,
)
from .ports import StaleRecordError
from .reconcile import Reconciler
from .service import ControlPlane
from .settings import ControlSettings

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
        if age > settings.start_timeout:
            return Verdict(
                "fail",
                "start-timeout",
                f"cluster was not ready {settings.start_timeout:.0f}s after request",
            )
        return Verdict("none")
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
class ReaperReport:
    clusters_read: int = 0
    stopped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warned: dict[str, str] = field(default_factory=dict)
    orphans_terminated: list[str] = field(default_factory=list)


class Reaper:
    """Runs ``judge`` over active clusters with the ports of ``plane``; failures go
    through ``reconciler.fail`` so they record logs and events like any other failure."""

    def __init__(self, plane: ControlPlane, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.store = plane.store
        self.provider = plane.provider
        self.orchestrator = plane.orchestrator
        self.clock = plane.clock
        self.events = plane.events
        self.settings = plane.settings

    def run_once(self) -> ReaperReport:
        """One pass over active clusters, then the orphan sweep. Never raises for a single
        cluster's failure: it is logged and retried on the next pass."""
        report = ReaperReport()
        now = self.clock.now()
        active = self.store.list_clusters(None, active_only=True)
        report.clusters_read = len(active)
        for record in active:
            try:
                self._apply(
                    record,
                    judge(record, self.store.get_heartbeat(record.id), now, self.settings),
                    report,
                )
            except StaleRecordError:
                pass  # changed under us; the next pass sees the new state
            except Exception:
                log.exception("reaper failed on cluster %s", record.id)
        self._sweep_orphans({r.id for r in active}, now, report)
        return report

    def _apply(self, record: ClusterRecord, verdict: Verdict, report: ReaperReport) -> None:
        if verdict.action == "stop":
            record.target = ClusterTarget.stopped
            record.stop_reason = verdict.reason
            record.updated_at = self.clock.now()
            record = self.store.update_cluster(record)
            self.events.publish(
                "reaped", record, {"reason": verdict.reason, "message": verdict.message}
            )
            self.orchestrator.submit(record.id)
            report.stopped[record.id] = verdict.reason
        elif verdict.action == "fail":
            self.reconciler.fail(record, verdict.reason, verdict.message, [])
            self.orchestrator.submit(record.id)
            report.failed[record.id] = verdict.reason
        elif verdict.action == "warn":
            record.warnings = [*record.warnings, f"{verdict.reason}: {verdict.message}"]
            record.updated_at = self.clock.now()
            record = self.store.update_cluster(record)
            self.events.publish(
                "warning", record, {"warning": verdict.reason, "message": verdict.message}
            )
            report.warned[record.id] = verdict.message

    def _sweep_orphans(self, active_ids: set[str], now: datetime, report: ReaperReport) -> None:
        """Terminate tagged instances that no active record backs, after a grace period
        (so an instance launched a moment before its record was written is spared)."""
        orphans: list[InstanceInfo] = []
        for inst in self.provider.list_deployment_instances():
            if inst.cluster_id in active_ids:
                continue
            if (now - inst.launched_at).total_seconds() < self.settings.orphan_grace:
                continue
            record = self.store.get_cluster(inst.cluster_id)
            if record is not None and record.active:
                continue  # became active after we listed
            orphans.append(inst)
        if orphans:
            self.provider.terminate([i.id for i in orphans])
            for inst in orphans:
                log.warning("terminated orphan instance %s of cluster %s", inst.id, inst.cluster_id)
            report.orphans_terminated = [i.id for i in orphans]
