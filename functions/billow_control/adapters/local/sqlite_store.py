"""SQLite store for the embedded control plane (WAL mode, one connection per thread).

Cluster updates are conditional on the ``version`` column, so two writers never lose an
update; creates and idempotency keys are written in one ``BEGIN IMMEDIATE`` transaction.
A partial unique index keeps active names unique per owner.

Durability: ``PRAGMA synchronous=FULL`` by default. In WAL mode that syncs the log at
every commit, so a transition the store acknowledged (a create, a status change, a used
one-time token) survives a power loss or an OS crash, as a DynamoDB write does.
``NORMAL`` syncs only at checkpoints: still never corrupt, but the last commits before
a power loss may be lost. Heartbeats alone are written with ``NORMAL`` whatever the
setting, and those arriving close together in one transaction (``put_heartbeat``): each
is overwritten by the next within seconds, so losing the last ones costs nothing, while a
sync per heartbeat at least halves their ingestion (``tests/bench/bench_watchdog.py``
measures both settings). The next synced commit syncs them too.

Behaves as ``DynamoDBStore`` where the ``Store`` contract leaves room: an Idempotency-Key
expires ``idempotency_ttl`` after its create (``idempotency.expires_at_epoch``, Unix
seconds; an expired key is unused and is replaced by the next create with it), and a
finished cluster never becomes active again. Expired keys are not deleted otherwise.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from ...core.models import ClusterRecord, HeartbeatRecord, InstanceCredential
from ...core.ports import (
    FinishedClusterError,
    IdempotencyMismatch,
    NameTakenError,
    StaleRecordError,
)
from .sqlite_accounts import SCHEMA as ACCOUNTS_SCHEMA
from .sqlite_accounts import Accounts
from .sqlite_environments import EnvironmentRevisions
from .sqlite_usage import SCHEMA as USAGE_SCHEMA
from .sqlite_usage import UsageRecords

SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    active INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS clusters_active_name ON clusters(owner, name) WHERE active = 1;
CREATE INDEX IF NOT EXISTS clusters_active ON clusters(active) WHERE active = 1;
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, cluster_id TEXT NOT NULL,
    expires_at_epoch INTEGER,
    PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS heartbeats (cluster_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    cluster_id TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (cluster_id, name)
);
CREATE TABLE IF NOT EXISTS cluster_tokens (cluster_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instance_credentials (token_hash TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS software_environments (
    owner TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (owner, name, revision)
);
"""
SCHEMA += ACCOUNTS_SCHEMA + USAGE_SCHEMA

SYNCHRONOUS = ("FULL", "NORMAL")
_SQL_PARAMETERS = 500  # bound parameters of one statement (SQLite allows 32766 since 3.32)
HEARTBEAT_BATCH_SECONDS = 0.05  # heartbeats arriving closer together are written together


