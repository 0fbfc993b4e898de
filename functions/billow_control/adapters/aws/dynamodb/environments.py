"""Named software environments on DynamoDB, mixed into ``DynamoDBStore``.

Each revision is its own item (``rev#<name>#<revision>``) and ``latest#<name>`` holds the
newest, so listing reads one item per environment. A put is one transaction writing the
new revision's item (on condition it does not exist) and the ``latest#`` item (on
condition that it still names the revision read before); a loser re-reads and retries.
``list_environments`` is a consistent Query of the ``latest#`` items only.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

from pynamodb.exceptions import DeleteError, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from ....core.ports import StaleRecordError
from ....core.software import SoftwareEnvironment, SoftwareSpec
from .items import get_item

_LATEST = "latest#"
_REVISION = "rev#"
_ENVIRONMENT_ATTEMPTS = 25
_MAX_BACKOFF = 0.5
_CONDITION_FAILED = "ConditionalCheckFailedException"
_TX_CANCELLED = "TransactionCanceledException"


def _revision_key(name: str, revision: int) -> str:
    """``rev#<name>#<revision>``, zero-padded so a name's revisions sort numerically
    (names hold no ``#``, so one name's prefix never matches another's)."""
    return f"{_REVISION}{name}#{revision:09d}"


class EnvironmentRevisions:
    """The environment methods of the ``Store`` port; the host class provides ``models``
    (bound item classes) and ``connection`` (the shared pynamodb connection)."""

    models: Any
    connection: Any

    def _environment_item(self, owner: str, key: str) -> Any:
        return get_item(self.models.environment, owner, key)

    def put_environment_revision(
        self, owner: str, name: str, spec: SoftwareSpec, now: datetime
    ) -> int:
        """Write the next revision and the ``latest#`` item in one transaction,
        conditional on the revision read first; retried with backoff when a concurrent
        put (or delete) got there first. Raises ``StaleRecordError`` after
        ``_ENVIRONMENT_ATTEMPTS`` lost rounds."""
        e = self.models.environment
        delay = 0.02
        for _ in range(_ENVIRONMENT_ATTEMPTS):
            head = self._environment_item(owner, _LATEST + name)
            unchanged: Condition
            if head is not None:
                latest = int(head.revision)
                unchanged = e.revision == latest
            else:
                # Revisions left by an interrupted delete keep their numbers taken.
                latest = self._latest_revision(owner, name)
                unchanged = e.key.does_not_exist()
            revision = latest + 1
            env = SoftwareEnvironment.revision_of(owner, name, revision, spec, now)
            doc = env.model_dump_json()
            try:
                with TransactWrite(connection=self.connection) as tx:
                    tx.save(
                        e(owner, _LATEST + name, name=name, revision=revision, doc=doc),
                        condition=unchanged,
                    )
                    tx.save(
                        e(
                            owner,
                            _revision_key(name, revision),
                            name=name,
                            revision=revision,
                            doc=doc,
                        ),
                        condition=e.key.does_not_exist(),
                    )
            except TransactWriteError as err:
                if err.cause_response_code != _TX_CANCELLED:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            return revision
        raise StaleRecordError(f"could not write environment {name!r}: concurrent writes")

    def _latest_revision(self, owner: str, name: str) -> int:
        """The highest revision item of ``name`` (0 when none), read consistently."""
        e = self.models.environment
        newest = e.query(
            owner,
            e.key.startswith(f"{_REVISION}{name}#"),
            scan_index_forward=False,
            limit=1,
            consistent_read=True,
            attributes_to_get=["owner", "key", "revision"],
        )
        return max((int(item.revision) for item in newest), default=0)

    def get_environment(
        self, owner: str, name: str, revision: int | None = None
    ) -> SoftwareEnvironment | None:
        """One item, read consistently: ``latest#<name>``, or the revision's own."""
        key = _LATEST + name if revision is None else _revision_key(name, revision)
        item = self._environment_item(owner, key)
        return SoftwareEnvironment.model_validate_json(item.doc) if item is not None else None

    def list_environments(self, owner: str) -> list[SoftwareEnvironment]:
        """A consistent Query of the owner's ``latest#`` items, by name."""
        e = self.models.environment
        items = e.query(owner, e.key.startswith(_LATEST), consistent_read=True)
        found = [SoftwareEnvironment.model_validate_json(item.doc) for item in items]
        return sorted(found, key=lambda env: env.name)

    def delete_environment(self, owner: str, name: str) -> bool:
        """Delete ``latest#<name>`` first, conditional on the revision read with the list
        of revision items (the environment is gone for readers at once), then those
        revision items; retried when a put changed the latest revision in between. A put
        after the ``latest#`` delete starts above the revisions not yet deleted and
        stands, complete. Leftovers of an interrupted delete go with the next one."""
        e = self.models.environment
        for _ in range(_ENVIRONMENT_ATTEMPTS):
            head = self._environment_item(owner, _LATEST + name)
            revisions = list(
                e.query(
                    owner,
                    e.key.startswith(f"{_REVISION}{name}#"),
                    consistent_read=True,
                    attributes_to_get=["owner", "key", "revision"],
                )
            )
            if head is not None:
                try:
                    head.delete(condition=e.revision == int(head.revision))
                except DeleteError as err:
                    if err.cause_response_code != _CONDITION_FAILED:
                        raise
                    continue
                revisions = [r for r in revisions if int(r.revision) <= int(head.revision)]
            for item in revisions:
                item.delete()
            return head is not None or bool(revisions)
        raise StaleRecordError(f"could not delete environment {name!r}: concurrent writes")
