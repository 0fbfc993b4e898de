"""Level-triggered reconciliation: one idempotent step of a cluster toward its target.

``Reconciler.reconcile(cluster_id)`` reads the record and the provider's view of the
cluster's tagged instances, and takes the next step. It may be killed at any line and run
again: every step is either a conditional store write (a lost race is retried) or an
idempotent provider call keyed by the cluster id, generation and instance name.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from .auth import INSTANCE_TOKEN_PREFIX, hash_token, new_token
from .models import (
    ClusterRecord,
    ClusterStatus,
    ClusterTarget,
    InstanceCredential,
    InstanceInfo,
    InstanceRole,
    InstanceSpec,
    InstanceState,
    ReconcileResult,
)
from .ports import Clock, EventBus, Provider, StaleRecordError, Store
from .settings import ControlSettings

log = logging.getLogger(__name__)

SCHEDULER_NAME = "scheduler"
# What a Dask Nanny sets before a worker starts (distributed.nanny.pre-spawn-environ):
# single-threaded BLAS/OpenMP per worker thread pool and eager malloc trimming. These must
# be in the process environment at exec time, so every provider passes them through.
INSTANCE_BASE_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def deployment_tags(record: ClusterRecord, deployment: str) -> dict[str, str]:
    """The tags every resource of this cluster carries, plus the user's own tags."""
    return {
        **record.request.tags,
        "billow:cluster-id": record.id,
        "billow:deployment": deployment,
        "billow:owner": record.owner,
    }


def _worker_index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


