"""The rules that say where a cluster stands: has it reached its target, and is a
starting cluster out of time. Pure functions of the record (and its last heartbeat), used
by the lifecycle, the heartbeat route and the watchdog alike."""

from __future__ import annotations

from datetime import datetime

from .models import ClusterRecord, ClusterStatus, ClusterTarget, HeartbeatRecord
from .settings import ControlSettings


def converged(record: ClusterRecord, beat: HeartbeatRecord | None) -> bool:
    """The one convergence rule: has the cluster, as last observed, reached its target?

    Stopped target: the cluster is terminal. Running target: it is ready, no named
    removal is pending, and its last heartbeat (when there is one) counts the desired
    workers. Whoever sees a cluster that has not converged submits it to the
    orchestrator (a heartbeat, the watchdog's resync).
    """
    if record.target == ClusterTarget.stopped:
        return record.status.terminal
    if record.status != ClusterStatus.ready or record.remove_workers:
        return False
    return beat is None or len(beat.heartbeat.workers) == record.desired_workers


def start_deadline_passed(record: ClusterRecord, now: datetime, settings: ControlSettings) -> str:
    """Why a not-yet-ready cluster is out of time (the start-timeout failure message), or
    ``""`` while it is within ``settings.start_timeout`` or already ready."""
    if record.status == ClusterStatus.ready:
        return ""
    if (now - record.created_at).total_seconds() <= settings.start_timeout:
        return ""
    return f"cluster was not ready {settings.start_timeout:.0f}s after it was requested"
