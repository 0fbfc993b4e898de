"""``DynamoDBStore``: the ``Store`` port on the tables of ``items``, written with pynamodb.

Creating a cluster is one ``TransactWriteItems``: the cluster item, the name lock and the
idempotency item, each conditional on not existing yet (an expired idempotency item
counts as not existing). The update that makes a cluster terminal deletes its name lock in
the same transaction; an update that would make a terminal cluster active again is refused.

Expiry: finished clusters expire ``finished_retention`` after their last write;
Idempotency-Keys ``idempotency_ttl`` after the create, and an expired key is treated as
unused even before TTL deletes it; credentials at their own ``expires_at``.

Consistency: single-item reads are strongly consistent; ``list_clusters`` reads a GSI (or
scans) and is eventually consistent: a cluster written a moment ago may be missing or stale.

Software environments are ``EnvironmentRevisions`` (``environments.py``), mixed in.

Table administration (create, delete, names) is in ``tables``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.exceptions import (
    DeleteError,
    PutError,
    TransactWriteError,
    UpdateError,
)
from pynamodb.transactions import TransactWrite

from ....core.models import ClusterRecord, HeartbeatRecord, InstanceCredential
from ....core.ports import (
    FinishedClusterError,
    IdempotencyMismatch,
    NameTakenError,
    StaleRecordError,
)
from .environments import EnvironmentRevisions
from .items import ClusterItem, CredentialItem, M, bind_models, get_item, share_connection
from .usage import UsageRecords
from .users import UserAccounts

_CONDITION_FAILED = "ConditionalCheckFailedException"
_TX_CANCELLED = "TransactionCanceledException"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME_LOCK = "name#"
_IDEMPOTENCY = "idem#"
_CREATE_ATTEMPTS = 8


def _epoch_us(dt: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _failed(e: PutError | UpdateError | DeleteError) -> bool:
    return e.cause_response_code == _CONDITION_FAILED


class DynamoDBStore(EnvironmentRevisions, UserAccounts, UsageRecords):
    """Implements ``billow_control.core.ports.Store`` on DynamoDB tables.

    Constructing one makes no AWS call; the tables must exist (``tables.create_tables``
    in tests, ``infra/aws/tables.yml`` in a deployment).

    Parameters
    ----------
    table_prefix
        Prepended to every table name, e.g. ``"billow-prod-"``.
    region
        AWS region of the tables.
    host
        Endpoint URL (moto or DynamoDB Local in tests); ``None`` for AWS.
    finished_retention
        How long a stopped or failed cluster stays before its TTL expires.
    idempotency_ttl
        How long an Idempotency-Key is remembered; at most ``finished_retention``
        (``ValueError`` otherwise), so a live key never names a deleted cluster.
    max_pool_connections
        HTTP connections of the one botocore client (threads sharing the store).
    clock
        Unix time in seconds, for TTL stamps and Idempotency-Key expiry.
    """

    def __init__(
        self,
        table_prefix: str,
        region: str = "us-east-1",
        host: str | None = None,
        *,
        finished_retention: timedelta = timedelta(days=30),
        idempotency_ttl: timedelta = timedelta(days=1),
        max_pool_connections: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idempotency_ttl > finished_retention:
            raise ValueError("idempotency_ttl must not exceed finished_retention")
        self.table_prefix = table_prefix
        self.models = bind_models(table_prefix, region, host)
        self.connection = share_connection(self.models, region, host, max_pool_connections)
        self.finished_retention = finished_retention
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock

    # -- clusters ------------------------------------------------------------------------

    def _cluster_item(self, record: ClusterRecord, stored_version: int | None) -> ClusterItem:
        item = self.models.cluster(
            record.id,
            owner=record.owner,
            name=record.name,
            created_us=_epoch_us(record.created_at),
            doc=record.model_dump_json(),
        )
        if stored_version is not None:
            item.version = stored_version
        if record.active:
            item.active_owner = record.owner
        else:
            item.expires_at_epoch = math.ceil(
                self.clock() + self.finished_retention.total_seconds()
            )
        return item

    @staticmethod
    def _record(item: ClusterItem) -> ClusterRecord:
        record = ClusterRecord.model_validate_json(item.doc)
        assert item.version is not None
        record.version = int(item.version) - 1
        return record

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Insert the record, its name lock and its idempotency key in one transaction.

        Returns ``(record, True)``, or ``(existing, False)`` for a repeated unexpired key
        with the same ``request_hash``. Raises ``IdempotencyMismatch`` for a repeated key
        with another hash, ``NameTakenError`` when an active cluster of the owner has the
        name, ``ValueError`` unless ``record.version == 0``, and ``StaleRecordError`` when
        DynamoDB kept cancelling the transaction for concurrent writes to the same keys.
        On any error nothing is written.
        """
        if record.version != 0:
            raise ValueError("a new cluster record must have version 0")
        m = self.models
        now = self.clock()
        delay = 0.02
        for _ in range(_CREATE_ATTEMPTS):
            try:
                with TransactWrite(connection=self.connection) as tx:
                    tx.save(
                        self._cluster_item(record, None), condition=m.cluster.id.does_not_exist()
                    )
                    if record.active:
                        lock = m.key(record.owner, _NAME_LOCK + record.name, cluster_id=record.id)
                        tx.save(lock, condition=m.key.key.does_not_exist())
                    if idempotency_key is not None:
                        idem = m.key(
                            record.owner,
                            _IDEMPOTENCY + idempotency_key,
                            cluster_id=record.id,
                            request_hash=request_hash,
                            expires_at_epoch=math.ceil(now + self.idempotency_ttl.total_seconds()),
                        )
                        unused = m.key.key.does_not_exist() | (m.key.expires_at_epoch < int(now))
                        tx.save(idem, condition=unused)
            except TransactWriteError as e:
                if e.cause_response_code != _TX_CANCELLED:
                    raise
                outcome = self._why_create_failed(record, idempotency_key, request_hash)
                if outcome is not None:
                    return outcome
                # Nothing stored blocks us: a concurrent transaction held one of the items
                # (TransactionConflict). Back off and try again.
                time.sleep(delay * (1 + random.random()))
                delay *= 2
                continue
            return record, True
        raise StaleRecordError(f"could not create cluster {record.id}: concurrent writes")

    def _why_create_failed(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool] | None:
        """Explain a cancelled create from what is stored now, or ``None`` if nothing does.

        Checks in the order of ``SqliteStore``: the idempotency key, then the name. Reads
        the name lock before the idempotency item: one transaction writes both, so a lock
        seen first implies that its idempotency item is visible after.
        """
        m = self.models
        lock = self._get(m.key, record.owner, _NAME_LOCK + record.name) if record.active else None
        if idempotency_key is not None:
            idem = self._get(m.key, record.owner, _IDEMPOTENCY + idempotency_key)
            if idem is not None and (idem.expires_at_epoch or 0) >= int(self.clock()):
                if idem.request_hash != request_hash:
                    raise IdempotencyMismatch(idempotency_key)
                existing = self.get_cluster(idem.cluster_id)
                if existing is None:
                    raise RuntimeError(
                        f"Idempotency-Key {idempotency_key!r} names cluster {idem.cluster_id}, "
                        "which is gone"
                    )
                return existing, False
        if lock is not None and lock.cluster_id != record.id:
            raise NameTakenError(record.name)
        mine = self.get_cluster(record.id)
        if mine is not None:  # our own commit, whose response was lost and retried
            return mine, True
        return None

    @staticmethod
    def _get(model: type[M], hash_key: str, range_key: str | None = None) -> M | None:
        return get_item(model, hash_key, range_key)

    def get_cluster(self, cluster_id: str) -> ClusterRecord | None:
        """The stored record (strongly consistent read), or ``None``."""
        item = self._get(self.models.cluster, cluster_id)
        return self._record(item) if item is not None else None

    def list_clusters(
        self, owner: str | None, active_only: bool, name: str | None = None
    ) -> list[ClusterRecord]:
        """Clusters newest first, read from a GSI (eventually consistent).

        ``active_only`` reads the sparse ``active-by-owner`` index only (a Query for one
        owner, a Scan of the index for all), never a finished cluster. Otherwise one
        owner's clusters come from a Query of ``by-owner``; all owners' from a table Scan.
        """
        c = self.models.cluster
        where = (c.name == name) if name is not None else None
        if owner is not None:
            index = c.active_by_owner if active_only else c.by_owner
            items: Any = index.query(owner, filter_condition=where, scan_index_forward=False)
        elif active_only:
            items = c.active_by_owner.scan(filter_condition=where)
        else:
            items = c.scan(filter_condition=where)
        found = [(item.created_us, self._record(item)) for item in items]
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [record for _, record in found]

    def update_cluster(self, record: ClusterRecord) -> ClusterRecord:
        """Write ``record`` if the stored version equals ``record.version``.

        Returns the record with ``version + 1``. Raises ``StaleRecordError`` when the version
        differs or the cluster does not exist, and ``FinishedClusterError`` when ``record``
        is active but the stored cluster is terminal (its name may be taken); in both cases
        nothing is written. The write that makes a cluster terminal also frees its name, in
        one transaction.
        """
        new = record.model_copy(update={"version": record.version + 1})
        item = self._cluster_item(new, stored_version=record.version + 1)
        m = self.models
        if new.active:
            try:
                item.save(condition=m.cluster.active_owner.exists())
            except PutError as e:
                if not _failed(e):
                    raise
                stored = self.get_cluster(record.id)
                if stored is not None and stored.version == record.version:
                    raise FinishedClusterError(
                        f"cluster {record.id} is {stored.status.value}; "
                        "a finished cluster cannot become active again"
                    ) from None
                raise StaleRecordError(record.id) from None
            return new
        lock = m.key(record.owner, _NAME_LOCK + record.name)
        ours = m.key.cluster_id.does_not_exist() | (m.key.cluster_id == record.id)
        try:
            with TransactWrite(connection=self.connection) as tx:
                tx.save(item)
                tx.delete(lock, condition=ours)
        except TransactWriteError as e:
            if e.cause_response_code != _TX_CANCELLED:
                raise
            holder = self._get(m.key, record.owner, _NAME_LOCK + record.name)
            if holder is None or holder.cluster_id == record.id:
                raise StaleRecordError(record.id) from None
            # The name belongs to a newer cluster: this one was terminal already.
            try:
                self._cluster_item(new, stored_version=record.version + 1).save()
            except PutError as e2:
                if not _failed(e2):
                    raise
                raise StaleRecordError(record.id) from None
        return new

    # -- heartbeats, secrets, tokens ------------------------------------------------------

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Overwrite the latest heartbeat (unconditional; separate from the cluster item)."""
        self.models.heartbeat(beat.cluster_id, doc=beat.model_dump_json()).save()

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None:
        item = self._get(self.models.heartbeat, cluster_id)
        return HeartbeatRecord.model_validate_json(item.doc) if item is not None else None

    def get_heartbeats(self, cluster_ids: Sequence[str]) -> dict[str, HeartbeatRecord]:
        """BatchGetItem, 100 keys a request (pynamodb retries unprocessed keys)."""
        items = self.models.heartbeat.batch_get(
            list(dict.fromkeys(cluster_ids)), consistent_read=True
        )
        return {item.cluster_id: HeartbeatRecord.model_validate_json(item.doc) for item in items}

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        """Store (or replace) an already-encrypted blob."""
        self.models.secret(cluster_id, name, value=value).save()

    def get_secret(self, cluster_id: str, name: str) -> bytes | None:
        item = self._get(self.models.secret, cluster_id, name)
        return bytes(item.value) if item is not None else None

    def put_cluster_token(self, cluster_id: str, token_hash: str) -> None:
        """Replace the cluster's heartbeat token hash."""
        self.models.cluster_token(cluster_id, token_hash=token_hash).save()

    def get_cluster_token(self, cluster_id: str) -> str | None:
        item = self._get(self.models.cluster_token, cluster_id)
        return item.token_hash if item is not None else None

    # -- instance credentials ------------------------------------------------------------

    def put_instance_credential(self, cred: InstanceCredential) -> None:
        """Store (or replace) a credential; it expires by TTL at ``cred.expires_at``."""
        expires_us = _epoch_us(cred.expires_at)
        self.models.credential(
            cred.token_hash,
            used=cred.used,
            expires_us=expires_us,
            expires_at_epoch=math.ceil(expires_us / 1_000_000),
            doc=cred.model_dump_json(),
        ).save()

    @staticmethod
    def _credential(item: CredentialItem) -> InstanceCredential:
        cred = InstanceCredential.model_validate_json(item.doc)
        cred.used = bool(item.used)
        return cred

    def peek_instance_credential(self, token_hash: str) -> InstanceCredential | None:
        """The credential as stored (``used`` may be true), or ``None`` if unknown."""
        item = self._get(self.models.credential, token_hash)
        return self._credential(item) if item is not None else None

    def consume_instance_credential(
        self, token_hash: str, now: datetime
    ) -> InstanceCredential | None:
        """Mark the credential used with one conditional update (unused and unexpired at
        ``now``) and return it; ``None`` if unknown, used or expired. Never raises for these."""
        c = self.models.credential
        item = c(token_hash)
        fresh = (c.used == False) & (c.expires_us > _epoch_us(now))  # noqa: E712
        try:
            item.update(actions=[c.used.set(True)], condition=fresh)
        except UpdateError as e:
            if _failed(e):
                return None
            raise
        return self._credential(item)
