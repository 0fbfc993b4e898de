"""The lifecycle workflow as data: what one step of a cluster's reconcile loop does.

Step Functions runs this workflow on AWS from ``infra/statemachines/
cluster-lifecycle.asl.json``; an orchestrator without a workflow engine (Pub/Sub on GCP)
keeps a ``LoopState`` per cluster and calls ``run_step`` once per message. The rules are
the state machine's:

* ``reconcile`` phase: call ``Lifecycle.reconcile``; an error is retried after a backoff,
  and the ``max_errors``-th error in a row aborts the cluster (``Lifecycle.abort``: mark
  it failed, take the first teardown step) and moves to the ``teardown`` phase.
* The loop's ``deadline`` (its start plus the loop timeout) bounds the bring-up: a loop
  past it whose cluster is not ready aborts it with a timeout error; a ready cluster's
  loop just ends (the watchdog resubmits it if it has not converged), and a stopping
  one's moves to the ``teardown`` phase with a deadline of its own.
* ``teardown`` phase: reconcile until done, retrying errors; past ``deadline`` the loop
  gives up and the watchdog's orphan sweep terminates what is left.

``run_step`` never raises for an error of the step itself: it reports it in the outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

from .lifecycle import Lifecycle
from .models import ClusterStatus, ReconcileResult

log = logging.getLogger(__name__)

Phase = Literal["reconcile", "teardown"]
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class LoopState:
    """Where one cluster's loop is. ``deadline`` is Unix seconds; ``status`` the cluster
    status the last step saw (``None`` before the first)."""

    cluster_id: str
    phase: Phase = "reconcile"
    errors: int = 0
    deadline: float = 0.0
    status: str | None = None


@dataclass(frozen=True)
class StepOutcome:
    """``done``: the loop ends; otherwise run the next step (``state``) after ``wait``."""

    done: bool
    wait: float
    state: LoopState
    note: str = ""


def backoff(errors: int, base: float = 1.0) -> float:
    """Seconds before retrying after ``errors`` failures in a row (2, 4, 8... at most
    ``MAX_BACKOFF``), as the state machine's ``Retry`` with ``BackoffRate`` 2."""
    return min(MAX_BACKOFF, base * 2**errors)


def run_step(
    lifecycle: Lifecycle, state: LoopState, now: float, *, max_errors: int = 3, timeout: float
) -> StepOutcome:
    """Run one step of ``state``'s loop at Unix time ``now`` (see the module docstring).

    ``timeout`` is the loop timeout, the length of the teardown phase's new deadline.
    """
    if now > state.deadline:
        if state.phase == "teardown":
            log.error("teardown of %s did not finish in time; the watchdog takes over", state)
            return StepOutcome(True, 0.0, state, "teardown timed out")
        if state.status == ClusterStatus.ready.value:
            return StepOutcome(True, 0.0, state, "loop timed out on a ready cluster")
        if state.status == ClusterStatus.stopping.value:  # a stop, not a failed bring-up
            teardown = replace(state, phase="teardown", deadline=now + timeout)
            return StepOutcome(False, 0.0, teardown, "teardown phase")
        why = f"States.Timeout: the cluster did not converge within {timeout:.0f}s"
        return _aborted(lifecycle, state, why, now, timeout)
    try:
        result = lifecycle.reconcile(state.cluster_id)
    except Exception as e:
        errors = state.errors + 1
        log.exception("reconcile of %s failed (%d in a row)", state.cluster_id, errors)
        if state.phase == "reconcile" and errors >= max_errors:
            return _aborted(lifecycle, state, f"{type(e).__name__}: {e}", now, timeout)
        failed = replace(state, errors=errors)
        return StepOutcome(False, backoff(errors), failed, "error")
    return _after(result, replace(state, errors=0))


def _aborted(
    lifecycle: Lifecycle, state: LoopState, why: str, now: float, timeout: float
) -> StepOutcome:
    """Fail the cluster and enter the teardown phase (the state machine's Catch)."""
    result = lifecycle.abort(state.cluster_id, why[:2000])
    teardown = replace(state, phase="teardown", errors=0, deadline=now + timeout)
    return _after(result, teardown, "aborted")


def _after(result: ReconcileResult, state: LoopState, note: str = "") -> StepOutcome:
    state = replace(state, status=result.status.value)
    return StepOutcome(result.done, max(0.0, result.wait), state, note)
