"""DynamoDB store for the AWS runtime, written with pynamodb.

Implements ``billow_control.core.ports.Store``. Every table is named ``table_prefix`` +
suffix (pass a prefix such as ``"billow-prod-"``); all use on-demand billing.

==========================  ==============================  ===================================
table (suffix)              key                             holds
==========================  ==============================  ===================================
``clusters``                ``id``                          one item per cluster (see below)
``cluster-keys``            ``owner`` + ``key``             ``name#<name>``: the lock that keeps
                                                            active names unique per owner;
                                                            ``idem#<key>``: an Idempotency-Key
``heartbeats``              ``cluster_id``                  the latest heartbeat (overwritten)
``secrets``                 ``cluster_id`` + ``name``       encrypted blobs (binary)
``users``                   ``id``                          users
``api-tokens``              ``token_hash``                  ``user_id`` of an API token
``cluster-tokens``          ``cluster_id``                  the cluster's heartbeat token hash
``instance-credentials``    ``token_hash``                  one-time bootstrap tokens
==========================  ==============================  ===================================

A cluster item keeps the whole ``ClusterRecord`` as JSON in ``doc``, plus the attributes
that conditions and indexes need:

* ``version``: a pynamodb ``VersionAttribute`` holding ``ClusterRecord.version + 1``
  (pynamodb writes 1 on the first save). Every write is conditional on it.
* ``owner`` + ``created_us`` (creation time in microseconds since the epoch): the GSI
  ``by-owner``, for all clusters of one owner, newest first.
* ``active_owner``: present only while the cluster is active (not stopped or failed),
  removed in the write that makes it terminal. The GSI ``active-by-owner``
  (``active_owner`` + ``created_us``) is therefore sparse: it holds active clusters only,
  so listing active clusters, of one owner (Query) or of everyone (Scan of the index),
  never reads a finished one.

Creating a cluster is one ``TransactWriteItems``: the cluster item, the name lock and the
idempotency item, each conditional on not existing yet. The update that makes a cluster
terminal deletes its name lock in the same transaction.

Time to live: finished cluster items, idempotency items and instance credentials carry
``expires_at_epoch`` (Number, Unix seconds). This module only writes the attribute;
enabling TTL on it for the ``clusters``, ``cluster-keys`` and ``instance-credentials``
tables belongs to ``serverless.yml``. Finished clusters expire ``finished_retention``
after their last write; Idempotency-Keys ``idempotency_ttl`` after the
create (an expired key is treated as unused even before TTL deletes it); credentials at
their own ``expires_at``. Heartbeats, secrets and tokens of finished clusters do not expire.

Consistency: single-item reads are strongly consistent; ``list_clusters`` reads a GSI (or
scans) and is eventually consistent: a cluster written a moment ago may be missing or stale.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.connection import Connection
from pynamodb.exceptions import (
    DoesNotExist,
    PutError,
    TransactWriteError,
    UpdateError,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from ...core.models import ClusterRecord, HeartbeatRecord, InstanceCredential, User
from ...core.ports import IdempotencyMismatch, NameTakenError, StaleRecordError

PAY_PER_REQUEST = "PAY_PER_REQUEST"
_CONDITION_FAILED = "ConditionalCheckFailedException"
_TX_CANCELLED = "TransactionCanceledException"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME_LOCK = "name#"
_IDEMPOTENCY = "idem#"
_CREATE_ATTEMPTS = 8

# -- item shapes (abstract: ``_build_models`` binds them to tables) -----------------------


class _ActiveByOwner(GlobalSecondaryIndex["_ClusterItem"]):
    class Meta:
        index_name = "active-by-owner"
        projection = AllProjection()

    active_owner = UnicodeAttribute(hash_key=True)
    created_us = NumberAttribute(range_key=True)


class _ByOwner(GlobalSecondaryIndex["_ClusterItem"]):
    class Meta:
        index_name = "by-owner"
        projection = AllProjection()

    owner = UnicodeAttribute(hash_key=True)
    created_us = NumberAttribute(range_key=True)


class _ClusterItem(Model):
    id = UnicodeAttribute(hash_key=True)
    version = VersionAttribute()
    owner = UnicodeAttribute()
    name = UnicodeAttribute()
    created_us = NumberAttribute()
    active_owner = UnicodeAttribute(null=True)
    expires_at_epoch = NumberAttribute(null=True)
    doc = UnicodeAttribute()
    by_owner = _ByOwner()
    active_by_owner = _ActiveByOwner()


class _KeyItem(Model):
    owner = UnicodeAttribute(hash_key=True)
    key = UnicodeAttribute(range_key=True)
    cluster_id = UnicodeAttribute()
    request_hash = UnicodeAttribute(null=True)
    expires_at_epoch = NumberAttribute(null=True)


class _HeartbeatItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    doc = UnicodeAttribute()


class _SecretItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute(range_key=True)
    value = BinaryAttribute(legacy_encoding=False)


class _UserItem(Model):
    id = UnicodeAttribute(hash_key=True)
    doc = UnicodeAttribute()


class _ApiTokenItem(Model):
    token_hash = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()


class _ClusterTokenItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    token_hash = UnicodeAttribute()


class _CredentialItem(Model):
    token_hash = UnicodeAttribute(hash_key=True)
    used = BooleanAttribute()
    expires_us = NumberAttribute()
    expires_at_epoch = NumberAttribute()
    doc = UnicodeAttribute()


_M = TypeVar("_M", bound=Model)


@dataclass(frozen=True)
class Models:
    """The model classes of one store, bound to its tables, region and endpoint."""

    cluster: type[_ClusterItem]
    key: type[_KeyItem]
    heartbeat: type[_HeartbeatItem]
    secret: type[_SecretItem]
    user: type[_UserItem]
    api_token: type[_ApiTokenItem]
    cluster_token: type[_ClusterTokenItem]
    credential: type[_CredentialItem]

    def all(self) -> list[type[Model]]:
        return [
            self.cluster,
            self.key,
            self.heartbeat,
            self.secret,
            self.user,
            self.api_token,
            self.cluster_token,
            self.credential,
        ]


def _bind(base: type[_M], table: str, region: str, host: str | None) -> type[_M]:
    """A subclass of ``base`` with its own ``Meta``, so its own table and index bindings."""
    meta = type(
        "Meta",
        (),
        {
            "table_name": table,
            "region": region,
            "host": host,
            "billing_mode": PAY_PER_REQUEST,
        },
    )
    name = base.__name__.lstrip("_")
    return type(name, (base,), {"Meta": meta, "__module__": __name__})


def _build_models(prefix: str, region: str, host: str | None) -> Models:
    def bind(base: type[_M], suffix: str) -> type[_M]:
        return _bind(base, prefix + suffix, region, host)

    return Models(
        cluster=bind(_ClusterItem, "clusters"),
        key=bind(_KeyItem, "cluster-keys"),
        heartbeat=bind(_HeartbeatItem, "heartbeats"),
        secret=bind(_SecretItem, "secrets"),
        user=bind(_UserItem, "users"),
        api_token=bind(_ApiTokenItem, "api-tokens"),
        cluster_token=bind(_ClusterTokenItem, "cluster-tokens"),
        credential=bind(_CredentialItem, "instance-credentials"),
    )


def _epoch_us(dt: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _failed(e: PutError | UpdateError) -> bool:
    return e.cause_response_code == _CONDITION_FAILED


class DynamoDBStore:
    """Implements ``billow_control.core.ports.Store`` on DynamoDB tables.

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
        How long an Idempotency-Key is remembered; at most ``finished_retention``.
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
        self.models = _build_models(table_prefix, region, host)
        self.finished_retention = finished_retention
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        self.connection = Connection(
            region=region, host=host, max_pool_connections=max_pool_connections
        )
        # One botocore client for all tables: pynamodb gives each model its own, and each
        # costs ~0.15 s of model loading, paid again on every Lambda cold start.
        for model in self.models.all():
            table = model._get_connection()
            self.connection.add_meta_table(table.get_meta_table())
            table.connection = self.connection

    # -- tables --------------------------------------------------------------------------

    def table_names(self) -> list[str]:
        return [m.Meta.table_name for m in self.models.all()]

    def create_tables(self, wait: bool = True) -> None:
        """Create the missing tables (on-demand billing); existing ones are left as they are.

        Does not enable TTL: ``serverless.yml`` configures it on ``expires_at_epoch``.
        """
        for model in self.models.all():
            model.create_table(wait=wait, billing_mode=PAY_PER_REQUEST)

    def delete_tables(self) -> None:
        """Delete every table of this prefix that exists (tests and teardown)."""
        for model in self.models.all():
            if model.exists():
                model.delete_table()

    # -- clusters ------------------------------------------------------------------------

    def _cluster_item(self, record: ClusterRecord, stored_version: int | None) -> _ClusterItem:
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
    def _record(item: _ClusterItem) -> ClusterRecord:
        record = ClusterRecord.model_validate_json(item.doc)
        assert item.version is not None
        record.version = int(item.version) - 1
        return record

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Insert the record, its name lock and its idempotency key in one transaction.

        Returns ``(record, True)``, or ``(existing, False)`` for a repeated key with the same
        ``request_hash``. Raises ``IdempotencyMismatch`` for a repeated key with another
        hash, ``NameTakenError`` when an active cluster of the owner has the name,
        ``ValueError`` unless ``record.version == 0``, and ``StaleRecordError`` when DynamoDB
        kept cancelling the transaction for concurrent writes to the same keys.
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
    def _get(model: type[_M], hash_key: str, range_key: str | None = None) -> _M | None:
        try:
            return model.get(hash_key, range_key, consistent_read=True)
        except DoesNotExist:
            return None

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
        differs or the cluster does not exist, and nothing is written. The write that makes
        a cluster terminal also frees its name, in one transaction. Raises ``ValueError``
        when asked to make a terminal cluster active again (its name may be taken).
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
                    raise ValueError(
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

    # -- heartbeats, secrets, users, tokens ----------------------------------------------

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Overwrite the latest heartbeat (unconditional; separate from the cluster item)."""
        self.models.heartbeat(beat.cluster_id, doc=beat.model_dump_json()).save()

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None:
        item = self._get(self.models.heartbeat, cluster_id)
        return HeartbeatRecord.model_validate_json(item.doc) if item is not None else None

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        """Store (or replace) an already-encrypted blob."""
        self.models.secret(cluster_id, name, value=value).save()

    def get_secret(self, cluster_id: str, name: str) -> bytes | None:
        item = self._get(self.models.secret, cluster_id, name)
        return bytes(item.value) if item is not None else None

    def put_user(self, user: User) -> None:
        self.models.user(user.id, doc=user.model_dump_json()).save()

    def get_user(self, user_id: str) -> User | None:
        item = self._get(self.models.user, user_id)
        return User.model_validate_json(item.doc) if item is not None else None

    def count_users(self) -> int:
        """Counts with a consistent Scan of the (small) users table, not the stale
        ``ItemCount`` of DescribeTable."""
        users = self.models.user
        return sum(1 for _ in users.scan(attributes_to_get=["id"], consistent_read=True))

    def put_api_token(self, token_hash: str, user_id: str) -> None:
        self.models.api_token(token_hash, user_id=user_id).save()

    def user_for_token(self, token_hash: str) -> User | None:
        """The token's user; ``None`` for an unknown token or a deleted user."""
        token = self._get(self.models.api_token, token_hash)
        return self.get_user(token.user_id) if token is not None else None

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
    def _credential(item: _CredentialItem) -> InstanceCredential:
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
