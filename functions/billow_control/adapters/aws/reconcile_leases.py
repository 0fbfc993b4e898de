"""The lease that makes one Step Functions loop drive a cluster at a time: one item per
cluster in the ``<prefix>reconcile-loops`` table (``dynamodb.items.LoopItem``).

An item is ``{cluster_id, loop, until, again?, stepped?, expires_at_epoch}``. A lease is
*live* while ``until`` is in the future; every write below is one conditional DynamoDB
request, so racing callers (twenty submits, two executions of one loop) agree without a
read-modify-write:

* ``acquire``: put, only when no live lease exists (none, or ``until < now``).
* ``ask_again``: set ``again`` on a live lease whose loop has taken a step. A lease
  whose loop has not stepped yet needs nothing: its first step reads the record after
  the caller wrote it.
* ``renew``: ``until = now + lease_seconds`` and ``stepped``, only while ``loop`` holds it
  (lapsed or not: nobody else took it over).
* ``hand_over``: give ``loop``'s lease to a successor loop (an execution near its
  5 minutes starts the next one), only while ``loop`` holds it.
* ``finish``: delete when ``loop`` holds it and ``again`` is unset; when ``again`` is set,
  clear it instead and say "one more step".
* ``release``: delete when ``loop`` holds it (a loop that never started).
* ``live``: the clusters with a live lease, one consistent Scan. Bounded: released loops
  are deleted, so the table holds the loops running now plus lapsed ones that nobody took
  over yet (TTL removes those a day after they lapsed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pynamodb.exceptions import PynamoDBException
from pynamodb.expressions.update import Action

from .dynamodb.items import LoopItem

LEASE_SECONDS = 330.0  # above Express's 5-minute cap on an execution
FORGET_AFTER = 86400.0  # TTL of a lapsed lease nobody took over

_CONDITION_FAILED = "ConditionalCheckFailedException"


def _forget(until: float) -> int:
    """The TTL epoch of a lease live until ``until``: a day after it lapses."""
    return int(until + FORGET_AFTER)


def _lost(e: PynamoDBException) -> bool:
    """Whether a write failed on its condition (anything else is an infrastructure error)."""
    return getattr(e, "cause_response_code", None) == _CONDITION_FAILED


class LoopLeases:
    """The leases of one deployment's loops.

    Parameters
    ----------
    model
        ``LoopItem`` bound to the deployment's ``reconcile-loops`` table
        (``DynamoDBStore.models.loop``).
    lease_seconds
        How long a step's renewal keeps the lease: longer than the longest gap between
        two steps of a live loop (a reconcile with its retries plus a Wait), so that only
        a dead loop's lease lapses.
    clock
        Unix time in seconds.

    Every method raises pynamodb's ``PynamoDBException`` on an infrastructure error; a
    lost condition is an answer, never an exception.
    """

    def __init__(
        self,
        model: type[LoopItem],
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.lease_seconds = lease_seconds
        self.clock = clock

    def acquire(self, cluster_id: str, loop: str) -> bool:
        """Take the cluster's lease for ``loop``; ``False`` when a live lease exists."""
        m, now = self.model, self.clock()
        item = m(cluster_id, loop=loop, until=now + self.lease_seconds)
        item.expires_at_epoch = _forget(now + self.lease_seconds)
        try:
            item.save(condition=m.cluster_id.does_not_exist() | (m.until < now))
        except PynamoDBException as e:
            if _lost(e):
                return False
            raise
        return True

    def ask_again(self, cluster_id: str) -> bool | None:
        """Ask the live loop for one more step after it reports done.

        ``True``: asked. ``None``: a live loop has not stepped yet, nothing to ask.
        ``False``: no live lease (the caller starts a loop).
        """
        m, now = self.model, self.clock()
        condition = (m.until >= now) & m.stepped.exists()
        try:
            m(cluster_id).update(actions=[m.again.set(True)], condition=condition)
            return True
        except PynamoDBException as e:
            if not _lost(e):
                raise
        try:
            current = m.get(cluster_id, consistent_read=True)
        except m.DoesNotExist:
            return False
        return None if current.until >= now else False

    def renew(self, cluster_id: str, loop: str) -> bool:
        """Extend ``loop``'s lease from now; ``False`` when another loop holds it."""
        m, until = self.model, self.clock() + self.lease_seconds
        return self._update_held(
            cluster_id,
            loop,
            [m.until.set(until), m.stepped.set(True), m.expires_at_epoch.set(_forget(until))],
        )

    def hand_over(self, cluster_id: str, loop: str, successor: str) -> bool:
        """Give ``loop``'s lease to ``successor`` (a fresh, live lease that has not
        stepped); ``False`` when ``loop`` does not hold it."""
        m, until = self.model, self.clock() + self.lease_seconds
        return self._update_held(
            cluster_id,
            loop,
            [
                m.loop.set(successor),
                m.until.set(until),
                m.expires_at_epoch.set(_forget(until)),
                m.again.remove(),
                m.stepped.remove(),
            ],
        )

    def _update_held(self, cluster_id: str, loop: str, actions: list[Action]) -> bool:
        """Apply ``actions`` to the lease while ``loop`` holds it; ``False`` if not."""
        m = self.model
        try:
            m(cluster_id).update(actions=actions, condition=m.loop == loop)
        except PynamoDBException as e:
            if _lost(e):
                return False
            raise
        return True

    def finish(self, cluster_id: str, loop: str) -> bool:
        """``loop`` reported done: ``True`` when it should end (its lease is deleted, or
        another loop holds it); ``False`` when ``again`` was set: it is cleared, and the
        loop runs one more step."""
        m = self.model
        try:
            m(cluster_id).delete(condition=(m.loop == loop) & (m.again.does_not_exist()))
            return True
        except PynamoDBException as e:
            if not _lost(e):
                raise
        try:
            m(cluster_id).update(actions=[m.again.remove()], condition=m.loop == loop)
            return False
        except PynamoDBException as e:
            if _lost(e):
                return True  # another loop took over (or the lease is gone)
            raise

    def release(self, cluster_id: str, loop: str) -> None:
        """Delete ``loop``'s lease, if it still holds it (its execution never started)."""
        m = self.model
        try:
            m(cluster_id).delete(condition=m.loop == loop)
        except PynamoDBException as e:
            if not _lost(e):
                raise

    def live(self) -> set[str]:
        """Ids of the clusters whose lease is live (see the module docstring on the Scan)."""
        m, now = self.model, self.clock()
        found = m.scan(m.until >= now, consistent_read=True, attributes_to_get=["cluster_id"])
        return {item.cluster_id for item in found}

    def get(self, cluster_id: str) -> Any:
        """The cluster's lease item, or ``None`` (tests and diagnostics)."""
        try:
            return self.model.get(cluster_id, consistent_read=True)
        except self.model.DoesNotExist:
            return None
