"""What the SQLite store's mixins (accounts, environments) use of their host class."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager


class SqliteHost:
    """``SqliteStore`` provides these: ``_tx`` (a ``BEGIN IMMEDIATE`` transaction),
    ``_one`` (one row) and ``_conn`` (this thread's connection)."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _one(self, sql: str, *args: object) -> tuple | None:
        raise NotImplementedError

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError
