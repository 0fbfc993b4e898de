"""Named software environments on Firestore, mixed into ``FirestoreStore``.

Each revision is its own immutable document (``environment-revisions``) and
``environment-heads`` holds the newest of each name, so listing reads one document per
environment. A put is one commit creating the revision's document and creating or
updating the head (conditional on the head as read); a loser re-reads and retries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.cloud.firestore_v1 import FieldFilter

from ....core.software import SoftwareEnvironment, SoftwareSpec
from .documents import ENV_HEADS, ENV_REVISIONS, LOST, Collections, optimistic, unchanged

_ATTEMPTS = 25
_BATCH = 400  # deletes per commit (Firestore allows 500 writes)


class EnvironmentRevisions:
    """The environment methods of the ``Store`` port; the host class provides ``client``
    and ``col`` (``Collections``)."""

    client: Any
    col: Collections

    def _revisions(self, owner: str, name: str) -> Any:
        """Query of the revision documents of one name. Descending by revision needs the
        composite index (owner, name, revision DESC) of ``firestore.indexes.json``."""
        return (
            self.col(ENV_REVISIONS)
            .where(filter=FieldFilter("owner", "==", owner))
            .where(filter=FieldFilter("name", "==", name))
        )

    def put_environment_revision(
        self, owner: str, name: str, spec: SoftwareSpec, now: datetime
    ) -> int:
        """Write the next revision and the head in one conditional commit; retried with
        backoff when a concurrent put or delete got there first. Raises
        ``StaleRecordError`` after ``_ATTEMPTS`` lost rounds."""
        head_ref = self.col.doc(ENV_HEADS, owner, name)

        def attempt() -> int | None:
            head = head_ref.get()
            if head.exists:
                latest = int(head.get("revision"))
            else:  # revisions left by an interrupted delete keep their numbers taken
                newest = self._revisions(owner, name).order_by("revision", direction="DESCENDING")
                latest = max((int(s.get("revision")) for s in newest.limit(1).stream()), default=0)
            revision = latest + 1
            env = SoftwareEnvironment.revision_of(owner, name, revision, spec, now)
            fields = {"owner": owner, "name": name, "revision": revision}
            doc = {**fields, "doc": env.model_dump_json()}
            batch = self.client.batch()
            if head.exists:
                batch.update(head_ref, doc, option=unchanged(self.client, head))
            else:
                batch.create(head_ref, doc)
            batch.create(self.col.doc(ENV_REVISIONS, owner, name, f"{revision:09d}"), doc)
            try:
                batch.commit()
            except LOST:
                return None
            return revision

        return optimistic(attempt, _ATTEMPTS, f"environment {name!r}")

    def get_environment(
        self, owner: str, name: str, revision: int | None = None
    ) -> SoftwareEnvironment | None:
        """One document: the head, or the revision's own."""
        if revision is None:
            snap = self.col.doc(ENV_HEADS, owner, name).get()
        else:
            snap = self.col.doc(ENV_REVISIONS, owner, name, f"{revision:09d}").get()
        return SoftwareEnvironment.model_validate_json(snap.get("doc")) if snap.exists else None

    def list_environments(self, owner: str) -> list[SoftwareEnvironment]:
        """One query of the owner's heads, by name."""
        heads = self.col(ENV_HEADS).where(filter=FieldFilter("owner", "==", owner)).stream()
        found = [SoftwareEnvironment.model_validate_json(s.get("doc")) for s in heads]
        return sorted(found, key=lambda env: env.name)

    def delete_environment(self, owner: str, name: str) -> bool:
        """Delete the head first, conditional on the head read with the revision list
        (the environment is gone for readers at once), then those revisions; retried when
        a put changed the head in between. Leftovers of an interrupted delete go with
        the next one, and a put after the head's delete starts above them."""
        head_ref = self.col.doc(ENV_HEADS, owner, name)

        def attempt() -> bool | None:
            head = head_ref.get()
            revisions = list(self._revisions(owner, name).select(["revision"]).stream())
            if head.exists:
                try:
                    head_ref.delete(option=unchanged(self.client, head))
                except LOST:
                    return None
                top = int(head.get("revision"))
                revisions = [r for r in revisions if int(r.get("revision")) <= top]
            for i in range(0, len(revisions), _BATCH):
                batch = self.client.batch()
                for snap in revisions[i : i + _BATCH]:
                    batch.delete(snap.reference)
                batch.commit()
            return head.exists or bool(revisions)

        return optimistic(attempt, _ATTEMPTS, f"environment {name!r}")
