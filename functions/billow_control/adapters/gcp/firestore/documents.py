"""The store's Firestore collections, document ids, and the optimistic commit they share.

Every collection is named ``prefix`` + suffix (a prefix such as ``"billow-prod-"``), so
several deployments (or tests) can share one database. ``infra/gcp/firestore.indexes.json``
declares the indexes and ``infra/gcp/deploy.sh`` the TTL policies on ``expires_at``.

==========================  ===============================  ==================================
collection (suffix)         document id                      holds
==========================  ===============================  ==================================
``clusters``                cluster id                       ``doc`` (the record as JSON) plus
                                                             ``owner``, ``name``, ``version``,
                                                             ``created_us``, ``active`` and,
                                                             once finished, ``expires_at``
``cluster-keys``            ``name:<owner>:<name>``          the lock keeping active names
                                                             unique per owner (``cluster_id``)
                            ``idem:<owner>:<key>``           an Idempotency-Key
                                                             (``cluster_id``, ``request_hash``,
                                                             ``expires_at``)
``heartbeats``              cluster id                       the latest heartbeat (``doc``)
``secrets``                 ``<cluster id>:<name>``          an encrypted blob (``value``)
``users``                   user id                          ``doc``
``user-names``              user name                        the lock keeping user names
                                                             unique (``user_id``)
``api-tokens``              token hash                       ``user_id``
``cluster-tokens``          cluster id                       ``token_hash``
``instance-credentials``    token hash                       ``doc``, ``used``, ``expires_at``
``environment-heads``       ``<owner>:<name>``               the latest revision (``revision``,
                                                             ``doc``) of a named environment
``environment-revisions``   ``<owner>:<name>:<revision>``    every revision (immutable)
``usage``                   instance id                      ``doc`` (a ``UsageRecord``),
                                                             ``open``, ``ended_us``
``usage-months``            ``YYYY-MM``                      the mark of a closed month
==========================  ===============================  ==================================

Id parts are percent-encoded (``quote(part, safe="")``), so no user-chosen name or key
can contain the ``:`` separator or a ``/``.

Concurrency: a transition is one atomic commit (a ``WriteBatch``) whose every write is
conditioned on what was read: ``create`` (the document must not exist) or an update or
delete with ``last_update_time`` equal to the read's. That is an optimistic transaction,
the same contract as DynamoDB's ``TransactWriteItems`` with conditions. Firestore's own
read-write transactions lock pessimistically: twenty writers of one document took 18.6 s
on the emulator (each attempt waits out a lock), against 0.8 s for these commits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from google.api_core import exceptions as gexc

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CLUSTERS = "clusters"
KEYS = "cluster-keys"
HEARTBEATS = "heartbeats"
SECRETS = "secrets"
USERS = "users"
USER_NAMES = "user-names"
API_TOKENS = "api-tokens"
TEAMS = "teams"
CLUSTER_TOKENS = "cluster-tokens"
CREDENTIALS = "instance-credentials"
ENV_HEADS = "environment-heads"
ENV_REVISIONS = "environment-revisions"
USAGE = "usage"
USAGE_MONTHS = "usage-months"
COLLECTIONS = (
    CLUSTERS,
    KEYS,
    HEARTBEATS,
    SECRETS,
    USERS,
    USER_NAMES,
    API_TOKENS,
    TEAMS,
    CLUSTER_TOKENS,
    CREDENTIALS,
    ENV_HEADS,
    ENV_REVISIONS,
    USAGE,
    USAGE_MONTHS,
)
# What a conditional commit raises when a condition failed: the document exists
# (create), changed or vanished (``last_update_time``).
LOST = (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound, gexc.Conflict)


def doc_id(*parts: str) -> str:
    """One document id from ``parts``, each percent-encoded, joined by ``:``."""
    return ":".join(quote(part, safe="") for part in parts)


def epoch_us(dt: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def at(seconds: float) -> datetime:
    """Unix ``seconds`` as an aware UTC datetime (a Firestore timestamp)."""
    return datetime.fromtimestamp(seconds, UTC)


def unchanged(client: Any, snapshot: Any) -> Any:
    """The write option: the document is as ``snapshot`` read it."""
    return client.write_option(last_update_time=snapshot.update_time)


class Collections:
    """The bound ``CollectionReference`` of each suffix of one store."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def __call__(self, suffix: str) -> Any:
        return self.client.collection(self.prefix + suffix)

    def doc(self, suffix: str, *parts: str) -> Any:
        return self(suffix).document(doc_id(*parts))

    def names(self) -> list[str]:
        return [self.prefix + suffix for suffix in COLLECTIONS]


def optimistic(attempt: Callable[[], _T | None], attempts: int, what: str) -> _T:
    """Run ``attempt`` until it returns a value, backing off with jitter after each
    ``None`` (a lost conditional commit). Raises ``StaleRecordError`` naming ``what``
    after ``attempts`` lost rounds."""
    from ....core.ports import StaleRecordError

    delay = 0.01
    for _ in range(attempts):
        result = attempt()
        if result is not None:
            return result
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.5)
    raise StaleRecordError(f"could not write {what}: concurrent writes")
