"""Step Functions orchestrator: each cluster is driven by executions of the lifecycle
state machine (``infra/statemachines/cluster-lifecycle.asl.json``), which call the
reconcile function until it reports ``done``.

Execution names are ``<cluster id>-v<record version>``, with the input ``{"cluster_id"}``:

* At most one execution per cluster runs at a time: ``submit`` first lists the running
  executions of the state machine and does nothing when one of this cluster's is among
  them (it re-reads the record on every step, so it also picks up the change that
  caused this submit).
* Racing submitters of the same state of a record (twenty retries of one create, a
  heartbeat and a scale at the same instant) derive the same name and input, so Step
  Functions starts one execution: ``StartExecution`` returns the running execution for
  a repeated name and input, and ``ExecutionAlreadyExists`` is treated as success.
* A name from the cluster id alone would run a cluster once: after the
  bring-up execution succeeded, a stop or a scale would collide with it and be dropped.
  The record version makes the name unique per change of the record. When an
  execution of this very version already finished (the record did not change, yet the
  caller wants another pass, e.g. a heartbeat reporting a lost worker), a follow-up
  named ``...-v<version>-r<unix seconds>`` is started.

A submit can still be lost in one narrow window: the running execution was on its last,
read-only step. The scheduled reaper (``functions/aws.py``) resubmits every active
cluster that has not converged, once a minute, which closes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from ...core.models import ClusterRecord
from ...core.ports import Store
from .errors import error_code

log = logging.getLogger(__name__)

MAX_NAME = 80  # Step Functions execution names: 1..80 of [A-Za-z0-9_-]


def execution_name(record: ClusterRecord) -> str:
    return f"{record.id}-v{record.version}"


def cluster_of(execution_name: str) -> str:
    """The cluster id an execution name starts with (ids never contain ``-v``)."""
    return execution_name.rsplit("-v", 1)[0]


class StepFunctionsOrchestrator:
    """Implements ``billow_control.core.ports.Orchestrator`` with AWS Step Functions.

    Parameters
    ----------
    sfn
        A boto3 Step Functions (``stepfunctions``) client.
    state_machine_arn
        ARN of the cluster lifecycle state machine.
    store
        Read for the cluster's version.
    clock
        Unix time in seconds, for the names of follow-up executions.
    """

    def __init__(
        self,
        sfn: Any,
        state_machine_arn: str,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not state_machine_arn:
            raise ValueError("state_machine_arn is required (BILLOW_STATE_MACHINE_ARN)")
        self.sfn = sfn
        self.state_machine_arn = state_machine_arn
        self.store = store
        self.clock = clock

    def submit(self, cluster_id: str) -> None:
        """Start an execution for the cluster unless one of its executions is running.

        A no-op for an unknown cluster. Raises ``botocore.exceptions.ClientError`` when
        Step Functions refuses (throttled after retries, no permission); the record is
        already written, so the next submit (or the reaper's resync) drives it.
        """
        record = self.store.get_cluster(cluster_id)
        if record is None:
            return
        if self.running_clusters(only=record.id):
            return
        self.start(record)

    def start(self, record: ClusterRecord) -> str | None:
        """Start the execution for this state of ``record`` (see the module docstring).

        Returns the execution name started or already running, ``None`` when a racer
        started the same follow-up.
        """
        name = execution_name(record)
        if self._start(name, record):
            return name
        status = self._status(name)
        if status == "RUNNING":
            return name
        follow_up = f"{name}-r{int(self.clock())}"[:MAX_NAME]
        return follow_up if self._start(follow_up, record) else None

    def running_clusters(self, only: str | None = None) -> set[str]:
        """Ids of clusters with a running execution (``only``: stop at that cluster).

        One paginated ``ListExecutions`` of running executions: its cost grows with the
        number of clusters starting, scaling or stopping right now, not with history.
        """
        found: set[str] = set()
        paginator = self.sfn.get_paginator("list_executions")
        pages = paginator.paginate(stateMachineArn=self.state_machine_arn, statusFilter="RUNNING")
        for page in pages:
            for execution in page.get("executions", []):
                cluster_id = cluster_of(str(execution["name"]))
                if only is None or cluster_id == only:
                    found.add(cluster_id)
                    if only is not None:
                        return found
        return found

    def _start(self, name: str, record: ClusterRecord) -> bool:
        """``True`` if Step Functions started (or returned the running) ``name``;
        ``False`` when an execution of that name exists with another input or finished."""
        try:
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=name,
                input=json.dumps({"cluster_id": record.id}),
            )
        except ClientError as e:
            if error_code(e) != "ExecutionAlreadyExists":
                raise
            return False
        log.info("started execution %s", name)
        return True

    def _status(self, name: str) -> str | None:
        # arn:aws:states:REGION:ACCOUNT:stateMachine:NAME -> ...:execution:NAME:EXECUTION
        head, _, machine = self.state_machine_arn.rpartition(":stateMachine:")
        arn = f"{head}:execution:{machine}:{name}"
        try:
            return str(self.sfn.describe_execution(executionArn=arn)["status"])
        except ClientError as e:
            if error_code(e) == "ExecutionDoesNotExist":
                return None
            raise
