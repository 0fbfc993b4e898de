"""Local orchestrator: drives ``reconcile`` from a small pool of threads.

Each submitted cluster is reconciled until it reports ``done``; a cluster is never
reconciled by two threads at once, and a submit while it runs schedules a prompt re-run.
Errors are retried with exponential backoff. After a restart, the embedded runtime's
watchdog pass resubmits every unfinished cluster, so work picks up where the last process
stopped.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from ...core.models import ReconcileResult

log = logging.getLogger(__name__)


class LocalOrchestrator:
    """Implements ``billow_control.core.ports.Orchestrator`` with threads."""

    def __init__(
        self,
        reconcile: Callable[[str], ReconcileResult] | None = None,
        threads: int = 4,
        max_backoff: float = 10.0,
    ) -> None:
        self.reconcile = reconcile
        self.threads = threads
        self.max_backoff = max_backoff
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, str]] = []
        self._seq = 0
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._stopping = False
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the reconcile threads (clusters submitted before are picked up)."""
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"billow-reconcile-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))

    def submit(self, cluster_id: str) -> None:
        self._schedule(cluster_id, 0.0)

    def running_clusters(self) -> set[str]:
        """Clusters queued or being reconciled right now."""
        with self._cond:
            return {e[2] for e in self._queue} | self._running

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._running

    def _schedule(self, cluster_id: str, delay: float) -> None:
        with self._cond:
            if cluster_id in self._running:
                if delay == 0.0:
                    self._again.add(cluster_id)
                return
            self._seq += 1
            heapq.heappush(self._queue, (time.monotonic() + delay, self._seq, cluster_id))
            self._cond.notify()

    def _next(self) -> str | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                # Drop queue entries of clusters already running or queued earlier.
                if self._queue and self._queue[0][0] <= now:
                    _, _, cluster_id = heapq.heappop(self._queue)
                    if cluster_id in self._running:
                        self._again.add(cluster_id)
                        continue
                    self._queue = [e for e in self._queue if e[2] != cluster_id]
                    heapq.heapify(self._queue)
                    self._running.add(cluster_id)
                    return cluster_id
                timeout = self._queue[0][0] - now if self._queue else None
                self._cond.wait(timeout)
            return None

    def _run(self) -> None:
        assert self.reconcile is not None, "LocalOrchestrator needs a reconcile function"
        while (cluster_id := self._next()) is not None:
            delay: float | None
            try:
                result = self.reconcile(cluster_id)
                self._failures.pop(cluster_id, None)
                delay = None if result.done else result.wait
            except Exception:
                n = self._failures[cluster_id] = self._failures.get(cluster_id, 0) + 1
                delay = min(self.max_backoff, 0.2 * 2**n)
                log.exception(
                    "reconcile of %s failed (attempt %d); retry in %.1fs", cluster_id, n, delay
                )
            with self._cond:
                self._running.discard(cluster_id)
                again = cluster_id in self._again
                self._again.discard(cluster_id)
            if again:
                self._schedule(cluster_id, 0.0)
            elif delay is not None:
                self._schedule(cluster_id, delay)
