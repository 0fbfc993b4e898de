"""``FirestoreStore``: the ``Store`` port on the collections of ``documents``.

Creating a cluster is one conditional commit: the cluster document, the name lock and
the idempotency key, each created (or, for an expired key, replaced unchanged since
read). The update that makes a cluster terminal deletes its name lock in the same commit;
an update that would make a terminal cluster active again is refused. Every cluster
update is conditional on the document's ``update_time`` as read with the version checked.

Expiry (TTL policies on ``expires_at``, see ``infra/gcp``): finished clusters
``finished_retention`` after their last write, Idempotency-Keys ``idempotency_ttl`` after
the create (an expired key counts as unused before TTL deletes it), credentials at their
own ``expires_at``.

Consistency: document reads and queries are strongly consistent in Firestore.
``list_clusters`` runs equality queries on ``owner``, ``active`` and ``name``; with
``active_only`` the ``active`` index returns active clusters only, so the reaper never
reads a finished one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from ....core.models import ClusterRecord, HeartbeatRecord, InstanceCredential
from ....core.ports import (
    FinishedClusterError,
    IdempotencyMismatch,
    NameTakenError,
    StaleRecordError,
)
from .accounts import UserAccounts
from .documents import (
    CLUSTER_TOKENS,
    CLUSTERS,
    CREDENTIALS,
    HEARTBEATS,
    KEYS,
    LOST,
    SECRETS,
    Collections,
    at,
    epoch_us,
    optimistic,
    unchanged,
)
from .environments import EnvironmentRevisions
from .usage import UsageRecords

_CREATE_ATTEMPTS = 25


class FirestoreStore(EnvironmentRevisions, UserAccounts, UsageRecords):
    """Implements ``billow_control.core.ports.Store`` on Firestore (native mode).

    Constructing one makes no call. Indexes and TTL policies come from ``infra/gcp``; the
    emulator needs none.

    Parameters
    ----------
    project
        Google Cloud project of the database (any id on the emulator).
    prefix
        Prepended to every collection name, e.g. ``"billow-prod-"``.
    database
        The Firestore database id.
    client
        A ``google.cloud.firestore.Client`` to use instead of building one.
    finished_retention, idempotency_ttl, clock
        As ``DynamoDBStore``: how long finished clusters and Idempotency-Keys live, and
        Unix time in seconds.
    """

    def __init__(
        self,
        project: str,
        prefix: str = "billow-",
        *,
        database: str = "(default)",
        client: Any = None,
        finished_retention: timedelta = timedelta(days=30),
        idempotency_ttl: timedelta = timedelta(days=1),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idempotency_ttl > finished_retention:
            raise ValueError("idempotency_ttl must not exceed finished_retention")
        self.client = client or firestore.Client(project=project, database=database)
        self.col = Collections(self.client, prefix)
        self.prefix = prefix
        self.finished_retention = finished_retention
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock

    # -- clusters ------------------------------------------------------------------------

    def _fields(self, record: ClusterRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "owner": record.owner,
            "name": record.name,
            "version": record.version,
            "created_us": epoch_us(record.created_at),
            "active": record.active,
            "doc": record.model_dump_json(),
            "expires_at": firestore.DELETE_FIELD,
        }
        if not record.active:
            fields["expires_at"] = at(self.clock() + self.finished_retention.total_seconds())
        return fields

    def cluster_document(self, record: ClusterRecord) -> dict[str, Any]:
        """The document of a newly written ``record`` (bulk loads in tests, benchmarks)."""
        fields = self._fields(record)
        if record.active:
            del fields["expires_at"]
        return fields

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Create the cluster, its name lock and its idempotency key in one conditional
        commit; on a lost commit re-read and decide again (see ``SqliteStore`` for the
        order: the key first, then the name)."""
        owner = record.owner
        lock_ref = self.col.doc(KEYS, "name", owner, record.name)
        idem_ref = self.col.doc(KEYS, "idem", owner, idempotency_key or "")
        cluster_ref = self.col.doc(CLUSTERS, record.id)

        def attempt() -> tuple[ClusterRecord, bool] | None:
            now = self.clock()
            refs = [lock_ref, cluster_ref] + ([idem_ref] if idempotency_key else [])
            snaps = {s.reference.path: s for s in self.client.get_all(refs)}
            lock, mine = snaps[lock_ref.path], snaps[cluster_ref.path]
            idem: Any = snaps.get(idem_ref.path)
            if mine.exists:  # our own commit, whose response was lost and retried
                return self._record(mine), True
            batch = self.client.batch()
            live = idem is not None and idem.exists
            if live and idem.get("expires_at").timestamp() >= int(now):
                if idem.get("request_hash") != request_hash:
                    raise IdempotencyMismatch(idempotency_key)
                existing = self.get_cluster(idem.get("cluster_id"))
                if existing is None:
                    raise RuntimeError(
                        f"Idempotency-Key {idempotency_key!r} names cluster "
                        f"{idem.get('cluster_id')}, which is gone"
                    )
                return existing, False
            if record.active and lock.exists:
                raise NameTakenError(record.name)
            batch.create(cluster_ref, self.cluster_document(record))
            if record.active:
                batch.create(lock_ref, {"cluster_id": record.id})
            if idem is not None:
                key = {
                    "cluster_id": record.id,
                    "request_hash": request_hash,
                    "expires_at": at(math.ceil(now + self.idempotency_ttl.total_seconds())),
                }
                if idem.exists:
                    batch.update(idem_ref, key, option=unchanged(self.client, idem))
                else:
                    batch.create(idem_ref, key)
            try:
                batch.commit()
            except LOST:
                return None
            return record, True

        return optimistic(attempt, _CREATE_ATTEMPTS, f"cluster {record.id}")

    @staticmethod
    def _record(snapshot: Any) -> ClusterRecord:
        return ClusterRecord.model_validate_json(snapshot.get("doc"))

    def get_cluster(self, cluster_id: str) -> ClusterRecord | None:
        snap = self.col.doc(CLUSTERS, cluster_id).get()
        return self._record(snap) if snap.exists else None

    def cluster_query(self, owner: str | None, active_only: bool, name: str | None) -> Any:
        """The equality query ``list_clusters`` runs (no ordering: no composite index)."""
        query: Any = self.col(CLUSTERS)
        for field, value in (("owner", owner), ("name", name)):
            if value is not None:
                query = query.where(filter=FieldFilter(field, "==", value))
        if active_only:
            query = query.where(filter=FieldFilter("active", "==", True))
        return query

    def list_clusters(
        self, owner: str | None, active_only: bool, name: str | None = None
    ) -> list[ClusterRecord]:
        """Matching clusters newest first, from one query (sorted here, so the query
        needs single-field indexes only)."""
        snaps = self.cluster_query(owner, active_only, name).stream()
        found = [(s.get("created_us"), self._record(s)) for s in snaps]
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [record for _, record in found]

    def update_cluster(self, record: ClusterRecord) -> ClusterRecord:
        """Write ``record`` if the stored version equals ``record.version``, in one commit
        conditional on the document read; a write making it terminal also deletes its
        name lock (if still its own). Raises ``StaleRecordError`` (nothing written) when
        the version differs, the cluster is unknown or the document changed before the
        commit, and ``FinishedClusterError`` when an active ``record`` would revive a
        terminal cluster."""
        new = record.model_copy(update={"version": record.version + 1})
        ref = self.col.doc(CLUSTERS, record.id)
        snap = ref.get()
        if not snap.exists or snap.get("version") != record.version:
            raise StaleRecordError(record.id)
        stored_active = bool(snap.get("active"))
        if new.active and not stored_active:
            status = self._record(snap).status.value
            raise FinishedClusterError(
                f"cluster {record.id} is {status}; a finished cluster cannot become active again"
            )
        batch = self.client.batch()
        batch.update(ref, self._fields(new), option=unchanged(self.client, snap))
        if stored_active and not new.active:
            lock_ref = self.col.doc(KEYS, "name", record.owner, record.name)
            lock = lock_ref.get()
            if lock.exists and lock.get("cluster_id") == record.id:
                batch.delete(lock_ref, option=unchanged(self.client, lock))
        try:
            batch.commit()
        except LOST:
            raise StaleRecordError(record.id) from None
        return new

    # -- heartbeats, secrets, tokens ------------------------------------------------------

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Overwrite the latest heartbeat (its own document: never conflicts)."""
        self.col.doc(HEARTBEATS, beat.cluster_id).set({"doc": beat.model_dump_json()})

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None:
        snap = self.col.doc(HEARTBEATS, cluster_id).get()
        return HeartbeatRecord.model_validate_json(snap.get("doc")) if snap.exists else None

    def get_heartbeats(self, cluster_ids: Sequence[str]) -> dict[str, HeartbeatRecord]:
        """One ``BatchGetDocuments`` for them all (``get_all``)."""
        refs = [self.col.doc(HEARTBEATS, cid) for cid in dict.fromkeys(cluster_ids)]
        if not refs:
            return {}
        return {
            snap.id: HeartbeatRecord.model_validate_json(snap.get("doc"))
            for snap in self.client.get_all(refs)
            if snap.exists
        }

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        self.col.doc(SECRETS, cluster_id, name).set({"cluster_id": cluster_id, "value": value})

    def get_secret(self, cluster_id: str, name: str) -> bytes | None:
        snap = self.col.doc(SECRETS, cluster_id, name).get()
        return bytes(snap.get("value")) if snap.exists else None

    def put_cluster_token(self, cluster_id: str, token_hash: str) -> None:
        self.col.doc(CLUSTER_TOKENS, cluster_id).set({"token_hash": token_hash})

    def get_cluster_token(self, cluster_id: str) -> str | None:
        snap = self.col.doc(CLUSTER_TOKENS, cluster_id).get()
        return str(snap.get("token_hash")) if snap.exists else None

    # -- instance credentials ------------------------------------------------------------

    def put_instance_credential(self, cred: InstanceCredential) -> None:
        """Store (or replace) a credential; TTL deletes it after ``cred.expires_at``."""
        self.col.doc(CREDENTIALS, cred.token_hash).set(
            {"doc": cred.model_dump_json(), "used": cred.used, "expires_at": cred.expires_at}
        )

    @staticmethod
    def _credential(snapshot: Any) -> InstanceCredential:
        cred = InstanceCredential.model_validate_json(snapshot.get("doc"))
        cred.used = bool(snapshot.get("used"))
        return cred

    def peek_instance_credential(self, token_hash: str) -> InstanceCredential | None:
        snap = self.col.doc(CREDENTIALS, token_hash).get()
        return self._credential(snap) if snap.exists else None

    def consume_instance_credential(
        self, token_hash: str, now: datetime
    ) -> InstanceCredential | None:
        """Mark the credential used with an update conditional on the unused document
        read; ``None`` if unknown, used or expired at ``now`` (also when a concurrent
        consumer won). Never raises for these."""
        ref = self.col.doc(CREDENTIALS, token_hash)
        snap = ref.get()
        if not snap.exists:
            return None
        cred = self._credential(snap)
        if cred.used or cred.expired(now):
            return None
        try:
            ref.update({"used": True}, option=unchanged(self.client, snap))
        except LOST:
            return None  # changed since read: only a consume changes it
        return cred.model_copy(update={"used": True})
