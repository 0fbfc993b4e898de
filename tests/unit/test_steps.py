"""``core.steps``: the lifecycle workflow's rules (what Step Functions gives on AWS) for
loops without a workflow engine: retry with backoff, abort after repeated errors, a
deadline that ends in a failed-and-torn-down cluster, a teardown that gives up."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow_control.core.models import ClusterStatus
from billow_control.core.steps import MAX_BACKOFF, LoopState, StepOutcome, backoff, run_step
from tests.unit.test_reconcile import World

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
TIMEOUT = 600.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def until_done(world: World, state: LoopState, now: float = NOW) -> StepOutcome:
    for _ in range(20):
        outcome = run_step(world.reconciler, state, now, timeout=TIMEOUT)
        if outcome.done:
            return outcome
        state = outcome.state
    raise AssertionError("the loop did not finish in 20 steps")


def test_backoff_doubles_up_to_a_bound() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff(20) == MAX_BACKOFF


def test_errors_are_retried_then_the_cluster_fails_and_is_torn_down(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = world.create(1)
    state = LoopState(cid, deadline=NOW + TIMEOUT)
    first = run_step(world.reconciler, state, NOW, timeout=TIMEOUT)
    assert not first.done and world.provider.live(cid)

    def refuse(cluster_id: str) -> list:
        raise RuntimeError("compute API unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(world.provider, "describe", refuse)
        second = run_step(world.reconciler, first.state, NOW, timeout=TIMEOUT)
        third = run_step(world.reconciler, second.state, NOW, timeout=TIMEOUT)
        assert (second.done, second.wait, second.state.errors) == (False, 2.0, 1)
        assert (third.done, third.wait, third.state.errors) == (False, 4.0, 2)
        assert world.status(cid) == ClusterStatus.provisioning
        fourth = run_step(world.reconciler, third.state, NOW, timeout=TIMEOUT)
    assert fourth.state.phase == "teardown" and fourth.note == "aborted"
    record = world.store.get_cluster(cid)
    assert record is not None and record.error is not None
    assert "RuntimeError: compute API unavailable" in record.error
    last = until_done(world, fourth.state)
    assert world.status(cid) == ClusterStatus.failed and last.state.status == "failed"
    assert world.provider.live(cid) == []


def test_a_loop_past_its_deadline_fails_and_tears_down_the_cluster(world: World) -> None:
    cid = world.create(1)
    state = run_step(world.reconciler, LoopState(cid, deadline=NOW + 5), NOW, timeout=5).state
    assert world.provider.live(cid)
    late = run_step(world.reconciler, state, NOW + 6, timeout=5)
    assert late.state.phase == "teardown" and late.state.deadline == NOW + 11
    record = world.store.get_cluster(cid)
    assert record is not None and "did not converge within 5s" in (record.error or "")
    until_done(world, late.state, NOW + 7)
    assert world.status(cid) == ClusterStatus.failed
    assert world.provider.live(cid) == []


def test_a_ready_clusters_loop_past_its_deadline_just_ends(world: World) -> None:
    cid = world.create(1)
    state = LoopState(cid, deadline=NOW + TIMEOUT, status=ClusterStatus.ready.value)
    outcome = run_step(world.reconciler, state, NOW + TIMEOUT + 1, timeout=TIMEOUT)
    assert outcome.done and outcome.note == "loop timed out on a ready cluster"
    assert world.status(cid) == ClusterStatus.pending  # nothing was done to it


def test_a_teardown_past_its_deadline_gives_up(world: World) -> None:
    cid = world.create(1)
    state = LoopState(cid, phase="teardown", deadline=NOW)
    outcome = run_step(world.reconciler, state, NOW + 1, timeout=TIMEOUT)
    assert outcome.done and outcome.note == "teardown timed out"


def test_a_stop_past_the_loops_deadline_is_torn_down_not_failed(world: World) -> None:
    cid = world.create(1)
    state = run_step(world.reconciler, LoopState(cid, deadline=NOW + 5), NOW, timeout=5).state
    record = world.store.get_cluster(cid)
    assert record is not None
    world.reconciler.request_stop(record, "user")
    stopping = run_step(world.reconciler, state, NOW + 1, timeout=5)
    assert stopping.state.status == "stopping"
    late = run_step(world.reconciler, stopping.state, NOW + 6, timeout=5)
    assert late.state.phase == "teardown" and late.state.deadline == NOW + 11
    until_done(world, late.state, NOW + 7)
    assert world.status(cid) == ClusterStatus.stopped
    record = world.store.get_cluster(cid)
    assert record is not None and record.error is None
