"""Administration of the store's tables: create, delete, list their names.

For tests, benchmarks and local development; a deployment's tables come from
``infra/aws/tables.yml``, which also enables TTL on ``expires_at_epoch``. Each function
takes a ``DynamoDBStore`` or the ``Models`` of one (``items.bind_models``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .items import PAY_PER_REQUEST, Models

if TYPE_CHECKING:
    from .store import DynamoDBStore


def _models(store: DynamoDBStore | Models) -> Models:
    return store if isinstance(store, Models) else store.models


def table_names(store: DynamoDBStore | Models) -> list[str]:
    """The full names of the store's tables (prefix included); makes no AWS call."""
    return [m.Meta.table_name for m in _models(store).all()]


def create_tables(store: DynamoDBStore | Models, wait: bool = True) -> None:
    """Create the missing tables with on-demand billing; existing ones are left as they are.

    With ``wait``, returns once every table is ``ACTIVE``. Does not enable TTL (see
    ``infra/aws/tables.yml``). Raises pynamodb's ``TableError`` when a create is refused.
    """
    for model in _models(store).all():
        model.create_table(wait=wait, billing_mode=PAY_PER_REQUEST)


def delete_tables(store: DynamoDBStore | Models) -> None:
    """Delete every table of the store that exists, with its items (tests and teardown).

    Missing tables are skipped; does not wait for the deletions to finish.
    """
    for model in _models(store).all():
        if model.exists():
            model.delete_table()
