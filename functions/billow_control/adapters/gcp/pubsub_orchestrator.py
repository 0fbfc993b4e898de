"""Pub/Sub orchestrator: each cluster is driven by a loop of Pub/Sub messages, one step
(``core.steps.run_step``) per message, with the loop's state in a Firestore document.

Why not a workflow engine? Cloud Workflows would mirror Step Functions, but has no
emulator (its loop could only be tested against Google), bills every step, and would
duplicate the state machine in a second DSL. Cloud Tasks has scheduled delivery and
task-name deduplication, but no emulator either, and a deleted task's name is blocked for
up to an hour (a cluster's second loop would collide). Pub/Sub is already the event bus
and the command channel, its emulator runs on loopback, and its at-least-once delivery
with the subscription's retry/backoff is exactly the "run again after a crash" a loop
needs. What it lacks, a delayed publish and deduplication, the loop document supplies.

The loop document (``<prefix>reconcile-loops/<cluster id>``) holds ``loop`` (its name,
``<cluster id>-v<record version>``), ``seq`` (the next step's number), ``state``
(``running`` or ``done``), ``phase``/``errors``/``deadline``/``status`` (``LoopState``),
``claim``/``claimed_until`` (who runs the step now), ``lease_until`` (when the loop
counts as lost) and ``again`` (a submit arrived while it ran). A message is
``{"cluster_id", "loop", "seq", "not_before"}``.

* ``submit`` starts a loop when none runs (a conditional create or replace, so of twenty
  racing submits one starts it) and publishes step 0; when one runs it sets ``again``,
  so a loop about to end runs one more step (it re-reads the record anyway).
* ``handle`` (one delivery): waits until ``not_before`` (reconcile waits are seconds),
  claims step ``seq`` with a conditional update, runs it, publishes step ``seq + 1``
  with ``not_before = now + wait``, then advances the document to it (or marks it done).
* Duplicates are harmless: a message of another loop or an older step is acknowledged
  and dropped; one of a claimed step, or one published a moment before its step was
  recorded (a crash in between), is refused (HTTP 503 in ``functions/gcp.py``) and
  Pub/Sub redelivers it after the subscription's backoff.
* A crash at any line converges: the message being handled is not acknowledged, so
  Pub/Sub redelivers it; its step's claim expires after ``claim_timeout`` (longer than
  the function's timeout), and the redelivery runs the step again (steps are
  idempotent). A loop whose messages were all lost (a publish that failed after its
  document was written) stops renewing its lease; ``running_clusters`` then omits it
  and the watchdog's resync submits the cluster again.

``crash_point`` is a test seam: it is called with the name of each point between the
writes above (``claimed``, ``stepped``, ``published``, ``advanced``), so a test can kill
the process exactly there.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from google.cloud.firestore_v1 import FieldFilter

from ...core.lifecycle import Lifecycle
from ...core.ports import Store
from ...core.steps import LoopState, run_step
from .firestore.documents import LOST, unchanged

log = logging.getLogger(__name__)

LOOPS = "reconcile-loops"
PUBLISH_TIMEOUT = 30.0


class Busy(Exception):
    """The message cannot be handled now (its step is claimed, or it came early): refuse
    it so Pub/Sub redelivers it after the subscription's backoff."""


