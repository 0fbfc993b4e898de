"""Usage records and closed-month marks in SQLite, mixed into ``SqliteStore``.

``usage.ended_us`` (microseconds since the epoch) is NULL while a record is open; the
partial index ``usage_open`` holds open records only, so the metering pass never reads
finished ones. A put is one ``BEGIN IMMEDIATE`` transaction that leaves a closed record as
it is.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

from ...core.metering import UsageRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    instance_id TEXT PRIMARY KEY, ended_us INTEGER, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_open ON usage(instance_id) WHERE ended_us IS NULL;
CREATE INDEX IF NOT EXISTS usage_ended ON usage(ended_us);
CREATE TABLE IF NOT EXISTS usage_months (month TEXT PRIMARY KEY, closed_at TEXT NOT NULL);
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


class UsageRecords:
    """The usage methods of the ``Store`` port; the host class provides ``_tx`` and
    ``_conn``."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def put_usage(self, record: UsageRecord) -> UsageRecord:
        with self._tx() as db:
            row = db.execute(
                "SELECT ended_us, doc FROM usage WHERE instance_id=?", (record.instance_id,)
            ).fetchone()
            if row is not None and row[0] is not None:
                return UsageRecord.model_validate_json(row[1])
            ended = epoch_us(record.ended_at) if record.ended_at is not None else None
            db.execute(
                "INSERT OR REPLACE INTO usage (instance_id, ended_us, doc) VALUES (?, ?, ?)",
                (record.instance_id, ended, record.model_dump_json()),
            )
        return record

    def list_usage(self, ended_since: datetime | None = None) -> list[UsageRecord]:
        args: tuple[int, ...] = ()
        if ended_since is None:
            sql = "SELECT doc FROM usage WHERE ended_us IS NULL"
        else:
            sql = "SELECT doc FROM usage WHERE ended_us IS NULL OR ended_us >= ?"
            args = (epoch_us(ended_since),)
        rows = self._conn().execute(sql, args).fetchall()
        return [UsageRecord.model_validate_json(r[0]) for r in rows]

    def claim_usage_month(self, month: str) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO usage_months (month, closed_at) VALUES (?, ?)",
                (month, datetime.now(UTC).isoformat()),
            )
            return cursor.rowcount == 1
