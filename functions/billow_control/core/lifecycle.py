"""A cluster's lifecycle: the reconcile step, its named transitions, the one convergence
rule, failure and the one stop path.

``Lifecycle.reconcile(cluster_id)`` reads the record and the provider's view of the
cluster's tagged instances and takes the next step toward ``target``. It may be killed at
any line and run again: every step is either a conditional store write (a lost race
re-runs the step) or an idempotent provider call keyed by the cluster id and the
instance name. Status moves only through the transitions below::

    pending --provision--> provisioning --mark_ready--> ready
    any active --begin_teardown--> stopping --finish--> stopped | failed
    any active --fail--> stopping (target stopped, finishes as failed)

Every transition is one conditional write followed by its event (``provisioning``,
``ready``, ``stopping``, ``stopped``/``failed``, ``failing`` then ``failed``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from . import ingress, placement, tags
from .auth import INSTANCE_TOKEN_PREFIX, hash_token, new_token
from .convergence import start_deadline_passed
from .errors import Conflict, NotFound
from .models import (
    ClusterRecord,
    ClusterStatus,
    ClusterTarget,
    HeartbeatRecord,
    InstanceCredential,
    InstanceInfo,
    InstanceRole,
    InstanceSpec,
    InstanceState,
    ReconcileResult,
)
from .ports import LaunchRefused, Ports, StaleRecordError

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
WRITE_RETRIES = 20  # re-reads after a lost conditional write before giving up
MAX_POLL_WAIT = 10.0  # seconds between reconcile steps while instances boot


def _worker_index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


class Lifecycle:
    """Reconcile, fail and stop clusters through the ports of one runtime."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    # -- entry points ------------------------------------------------------------------

    def reconcile(self, cluster_id: str) -> ReconcileResult:
        """Take one step toward the target. ``done`` once the provider's view matches it.

        Raises only on infrastructure errors (store or provider unavailable); the caller
        retries with backoff. A lost conditional write returns ``wait=0`` to re-run.
        """
        record = self.ports.store.get_cluster(cluster_id)
        if record is None:
            return ReconcileResult(done=True, status=ClusterStatus.stopped)
        instances = self.ports.provider.describe(cluster_id)
        try:
            if record.target == ClusterTarget.stopped or record.status in (
                ClusterStatus.stopping,
                ClusterStatus.stopped,
                ClusterStatus.failed,
            ):
                return self._tear_down(record, instances)
            return self._bring_up(record, instances)
        except StaleRecordError:
            return ReconcileResult(done=False, wait=0.0, status=record.status)
        except LaunchRefused as e:
            where = f"{e.field}: " if e.field else ""
            return self._failed(record.id, "launch-refused", f"{where}{e}", [])

    def observe(self, record: ClusterRecord, beat: HeartbeatRecord) -> ClusterRecord:
        """What a heartbeat shows at once: a starting cluster whose scheduler counts its
        workers is ready. The one transition a report makes, so that a start is never
        slower than the reconcile loop's polling (which then only confirms it). A lost
        race with the loop is left to the loop."""
        starting = record.status in (ClusterStatus.pending, ClusterStatus.provisioning)
        if not starting or record.target != ClusterTarget.running:
            return record
        if len(beat.heartbeat.workers) < record.desired_workers:
            return record
        try:
            return self._mark_ready(record, beat)
        except StaleRecordError:
            return record

    def fail(
        self, cluster_id: str, reason: str, message: str, logs: list[str] | None = None
    ) -> ClusterRecord | None:
        """Record the failure (with the failing instance's last log lines) and set the
        target to stopped, so the next reconcile tears the cluster down and finishes it as
        ``failed``. Re-reads and retries on lost writes; a no-op for a cluster that is
        already failing or finished (returns it) or unknown (``None``)."""
        store = self.ports.store
        for _ in range(WRITE_RETRIES):
            record = store.get_cluster(cluster_id)
            if record is None or record.status.terminal or record.fail_on_stop:
                return record
            log.warning("cluster %s failed: %s", record.id, message)
            record.error = message
            record.error_logs = list(logs or [])
            record.stop_reason = reason
            record.fail_on_stop = True
            record.target = ClusterTarget.stopped
            record.status = ClusterStatus.stopping
            try:
                record = self._write(record, "failing")
            except StaleRecordError:
                continue
            self.ports.events.publish("failed", record, {"reason": reason, "message": message})
            return record
        raise Conflict("cluster is changing too quickly; try again")

    def abort(self, cluster_id: str, why: str) -> ReconcileResult:
        """The orchestrator gave up driving the cluster (its workflow failed): fail it with
        ``why``, then take the first teardown step. A teardown step that raises is logged
        and reported as "not done": the orchestrator's teardown loop retries it."""
        self.fail(cluster_id, "orchestration-error", f"the lifecycle workflow failed: {why}")
        try:
            return self.reconcile(cluster_id)
        except Exception:
            log.exception("teardown step after failure raised; the teardown loop retries")
            return ReconcileResult(
                done=False,
                wait=self.ports.settings.reconcile_interval,
                status=ClusterStatus.stopping,
            )

    def request_stop(
        self,
        record: ClusterRecord,
        reason: str,
        *,
        event: str | None = None,
        detail: dict | None = None,
    ) -> ClusterRecord:
        """The one stop path: set ``target=stopped`` with ``stop_reason`` (the first reason
        given wins), publish ``event`` if any, and submit the cluster for teardown.

        Idempotent: a cluster already told to stop is only resubmitted. Raises
        ``NotFound`` if the record disappeared and ``Conflict`` if it kept changing.
        """
        store = self.ports.store
        for _ in range(WRITE_RETRIES):
            if record.target == ClusterTarget.stopped:
                self.ports.orchestrator.submit(record.id)
                return record
            record.target = ClusterTarget.stopped
            record.stop_reason = record.stop_reason or reason
            try:
                record = self._write(record, event, detail)
            except StaleRecordError:
                fresh = store.get_cluster(record.id)
                if fresh is None:
                    raise NotFound(f"no cluster {record.id!r}", field="cluster_id") from None
                record = fresh
                continue
            self.ports.orchestrator.submit(record.id)
            return record
        raise Conflict("cluster is changing too quickly; try again")

    # -- bring up ----------------------------------------------------------------------

    def _bring_up(self, record: ClusterRecord, instances: list[InstanceInfo]) -> ReconcileResult:
        settings = self.ports.settings
        late = start_deadline_passed(record, self.ports.clock.now(), settings)
        if late:
            return self._failed(record.id, "start-timeout", late, self._failure_logs(instances))
        if record.status == ClusterStatus.pending:
            record = self._provision(record)

        schedulers = [i for i in instances if i.role == InstanceRole.scheduler]
        live_scheduler = next((i for i in schedulers if i.state != InstanceState.terminated), None)
        if schedulers and live_scheduler is None:
            dead = schedulers[-1]
            code = f" with code {dead.exit_code}" if dead.exit_code is not None else ""
            return self._failed(
                record.id,
                "scheduler-exited",
                f"scheduler instance {dead.id} exited{code}",
                self._logs_of(dead),
            )
        batch = settings.launch_batch  # instances launched by this step, at most
        if live_scheduler is None:
            live_scheduler = self._launch(record, SCHEDULER_NAME, InstanceRole.scheduler)
            batch -= 1
        planned = live_scheduler.listen_address
        scheduler_address = f"tls://{planned}" if planned else None

        workers = [i for i in instances if i.role == InstanceRole.worker]
        live = [w for w in workers if w.state != InstanceState.terminated]
        if record.status != ClusterStatus.ready:
            crashed = [w for w in workers if w.state == InstanceState.terminated and w.exit_code]
            if crashed:
                w = crashed[0]
                return self._failed(
                    record.id,
                    "worker-exited",
                    f"worker instance {w.id} exited with code {w.exit_code} during startup",
                    self._logs_of(w),
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
            self.ports.provider.terminate([w.id for w in to_remove])
        if record.remove_workers:
            record.remove_workers = []
            record = self._write(record, None)

        # Scale up with fresh names, so a replaced worker never reuses a dead one's token;
        # in batches of at most ``launch_batch`` per step: the next step launches more.
        next_index = max((_worker_index(w.name) for w in workers), default=-1) + 1
        for i in range(min(record.desired_workers - len(rest), batch)):
            self._launch(record, f"worker-{next_index + i}", InstanceRole.worker, scheduler_address)

        waiting = ReconcileResult(done=False, wait=self._poll_wait(record), status=record.status)
        if record.status != ClusterStatus.ready:
            beat = self.ports.store.get_heartbeat(record.id)
            if beat is None or len(beat.heartbeat.workers) < record.desired_workers:
                return waiting
            record = self._mark_ready(record, beat)
            return ReconcileResult(done=True, status=record.status)
        if len(rest) != record.desired_workers or to_remove:
            return waiting
        return ReconcileResult(done=True, status=record.status)

    def _launch(
        self,
        record: ClusterRecord,
        name: str,
        role: InstanceRole,
        scheduler_address: str | None = None,
    ) -> InstanceInfo:
        """Launch one instance with a fresh one-time token (a worker's names
        ``scheduler_address`` when the scheduler's was fixed at launch)."""
        settings = self.ports.settings
        token = new_token(INSTANCE_TOKEN_PREFIX)
        now = self.ports.clock.now()
        self.ports.store.put_instance_credential(
            InstanceCredential(
                token_hash=hash_token(token),
                cluster_id=record.id,
                instance_name=name,
                role=role,
                expires_at=now + timedelta(seconds=settings.instance_token_ttl),
                scheduler_address=scheduler_address,
            )
        )
        request = record.request
        scheduler = role == InstanceRole.scheduler
        software = {"BILLOW_SOFTWARE_KEY": request.software.key} if request.software else {}
        spec = InstanceSpec(
            cluster_id=record.id,
            name=name,
            role=role,
            cpu=request.scheduler_cpu if scheduler else request.worker_cpu,
            memory=request.scheduler_memory if scheduler else request.worker_memory,
            tags=tags.cluster_tags(record.id, record.owner, settings.deployment, request.tags),
            environment={
                **INSTANCE_BASE_ENVIRONMENT,
                "BILLOW_CONTROL_URL": settings.control_url,
                "BILLOW_INSTANCE_TOKEN": token,
                "BILLOW_CLUSTER_ID": record.id,
                "BILLOW_ROLE": role.value,
                **software,
            },
            ingress=ingress.cidrs(request),
            arch=placement.arch_of(request),
            spot_policy=request.spot_policy,
            after_interruption=record.spot_interruptions > 0,
        )
        if self.ports.machines is not None:
            spec.vm_types = placement.machine_types(self.ports.machines, request, role.value)
        return self.ports.provider.launch(spec)

    # -- tear down ---------------------------------------------------------------------

    def _tear_down(self, record: ClusterRecord, instances: list[InstanceInfo]) -> ReconcileResult:
        live = [i for i in instances if i.state != InstanceState.terminated]
        wait = self.ports.settings.reconcile_interval
        if record.status.terminal:
            if live:  # leftovers of a crash: terminate, status stays as it is
                self.ports.provider.terminate([i.id for i in live])
            return ReconcileResult(done=not live, wait=wait, status=record.status)
        if record.status != ClusterStatus.stopping:
            record = self._begin_teardown(record)
        if live:
            self.ports.provider.terminate([i.id for i in live])
            return ReconcileResult(done=False, wait=wait, status=record.status)
        self._release(record.id)
        record = self._finish(record)
        return ReconcileResult(done=True, status=record.status)

    def _release(self, cluster_id: str) -> None:
        """Release what the cluster holds besides live instances (a stopped GCE instance,
        templates, firewall rules, security groups, scratch) before it is marked stopped:
        ``terminate`` does so as it ends the last instances, but not when a crash came
        between. Best effort: an error is logged and the scheduled reaper's sweep, which
        does the same for every finished cluster, tries again."""
        try:
            self.ports.provider.sweep_cluster_resources(lambda other: other != cluster_id)
        except Exception:
            log.warning("releasing the resources of %s failed; the reaper retries", cluster_id)

    # -- named transitions -------------------------------------------------------------

    def _provision(self, record: ClusterRecord) -> ClusterRecord:
        record.status = ClusterStatus.provisioning
        return self._write(record, "provisioning")

    def _mark_ready(self, record: ClusterRecord, beat: HeartbeatRecord) -> ClusterRecord:
        record.status = ClusterStatus.ready
        record.ready_at = self.ports.clock.now()
        for name, address in beat.heartbeat.addresses().items():
            setattr(record, name, address)
        return self._write(record, "ready")

    def _begin_teardown(self, record: ClusterRecord) -> ClusterRecord:
        record.status = ClusterStatus.stopping
        return self._write(record, "stopping")

    def _finish(self, record: ClusterRecord) -> ClusterRecord:
        record.status = ClusterStatus.failed if record.fail_on_stop else ClusterStatus.stopped
        record.stopped_at = self.ports.clock.now()
        return self._write(record, record.status.value)

    def _failed(
        self, cluster_id: str, reason: str, message: str, logs: list[str]
    ) -> ReconcileResult:
        record = self.fail(cluster_id, reason, message, logs)
        status = record.status if record is not None else ClusterStatus.stopped
        return ReconcileResult(done=False, wait=0.0, status=status)

    # -- helpers -----------------------------------------------------------------------

    def _poll_wait(self, record: ClusterRecord) -> float:
        """How long to wait before looking again at a cluster that waits for instances:
        ``reconcile_interval`` at first, then a quarter of the time since its record last
        changed, up to ``MAX_POLL_WAIT``. Each look is a Step Functions transition or
        three on AWS, billed; what the wait delays is only noticing a failed instance,
        since a heartbeat that shows the cluster ready marks it ready (``observe``) and
        wakes the loop."""
        quiet = (self.ports.clock.now() - record.updated_at).total_seconds()
        interval = self.ports.settings.reconcile_interval
        return min(max(interval, quiet / 4), max(interval, MAX_POLL_WAIT))

    def _logs_of(self, instance: InstanceInfo) -> list[str]:
        return self.ports.provider.tail_logs(instance.id, self.ports.settings.log_lines_on_failure)

    def _failure_logs(self, instances: list[InstanceInfo]) -> list[str]:
        for inst in sorted(instances, key=lambda i: i.role != InstanceRole.scheduler):
            lines = self._logs_of(inst)
            if lines:
                return [f"[{inst.name}] {line}" for line in lines]
        return []

    def _write(
        self, record: ClusterRecord, event: str | None, detail: dict | None = None
    ) -> ClusterRecord:
        record.updated_at = self.ports.clock.now()
        written = self.ports.store.update_cluster(record)
        if event:
            self.ports.events.publish(event, written, detail)
        return written
