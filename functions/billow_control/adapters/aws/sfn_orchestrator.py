"""Step Functions orchestrator: each cluster is driven by an *Express* execution of the
lifecycle state machine (``infra/statemachines/cluster-lifecycle.asl.json``), which calls
the reconcile function until it reports ``done``; one lease item per cluster
(``reconcile_leases.LoopLeases``) makes that one execution at a time.

Why Express, and what it changes (AWS Step Functions developer guide: "Choosing workflow
type", "Execution guarantees", and the pricing page):

* Billing: $1.00 per million executions plus $0.00001667 per GB-second of duration, in
  64 MB steps, instead of $0.025 per thousand state transitions (Standard). A loop of a
  dozen steps costs a thousandth of its Standard price (``docs/control-plane-cost.md``).
* An execution stops after 5 minutes (the Express maximum duration).
* Asynchronous Express executions run *at least once*: one ``StartExecution`` may run the
  workflow twice, and starting two executions with one name runs both (no idempotent
  start by name). Their history is not kept by Step Functions: ``ListExecutions`` and
  ``DescribeExecution`` do not apply to Express executions (CloudWatch Logs does).
* Express workflows do not support ``.waitForTaskToken``: the tasks invoke the reconcile
  Lambda directly (request-response).

So the Standard mechanism (list running executions, idempotent names, describe) is gone.
Instead, the contract:

* ``submit(cluster_id)`` takes the cluster's lease for a fresh loop name (a conditional
  put that succeeds only when no live lease exists) and then calls ``StartExecution``
  with ``{"cluster_id", "loop"}``: of twenty racing submits, one takes the lease and
  starts one execution. A submit that finds a live lease sets its ``again`` flag, so the
  loop runs one more step after it reports done (it re-reads the record every step,
  so it sees what the submitter wrote). If ``StartExecution`` fails after the put, the
  lease is released (conditional on the loop) and the error re-raised: the next submit
  or the reaper's resync is not blocked.
* ``step(cluster_id, loop, run)``, around every reconcile step (``functions/aws.py``):
  renews the lease (``until = now + lease``, conditional on ``loop``). A step of a loop
  that lost its lease (it lapsed and a newer loop took over) runs nothing and reports
  done, which ends that execution. When ``run`` reports done, the lease is deleted
  unless ``again`` was set; then ``again`` is cleared and the step reports "not done,
  wait 0", so the execution takes one more step. The ``fail`` action goes through the
  same path.
* ``running_clusters()``: the clusters with a live lease (one Scan of a table that holds
  running loops only; see ``reconcile_leases``).
* A loop outliving an execution: a step that is not done, of a loop older than
  ``hand_over_after`` (240 s; the loop name carries its start), starts a successor
  execution, hands it the lease (conditional on ``loop``) and reports done, so its own
  execution ends before Express stops it. The handover is made by the reconcile function,
  so it happens even when the execution was stopped while the step ran. If the start
  fails, the lease goes back and the old loop goes on.

Failure semantics. The state machine has no ``TimeoutSeconds`` (Express caps an execution
at 300 s anyway). An execution stopped at 5 minutes without a handover, or lost, leaves a
lease that lapses at most ``lease_seconds`` (330 s) after its last step; a submit in that
window only sets ``again`` on the dead loop. Once the lease lapses, the reaper's resync
(every minute) finds the cluster active, unconverged and not in ``running_clusters`` and
submits it: a new loop starts. The watchdog's start-timeout verdict (``core.convergence``,
``start_deadline_passed``) still bounds a bring-up: it fails a cluster not ready
``start_timeout`` after its creation and submits it, and a teardown loop follows, so
a bring-up that never converges ends failed, never pending forever. The worst case of a
lost execution is a pause of up to ``lease_seconds`` plus one reaper period. A duplicate
run of one execution (at least once) steps under the same loop name: steps are idempotent
and record writes are conditional on the record's version, so two steps at once cost a
retry, nothing more.

What the tests on moto cannot show: moto runs an ``EXPRESS`` machine like a Standard one
(exactly once, listable, no 5-minute stop), and does not enforce IAM. The tests simulate
an execution stopped at 5 minutes by leaving its task unanswered and moving the leases'
clock past its lease; at-least-once delivery is argued above, not shown.

Steps of executions started without a ``loop`` (Standard executions running when the
deployment was upgraded) run without a lease.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from ...core.models import ClusterStatus, ReconcileResult
from ...core.ports import Store
from .reconcile_leases import LoopLeases

log = logging.getLogger(__name__)

MAX_NAME = 80  # Step Functions execution names: 1..80 of [A-Za-z0-9_-]
SUBMIT_ATTEMPTS = 5  # acquire / ask-again rounds against racing loops that end
HAND_OVER_AFTER = 240.0  # Express stops an execution at 300 s


def loop_name(cluster_id: str, now: float) -> str:
    """A fresh loop (and execution) name: the cluster id, the start in milliseconds and a
    random suffix, so two loops never share a name."""
    return f"{cluster_id}-{int(now * 1000)}-{uuid.uuid4().hex[:8]}"[:MAX_NAME]


class StepFunctionsOrchestrator:
    """Implements ``billow_control.core.ports.Orchestrator`` with Express executions of
    the lifecycle state machine and a lease per cluster (see the module docstring).

    Parameters
    ----------
    sfn
        A boto3 Step Functions (``stepfunctions``) client.
    state_machine_arn
        ARN of the cluster lifecycle state machine (``Type: EXPRESS``).
    store
        Read to skip unknown clusters and for the status a superseded step reports.
    leases
        The deployment's ``LoopLeases``.
    clock
        Unix time in seconds, for loop names and ages.
    hand_over_after
        Age of a loop (seconds) from which a step that is not done starts a successor
        and hands it the lease, before Express stops the execution at 300 s.
    """

    def __init__(
        self,
        sfn: Any,
        state_machine_arn: str,
        store: Store,
        leases: LoopLeases,
        clock: Callable[[], float] = time.time,
        hand_over_after: float = HAND_OVER_AFTER,
    ) -> None:
        if not state_machine_arn:
            raise ValueError("state_machine_arn is required (BILLOW_STATE_MACHINE_ARN)")
        self.sfn = sfn
        self.state_machine_arn = state_machine_arn
        self.store = store
        self.leases = leases
        self.clock = clock
        self.hand_over_after = hand_over_after

    def submit(self, cluster_id: str) -> None:
        """Start a loop for the cluster, or ask its live loop for one more step.

        A no-op for an unknown cluster. Raises ``botocore.exceptions.ClientError`` when
        Step Functions refuses (throttled after retries, no permission), after releasing
        the lease it took, or pynamodb's ``PynamoDBException`` when DynamoDB does; the
        record is already written, so the next submit (or the reaper's resync) drives it.
        """
        if self.store.get_cluster(cluster_id) is None:
            return
        for _ in range(SUBMIT_ATTEMPTS):
            loop = loop_name(cluster_id, self.clock())
            if self.leases.acquire(cluster_id, loop):
                self._start(cluster_id, loop)
                return
            if self.leases.ask_again(cluster_id) is not False:
                return
            # The live lease was released or lapsed between the two calls: try again.
        log.warning("cluster %s: its loop kept changing under submit; resync retries", cluster_id)

    def step(
        self, cluster_id: str, loop: str, run: Callable[[], ReconcileResult]
    ) -> ReconcileResult:
        """One step of ``loop`` under its lease (see the module docstring). Raises what
        ``run`` raises (the state machine retries, then catches) with the lease renewed,
        so a retried step keeps it."""
        if not self.leases.renew(cluster_id, loop):
            log.info("cluster %s: loop %s was superseded; its execution ends", cluster_id, loop)
            record = self.store.get_cluster(cluster_id)
            status = record.status if record is not None else ClusterStatus.stopped
            return ReconcileResult(done=True, status=status)
        result = run()
        if result.done:
            if not self.leases.finish(cluster_id, loop):
                return ReconcileResult(done=False, wait=0.0, status=result.status)
            return result
        if self._age(loop) >= self.hand_over_after and self._hand_over(cluster_id, loop):
            return ReconcileResult(done=True, status=result.status)
        return result

    def running_clusters(self) -> set[str]:
        """Ids of the clusters with a live lease: a loop drives them, or did until less
        than ``lease_seconds`` ago."""
        return self.leases.live()

    def _age(self, loop: str) -> float:
        """Seconds since ``loop`` was named (its name carries the time; see ``loop_name``);
        0 for a name without one."""
        try:
            return self.clock() - int(loop.rsplit("-", 2)[-2]) / 1000
        except (IndexError, ValueError):
            return 0.0

    def _hand_over(self, cluster_id: str, loop: str) -> bool:
        """Start a successor of ``loop`` and give it the lease; ``False`` (``loop`` goes
        on) when ``loop`` no longer holds the lease or the start fails."""
        successor = loop_name(cluster_id, self.clock())
        if not self.leases.hand_over(cluster_id, loop, successor):
            return False
        try:
            self._start(cluster_id, successor, release=False)
        except Exception:
            log.exception("cluster %s: starting the successor of loop %s failed", cluster_id, loop)
            self.leases.hand_over(cluster_id, successor, loop)
            return False
        log.info("cluster %s: loop %s handed over to %s", cluster_id, loop, successor)
        return True

    def _start(self, cluster_id: str, loop: str, release: bool = True) -> None:
        try:
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=loop,
                input=json.dumps({"cluster_id": cluster_id, "loop": loop}),
            )
        except Exception:
            if release:
                self.leases.release(cluster_id, loop)
            raise
        log.info("started loop %s", loop)