class PubSubOrchestrator:
    """Implements ``billow_control.core.ports.Orchestrator`` with Pub/Sub and Firestore.

    Parameters
    ----------
    firestore
        A ``google.cloud.firestore.Client`` (the store's).
    prefix
        Collection prefix of the deployment (the store's).
    publisher
        A ``google.cloud.pubsub_v1.PublisherClient``.
    topic
        The reconcile topic, ``projects/<project>/topics/<name>``.
    store
        Read for the cluster's version.
    loop_timeout
        Bound on a bring-up loop and on a teardown (seconds; the state machine's
        ``TimeoutSeconds``).
    claim_timeout
        How long a claimed step is left to its handler before a redelivery takes it
        over; set it above the reconcile function's timeout.
    max_inline_wait
        The longest ``not_before`` wait a delivery sleeps; an earlier one is refused.
    clock
        Unix time in seconds.
    """

    def __init__(
        self,
        firestore: Any,
        prefix: str,
        publisher: Any,
        topic: str,
        store: Store,
        *,
        loop_timeout: float = 600.0,
        claim_timeout: float = 120.0,
        max_inline_wait: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = firestore
        self.loops = firestore.collection(prefix + LOOPS)
        self.publisher = publisher
        self.topic = topic
        self.store = store
        self.loop_timeout = loop_timeout
        self.claim_timeout = claim_timeout
        self.max_inline_wait = max_inline_wait
        self.clock = clock
        self.crash_point: Callable[[str], None] = lambda point: None

    # -- Orchestrator port ---------------------------------------------------------------

    def submit(self, cluster_id: str) -> None:
        """Start a loop for the cluster unless one runs (then ask it for another step).

        A no-op for an unknown cluster. Raises on infrastructure errors (Firestore or
        Pub/Sub unavailable); the record is written, so the watchdog's resync submits
        the cluster again once the loop's lease has lapsed.
        """
        record = self.store.get_cluster(cluster_id)
        if record is None:
            return
        ref = self.loops.document(cluster_id)
        for _ in range(20):
            now, snap = self.clock(), ref.get()
            doc = snap.to_dict() if snap.exists else {}
            try:
                if doc.get("state") == "running" and doc.get("lease_until", 0) > now:
                    if not doc.get("again"):
                        ref.update({"again": True}, option=unchanged(self.client, snap))
                    return
                name = f"{cluster_id}-v{record.version}"
                if doc.get("loop", "").startswith(name):
                    name = f"{name}-r{int(now * 1000)}"
                fresh = {
                    "loop": name,
                    "seq": 0,
                    "state": "running",
                    "phase": "reconcile",
                    "errors": 0,
                    "status": record.status.value,
                    "deadline": now + self.loop_timeout,
                    "started_at": now,
                    "lease_until": now + self.claim_timeout,
                    "claim": None,
                    "claimed_until": 0.0,
                    "again": False,
                }
                if snap.exists:
                    ref.update(fresh, option=unchanged(self.client, snap))
                else:
                    ref.create(fresh)
            except LOST:
                continue  # a racer started (or touched) the loop: look again
            log.info("started reconcile loop %s", name)
            self._publish(cluster_id, name, 0, 0.0)
            return

    def running_clusters(self) -> set[str]:
        """Clusters whose loop runs and renewed its lease: one query of running loops
        (their number grows with clusters changing now, not with history)."""
        now = self.clock()
        query = self.loops.where(filter=FieldFilter("state", "==", "running"))
        return {s.id for s in query.stream() if s.get("lease_until") > now}

    # -- one delivery ----------------------------------------------------------------------

    def handle(self, message: dict[str, Any], lifecycle: Lifecycle) -> str:
        """Handle one reconcile message; returns what happened (``stale``, ``stepped``,
        ``done``). Raises ``Busy`` to have it redelivered later, and infrastructure
        errors (the delivery is then retried too)."""
        cluster_id, loop = str(message["cluster_id"]), str(message["loop"])
        seq = int(message["seq"])
        early = float(message.get("not_before") or 0.0) - self.clock()
        if early > self.max_inline_wait:
            raise Busy(f"step {seq} of {loop} is due in {early:.0f}s")
        if early > 0:
            time.sleep(early)
        ref = self.loops.document(cluster_id)
        claim = uuid.uuid4().hex
        claimed = self._claim(ref, loop, seq, claim)
        if claimed is None:
            return "stale"
        self.crash_point("claimed")
        outcome = run_step(lifecycle, claimed, self.clock(), timeout=self.loop_timeout)
        self.crash_point("stepped")
        published = False
        for _ in range(20):
            now, snap = self.clock(), ref.get()
            doc = snap.to_dict() if snap.exists else {}
            if doc.get("loop") != loop or doc.get("seq") != seq or doc.get("claim") != claim:
                log.warning("step %d of %s was taken over; dropping its result", seq, loop)
                return "stale"
            done = outcome.done and not doc.get("again")
            fields: dict[str, Any] = {**_state_fields(outcome.state), "claim": None}
            fields["claimed_until"] = 0.0
            if done:
                fields.update(state="done", finished_at=now, note=outcome.note)
            else:
                wait = outcome.wait if outcome.done is False else 0.0
                if not published:
                    self._publish(cluster_id, loop, seq + 1, now + wait)
                    published = True
                    self.crash_point("published")
                fields.update(seq=seq + 1, again=False, lease_until=now + wait + self.claim_timeout)
            try:
                ref.update(fields, option=unchanged(self.client, snap))
            except LOST:
                continue  # a submit set ``again`` meanwhile: decide again
            self.crash_point("advanced")
            return "done" if done else "stepped"
        raise Busy(f"could not record step {seq} of {loop}: concurrent writes")

    def _claim(self, ref: Any, loop: str, seq: int, claim: str) -> LoopState | None:
        """Claim step ``seq`` of ``loop``: its state, or ``None`` for a stale message.
        Raises ``Busy`` when another delivery holds the step or the step is not due."""
        for _ in range(20):
            now, snap = self.clock(), ref.get()
            doc = snap.to_dict() if snap.exists else {}
            if doc.get("loop") != loop or doc.get("state") != "running" or doc["seq"] > seq:
                log.info(
                    "dropping step %d of %s: the loop is %s at step %s (%s)",
                    seq,
                    loop,
                    doc.get("loop"),
                    doc.get("seq"),
                    doc.get("state"),
                )
                return None
            if doc["seq"] < seq:
                raise Busy(f"step {seq} of {loop} came before step {doc['seq']} was recorded")
            if doc.get("claim") and doc.get("claimed_until", 0) > now:
                raise Busy(f"step {seq} of {loop} is being run by another delivery")
            until = now + self.claim_timeout
            try:
                ref.update(
                    {"claim": claim, "claimed_until": until, "lease_until": until, "again": False},
                    option=unchanged(self.client, snap),
                )
            except LOST:
                continue
            return LoopState(
                cluster_id=ref.id,
                phase=doc.get("phase", "reconcile"),
                errors=int(doc.get("errors", 0)),
                deadline=float(doc.get("deadline", 0.0)),
                status=doc.get("status"),
            )
        raise Busy(f"could not claim step {seq} of {loop}: concurrent writes")

    def _publish(self, cluster_id: str, loop: str, seq: int, not_before: float) -> None:
        data = {"cluster_id": cluster_id, "loop": loop, "seq": seq, "not_before": not_before}
        future = self.publisher.publish(
            self.topic, json.dumps(data).encode(), cluster_id=cluster_id
        )
        future.result(timeout=PUBLISH_TIMEOUT)


def _state_fields(state: LoopState) -> dict[str, Any]:
    return {
        "phase": state.phase,
        "errors": state.errors,
        "deadline": state.deadline,
        "status": state.status,
    }
