from __future__ import annotations

import threading
import time

import pytest

from billow_control.adapters.local.thread_orchestrator import LocalOrchestrator
from billow_control.core.models import ClusterStatus, ReconcileResult

pytestmark = pytest.mark.unit


def test_runs_until_done_never_concurrently_and_retries_errors() -> None:
    calls: dict[str, int] = {}
    active: set[str] = set()
    overlap = threading.Event()
    finished = threading.Event()
    lock = threading.Lock()

    def reconcile(cluster_id: str) -> ReconcileResult:
        with lock:
            if cluster_id in active:
                overlap.set()
            active.add(cluster_id)
            calls[cluster_id] = calls.get(cluster_id, 0) + 1
            n = calls[cluster_id]
        time.sleep(0.01)
        with lock:
            active.discard(cluster_id)
        if cluster_id == "flaky" and n == 1:
            raise RuntimeError("provider hiccup")
        done = n >= 3
        if done and cluster_id == "a":
            finished.set()
        return ReconcileResult(done=done, wait=0.01, status=ClusterStatus.provisioning)

    orchestrator = LocalOrchestrator(reconcile, threads=4)
    orchestrator.submit("a")
    orchestrator.submit("flaky")
    assert orchestrator.running_clusters() == {"a", "flaky"}
    orchestrator.start()
    for _ in range(10):
        orchestrator.submit("a")
    assert finished.wait(5)
    deadline = time.monotonic() + 5
    while not orchestrator.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    orchestrator.stop()
    assert orchestrator.idle() and orchestrator.running_clusters() == set()
    assert not overlap.is_set()
    assert calls["flaky"] >= 3  # the error was retried, then it converged