class Reconciler:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        clock: Clock,
        events: EventBus,
        settings: ControlSettings,
    ) -> None:
        self.store = store
        self.provider = provider
        self.clock = clock
        self.events = events
        self.settings = settings

    # -- entry point -------------------------------------------------------------------

    def reconcile(self, cluster_id: str) -> ReconcileResult:
        """Take one step toward the target. ``done`` once the target is reached.

        Raises only on infrastructure errors (store or provider unavailable); the caller
        retries with backoff. A lost conditional write returns ``wait=0`` to re-run.
        """
        record = self.store.get_cluster(cluster_id)
        if record is None:
            return ReconcileResult(done=True, status=ClusterStatus.stopped)
        instances = self.provider.describe(cluster_id)
        try:
            if record.target == ClusterTarget.stopped or record.status == ClusterStatus.stopping:
                return self._teardown(record, instances)
            if record.status.terminal:
                return self._teardown(record, instances)
            return self._bring_up(record, instances)
        except StaleRecordError:
            return ReconcileResult(done=False, wait=0.0, status=record.status)

    # -- bring up ----------------------------------------------------------------------

    def _bring_up(self, record: ClusterRecord, instances: list[InstanceInfo]) -> ReconcileResult:
        now = self.clock.now()
        if record.status != ClusterStatus.ready:
            age = (now - record.created_at).total_seconds()
            if age > self.settings.start_timeout:
                return self.fail(
                    record,
                    "start-timeout",
                    f"cluster was not ready {self.settings.start_timeout:.0f}s after it was "
                    "requested",
                    self._failure_logs(instances),
                )
        if record.status == ClusterStatus.pending:
            record.status = ClusterStatus.provisioning
            record = self._write(record, "provisioning")

        schedulers = [i for i in instances if i.role == InstanceRole.scheduler]
        live_scheduler = next((i for i in schedulers if i.state != InstanceState.terminated), None)
        if schedulers and live_scheduler is None:
            dead = schedulers[-1]
            return self.fail(
                record,
                "scheduler-exited",
                f"scheduler instance {dead.id} exited"
                + (f" with code {dead.exit_code}" if dead.exit_code is not None else ""),
                self.provider.tail_logs(dead.id, self.settings.log_lines_on_failure),
            )
        if live_scheduler is None:
            self._launch(record, SCHEDULER_NAME, InstanceRole.scheduler)

        workers = [i for i in instances if i.role == InstanceRole.worker]
        live = [w for w in workers if w.state != InstanceState.terminated]
        if record.status != ClusterStatus.ready:
            crashed = [w for w in workers if w.state == InstanceState.terminated and w.exit_code]
            if crashed:
                w = crashed[0]
                return self.fail(
                    record,
                    "worker-exited",
                    f"worker instance {w.id} exited with code {w.exit_code} during startup",
                    self.provider.tail_logs(w.id, self.settings.log_lines_on_failure),
                )

        # Scale down: named removals first (already retired by the client), then newest.
        to_remove = [w for w in live if w.name in set(record.remove_workers)]
        rest = [w for w in live if w not in to_remove]
        excess = len(rest) - record.desired_workers
        if excess > 0:
            rest.sort(key=lambda w: _worker_index(w.name))
            to_remove += rest[-excess:]
            rest = rest[:-excess]
        if to_remove:
            self.provider.terminate([w.id for w in to_remove])
        if record.remove_workers:
            record.remove_workers = []
            record = self._write(record, None)

        # Scale up with fresh names, so a replaced worker never reuses a dead one's token.
        next_index = max((_worker_index(w.name) for w in workers), default=-1) + 1
        for i in range(record.desired_workers - len(rest)):
            self._launch(record, f"worker-{next_index + i}", InstanceRole.worker)

        beat = self.store.get_heartbeat(record.id)
        joined = len(beat.heartbeat.workers) if beat else 0
        if record.status != ClusterStatus.ready:
            if beat is not None and joined >= record.desired_workers:
                record.status = ClusterStatus.ready
                record.ready_at = now
                record.scheduler_address = beat.heartbeat.scheduler_address
                record.dashboard_address = beat.heartbeat.dashboard_address
                record = self._write(record, "ready")
                return ReconcileResult(done=True, status=record.status)
            return ReconcileResult(
                done=False, wait=self.settings.reconcile_interval, status=record.status
            )
        if len(rest) != record.desired_workers or to_remove:
            return ReconcileResult(
                done=False, wait=self.settings.reconcile_interval, status=record.status
            )
        return ReconcileResult(done=True, status=record.status)

    def _launch(self, record: ClusterRecord, name: str, role: InstanceRole) -> None:
        token = new_token(INSTANCE_TOKEN_PREFIX)
        now = self.clock.now()
        self.store.put_instance_credential(
            InstanceCredential(
                token_hash=hash_token(token),
                cluster_id=record.id,
                instance_name=name,
                role=role,
                expires_at=now + timedelta(seconds=self.settings.instance_token_ttl),
            )
        )
        request = record.request
        spec = InstanceSpec(
            cluster_id=record.id,
            name=name,
            role=role,
            cpu=request.scheduler_cpu if role == InstanceRole.scheduler else request.worker_cpu,
            memory=(
                request.scheduler_memory
                if role == InstanceRole.scheduler
                else request.worker_memory
            ),
            tags=deployment_tags(record, self.settings.deployment),
            environment={
                **INSTANCE_BASE_ENVIRONMENT,
                "BILLOW_CONTROL_URL": self.settings.control_url,
                "BILLOW_INSTANCE_TOKEN": token,
                "BILLOW_CLUSTER_ID": record.id,
                "BILLOW_ROLE": role.value,
            },
        )
        self.provider.launch(spec)

    # -- tear down ---------------------------------------------------------------------

    def _teardown(self, record: ClusterRecord, instances: list[InstanceInfo]) -> ReconcileResult:
        live = [i for i in instances if i.state != InstanceState.terminated]
        if record.status.terminal:
            if live:  # leftovers of a crash: terminate, status stays as it is
                self.provider.terminate([i.id for i in live])
            return ReconcileResult(
                done=not live, wait=self.settings.reconcile_interval, status=record.status
            )
        if record.status != ClusterStatus.stopping:
            record.status = ClusterStatus.stopping
            record = self._write(record, "stopping")
        if live:
            self.provider.terminate([i.id for i in live])
            return ReconcileResult(
                done=False, wait=self.settings.reconcile_interval, status=record.status
            )
        record.status = ClusterStatus.failed if record.fail_on_stop else ClusterStatus.stopped
        record.stopped_at = self.clock.now()
        record = self._write(record, record.status.value)
        return ReconcileResult(done=True, status=record.status)

    def fail(
        self, record: ClusterRecord, reason: str, message: str, logs: list[str]
    ) -> ReconcileResult:
        """Record the failure with the failing instance's last log lines, then tear down."""
        log.warning("cluster %s failed: %s", record.id, message)
        record.error = message
        record.error_logs = logs
        record.stop_reason = reason
        record.fail_on_stop = True
        record.target = ClusterTarget.stopped
        record.status = ClusterStatus.stopping
        record = self._write(record, "failing")
        self.events.publish("failed", record, {"reason": reason, "message": message})
        return ReconcileResult(done=False, wait=0.0, status=record.status)

    def _failure_logs(self, instances: list[InstanceInfo]) -> list[str]:
        for inst in sorted(instances, key=lambda i: i.role != InstanceRole.scheduler):
            lines = self.provider.tail_logs(inst.id, self.settings.log_lines_on_failure)
            if lines:
                return [f"[{inst.name}] {line}" for line in lines]
        return []

    def _write(self, record: ClusterRecord, event: str | None) -> ClusterRecord:
        record.updated_at = self.clock.now()
        written = self.store.update_cluster(record)
        if event:
            self.events.publish(event, written)
        return written
