"""Named software environments in SQLite, mixed into ``SqliteStore``: one row per
revision in ``software_environments``; a put takes the next revision in one
``BEGIN IMMEDIATE`` transaction, so concurrent puts of one name get distinct revisions."""

from __future__ import annotations

from datetime import datetime

from ...core.software import SoftwareEnvironment, SoftwareSpec
from .sqlite_host import SqliteHost


class EnvironmentRevisions(SqliteHost):
    """The environment methods of the ``Store`` port."""

    def put_environment_revision(
        self, owner: str, name: str, spec: SoftwareSpec, now: datetime
    ) -> int:
        """Insert the next revision (latest + 1, or 1) in one ``BEGIN IMMEDIATE``
        transaction, so concurrent puts of one name get distinct revisions."""
        with self._tx() as db:
            row = db.execute(
                "SELECT MAX(revision) FROM software_environments WHERE owner=? AND name=?",
                (owner, name),
            ).fetchone()
            revision = int(row[0] or 0) + 1
            env = SoftwareEnvironment.revision_of(owner, name, revision, spec, now)
            db.execute(
                "INSERT INTO software_environments (owner, name, revision, doc) "
                "VALUES (?, ?, ?, ?)",
                (owner, name, revision, env.model_dump_json()),
            )
        return revision

    def get_environment(
        self, owner: str, name: str, revision: int | None = None
    ) -> SoftwareEnvironment | None:
        """The revision asked for, or the latest when ``revision`` is ``None``."""
        row = self._one(
            "SELECT doc FROM software_environments WHERE owner=? AND name=? "
            "AND (? IS NULL OR revision=?) ORDER BY revision DESC LIMIT 1",
            owner,
            name,
            revision,
            revision,
        )
        return SoftwareEnvironment.model_validate_json(row[0]) if row else None

    def list_environments(self, owner: str) -> list[SoftwareEnvironment]:
        rows = self._conn().execute(
            "SELECT e.doc FROM software_environments e JOIN ("
            "  SELECT name, MAX(revision) AS latest FROM software_environments"
            "  WHERE owner=? GROUP BY name"
            ") m ON e.name = m.name AND e.revision = m.latest "
            "WHERE e.owner=? ORDER BY e.name",
            (owner, owner),
        )
        return [SoftwareEnvironment.model_validate_json(r[0]) for r in rows.fetchall()]

    def delete_environment(self, owner: str, name: str) -> bool:
        cur = self._conn().execute(
            "DELETE FROM software_environments WHERE owner=? AND name=?", (owner, name)
        )
        return cur.rowcount > 0
