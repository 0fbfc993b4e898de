"""Users, teams and API tokens in SQLite, mixed into ``SqliteStore``.

``api_tokens.doc`` holds the token's metadata (``ApiToken``) as JSON; rows written
before it existed have ``doc`` NULL and read as ``ApiToken.legacy`` (no expiry, full
scope) until revoked. Names of users are unique (checked in the writing transaction).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from ...core.accounts import ApiToken, Team, User
from ...core.ports import UserNameTakenError
from .sqlite_host import SqliteHost

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_tokens (token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS teams (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


class Accounts(SqliteHost):
    """The user, team and token methods of the ``Store`` port."""

    @staticmethod
    def _accounts_migrated(db: sqlite3.Connection) -> bool:
        return "doc" in {row[1] for row in db.execute("PRAGMA table_info(api_tokens)")}

    def _migrate_accounts(self, db: sqlite3.Connection) -> None:
        """Add ``api_tokens.doc`` to a file that lacks it (inside the caller's
        transaction); its rows stay as they are and read as legacy tokens."""
        if not self._accounts_migrated(db):
            db.execute("ALTER TABLE api_tokens ADD COLUMN doc TEXT")

    # -- users ---------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        """Insert or replace ``user``; ``UserNameTakenError`` when another user has its name.

        The check and the write are one ``BEGIN IMMEDIATE`` transaction, so concurrent
        puts of one name are serialized (files written before names were unique may hold
        duplicates: they stay, and no new one is added).
        """
        with self._tx() as db:
            taken = db.execute(
                "SELECT 1 FROM users WHERE json_extract(doc, '$.name') = ? AND id != ?",
                (user.name, user.id),
            ).fetchone()
            if taken:
                raise UserNameTakenError(user.name)
            db.execute(
                "INSERT INTO users (id, doc) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                (user.id, user.model_dump_json()),
            )

    def get_user(self, user_id: str) -> User | None:
        row = self._one("SELECT doc FROM users WHERE id=?", user_id)
        return User.model_validate_json(row[0]) if row else None

    def count_users(self) -> int:
        row = self._one("SELECT COUNT(*) FROM users")
        return int(row[0]) if row else 0

    def list_users(self) -> list[User]:
        rows = self._conn().execute("SELECT doc FROM users").fetchall()
        return sorted((User.model_validate_json(r[0]) for r in rows), key=lambda u: u.name)

    # -- teams ---------------------------------------------------------------------------

    def put_team(self, team: Team) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO teams (name, doc) VALUES (?, ?)",
            (team.name, team.model_dump_json()),
        )

    def get_team(self, name: str) -> Team | None:
        row = self._one("SELECT doc FROM teams WHERE name=?", name)
        return Team.model_validate_json(row[0]) if row else None

    def list_teams(self) -> list[Team]:
        rows = self._conn().execute("SELECT doc FROM teams ORDER BY name").fetchall()
        return [Team.model_validate_json(r[0]) for r in rows]

    # -- API tokens ----------------------------------------------------------------------

    def put_api_token(self, token: ApiToken) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO api_tokens (token_hash, user_id, doc) VALUES (?, ?, ?)",
            (token.token_hash, token.user_id, token.model_dump_json()),
        )

    @staticmethod
    def _token(row: tuple) -> ApiToken:
        token_hash, user_id, doc = row
        return ApiToken.model_validate_json(doc) if doc else ApiToken.legacy(token_hash, user_id)

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        row = self._one(
            "SELECT token_hash, user_id, doc FROM api_tokens WHERE token_hash=?", token_hash
        )
        return self._token(row) if row else None

    def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        rows = self._conn().execute(
            "SELECT token_hash, user_id, doc FROM api_tokens WHERE user_id=? ORDER BY rowid",
            (user_id,),
        )
        return [self._token(r) for r in rows.fetchall()]

    def touch_api_token(self, token_hash: str, at: datetime) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT token_hash, user_id, doc FROM api_tokens WHERE token_hash=?",
                (token_hash,),
            ).fetchone()
            if row is None:
                return
            token = self._token(row).model_copy(update={"last_used_at": at})
            db.execute(
                "UPDATE api_tokens SET doc=? WHERE token_hash=?",
                (token.model_dump_json(), token_hash),
            )

    def delete_api_token(self, token_hash: str) -> bool:
        cur = self._conn().execute("DELETE FROM api_tokens WHERE token_hash=?", (token_hash,))
        return cur.rowcount > 0