class SqliteStore(EnvironmentRevisions, Accounts, UsageRecords):
    """Implements ``billow_control.core.ports.Store`` on one SQLite file.

    Parameters
    ----------
    path
        The database file, created with its tables if missing. A file written by an
        older version is migrated in place (see ``_migrate``).
    idempotency_ttl
        How long an Idempotency-Key is remembered after the create that used it.
    clock
        Unix time in seconds, for Idempotency-Key expiry.
    synchronous
        SQLite's ``PRAGMA synchronous`` for every connection: ``"FULL"`` (default, a
        commit survives power loss) or ``"NORMAL"`` (faster; see the module docstring).
    heartbeat_batch
        Seconds within which heartbeats are written together (see ``put_heartbeat``).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        idempotency_ttl: timedelta = timedelta(days=1),
        clock: Callable[[], float] = time.time,
        synchronous: str = "FULL",
        heartbeat_batch: float = HEARTBEAT_BATCH_SECONDS,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        self.path = str(path)
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        self._local = threading.local()
        self._beats_lock = threading.Lock()
        self._waiting_beats: dict[str, str] = {}
        self.heartbeat_batch = heartbeat_batch
        self._beats_written_at = -math.inf
        self._conn().executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add ``idempotency.expires_at_epoch`` and ``api_tokens.doc`` to a file that
        lacks them (``sqlite_accounts``: old tokens read as legacy ones).

        Keys stored before the column existed get a full lifetime from now: as if created
        now, so none expires earlier than it would have, and the table stays bounded by the
        same rule as new keys. One ``BEGIN IMMEDIATE`` transaction, re-checked inside, so
        processes opening the same old file at once migrate it once; a current file costs
        one read and takes no write lock.
        """

        def migrated(db: sqlite3.Connection) -> bool:
            columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
            return "expires_at_epoch" in columns and self._accounts_migrated(db)

        if migrated(self._conn()):
            return
        with self._tx() as db:
            if migrated(db):
                return
            self._migrate_accounts(db)
            columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
            if "expires_at_epoch" in columns:
                return
            db.execute("ALTER TABLE idempotency ADD COLUMN expires_at_epoch INTEGER")
            db.execute(
                "UPDATE idempotency SET expires_at_epoch=? WHERE expires_at_epoch IS NULL",
                (self._key_expiry(self.clock()),),
            )

    def _key_expiry(self, now: float) -> int:
        """``expires_at_epoch`` of a key created at ``now``, rounded up as DynamoDB's."""
        return math.ceil(now + self.idempotency_ttl.total_seconds())

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(self.synchronous)
            self._local.conn = conn
        return conn

    def _relaxed_conn(self) -> sqlite3.Connection:
        """This thread's connection that never syncs at commit (heartbeats only)."""
        conn = getattr(self._local, "relaxed", None)
        if conn is None:
            conn = self._connect("NORMAL")
            self._local.relaxed = conn
        return conn

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _one(self, sql: str, *args: object) -> tuple | None:
        return self._conn().execute(sql, args).fetchone()

    # -- clusters ------------------------------------------------------------------------

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Insert the record and its idempotency key in one transaction.

        Returns ``(record, True)``, or ``(existing, False)`` for a repeated unexpired key
        with the same ``request_hash``; an expired key is replaced. Raises
        ``IdempotencyMismatch`` for a repeated unexpired key with another hash and
        ``NameTakenError`` when an active cluster of the owner has the name; on any error
        nothing is written.
        """
        with self._tx() as db:
            now = self.clock()
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT request_hash, cluster_id, expires_at_epoch FROM idempotency "
                    "WHERE owner=? AND key=?",
                    (record.owner, idempotency_key),
                ).fetchone()
                # NULL (written by an older version after the migration): never expires.
                if row is not None and (row[2] is None or row[2] >= int(now)):
                    if row[0] != request_hash:
                        raise IdempotencyMismatch(idempotency_key)
                    existing = db.execute(
                        "SELECT doc FROM clusters WHERE id=?", (row[1],)
                    ).fetchone()
                    return ClusterRecord.model_validate_json(existing[0]), False
            try:
                db.execute(
                    "INSERT INTO clusters (id, owner, name, active, version, created_at, doc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.owner,
                        record.name,
                        int(record.active),
                        record.version,
                        record.created_at.isoformat(),
                        record.model_dump_json(),
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise NameTakenError(record.name) from e
            if idempotency_key is not None:
                db.execute(
                    "INSERT OR REPLACE INTO idempotency "
                    "(owner, key, request_hash, cluster_id, expires_at_epoch) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (record.owner, idempotency_key, request_hash, record.id, self._key_expiry(now)),
                )
        return record, True

    def get_cluster(self, cluster_id: str) -> ClusterRecord | None:
        row = self._one("SELECT doc FROM clusters WHERE id=?", cluster_id)
        return ClusterRecord.model_validate_json(row[0]) if row else None

    def list_clusters(
        self, owner: str | None, active_only: bool, name: str | None = None
    ) -> list[ClusterRecord]:
        sql = "SELECT doc FROM clusters WHERE 1=1"
        args: list[object] = []
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        if name is not None:
            sql += " AND name=?"
            args.append(name)
        if active_only:
            sql += " AND active=1"
        sql += " ORDER BY created_at DESC"
        rows = self._conn().execute(sql, args).fetchall()
        return [ClusterRecord.model_validate_json(r[0]) for r in rows]

    def update_cluster(self, record: ClusterRecord) -> ClusterRecord:
        """Write ``record`` if the stored version equals ``record.version``.

        Returns the record with ``version + 1``. Raises ``StaleRecordError`` when the version
        differs or the cluster does not exist, and ``FinishedClusterError`` when ``record``
        is active but the stored cluster is terminal; in both cases nothing is written.
        """
        new = record.model_copy(update={"version": record.version + 1})
        with self._tx() as db:
            stored = db.execute(
                "SELECT version, active FROM clusters WHERE id=?", (record.id,)
            ).fetchone()
            if stored is None or stored[0] != record.version:
                raise StaleRecordError(record.id)
            if new.active and not stored[1]:
                doc = db.execute("SELECT doc FROM clusters WHERE id=?", (record.id,)).fetchone()
                status = ClusterRecord.model_validate_json(doc[0]).status.value
                raise FinishedClusterError(
                    f"cluster {record.id} is {status}; "
                    "a finished cluster cannot become active again"
                )
            cur = db.execute(
                "UPDATE clusters SET active=?, version=?, doc=? WHERE id=? AND version=?",
                (int(new.active), new.version, new.model_dump_json(), record.id, record.version),
            )
            if cur.rowcount != 1:
                raise StaleRecordError(record.id)
        return new

    # -- heartbeats, secrets, tokens ----------------------------------------------------

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Keep ``beat`` as its cluster's latest heartbeat.

        Written without syncing the WAL (see the module docstring), on a connection of its
        own (an unsynced commit never undoes or reorders a synced one), and in batches:
        a heartbeat that arrives within ``heartbeat_batch`` seconds of the last write
        waits for the next heartbeat or read of heartbeats, which writes every waiting one
        in one transaction. Readers of this store always see it; a killed server may lose
        the waiting ones, each replaced by its cluster's next report within seconds.
        """
        doc = beat.model_dump_json()
        with self._beats_lock:
            self._waiting_beats[beat.cluster_id] = doc
            if time.monotonic() - self._beats_written_at >= self.heartbeat_batch:
                self._write_heartbeats()

    def _write_heartbeats(self) -> None:
        """Write the waiting heartbeats in one transaction; call holding ``_beats_lock``."""
        if self._waiting_beats:
            db = self._relaxed_conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO heartbeats (cluster_id, doc) VALUES (?, ?)",
                    self._waiting_beats.items(),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._waiting_beats = {}
        self._beats_written_at = time.monotonic()

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None:
        return self.get_heartbeats([cluster_id]).get(cluster_id)

    def get_heartbeats(self, cluster_ids: Sequence[str]) -> dict[str, HeartbeatRecord]:
        with self._beats_lock:
            self._write_heartbeats()
        found: dict[str, HeartbeatRecord] = {}
        ids = list(dict.fromkeys(cluster_ids))
        for start in range(0, len(ids), _SQL_PARAMETERS):
            chunk = ids[start : start + _SQL_PARAMETERS]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT cluster_id, doc FROM heartbeats WHERE cluster_id IN ({marks})"
            for cluster_id, doc in self._conn().execute(sql, chunk):
                found[cluster_id] = HeartbeatRecord.model_validate_json(doc)
        return found

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO secrets (cluster_id, name, value) VALUES (?, ?, ?)",
            (cluster_id, name, value),
        )

    def get_secret(self, cluster_id: str, name: str) -> bytes | None:
        row = self._one("SELECT value FROM secrets WHERE cluster_id=? AND name=?", cluster_id, name)
        return bytes(row[0]) if row else None

    def put_cluster_token(self, cluster_id: str, token_hash: str) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO cluster_tokens (cluster_id, token_hash) VALUES (?, ?)",
            (cluster_id, token_hash),
        )

    def get_cluster_token(self, cluster_id: str) -> str | None:
        row = self._one("SELECT token_hash FROM cluster_tokens WHERE cluster_id=?", cluster_id)
        return row[0] if row else None

    def put_instance_credential(self, cred: InstanceCredential) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO instance_credentials (token_hash, doc) VALUES (?, ?)",
            (cred.token_hash, cred.model_dump_json()),
        )

    def peek_instance_credential(self, token_hash: str) -> InstanceCredential | None:
        row = self._one("SELECT doc FROM instance_credentials WHERE token_hash=?", token_hash)
        return InstanceCredential.model_validate_json(row[0]) if row else None

    def consume_instance_credential(
        self, token_hash: str, now: datetime
    ) -> InstanceCredential | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT doc FROM instance_credentials WHERE token_hash=?", (token_hash,)
            ).fetchone()
            if row is None:
                return None
            cred = InstanceCredential.model_validate_json(row[0])
            if cred.used or cred.expired(now):
                return None
            cred.used = True
            db.execute(
                "UPDATE instance_credentials SET doc=? WHERE token_hash=?",
                (json.dumps(cred.model_dump(mode="json")), token_hash),
            )
        return cred
