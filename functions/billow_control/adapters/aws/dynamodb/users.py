"""Users and their API tokens on DynamoDB, mixed into ``DynamoDBStore``.

A user's name is unique: a ``user-names`` item (the name lock) is written in the same
transaction as the user, conditional on being free or this user's.
"""

from __future__ import annotations

import random
import time
from typing import Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from ....core.models import User
from ....core.ports import StaleRecordError, UserNameTakenError
from .items import get_item

_TX_CANCELLED = "TransactionCanceledException"
_ATTEMPTS = 8


class UserAccounts:
    """The user and API-token methods of the ``Store`` port; the host class provides
    ``models`` (bound item classes) and ``connection`` (the shared pynamodb connection)."""

    models: Any
    connection: Any

    def put_user(self, user: User) -> None:
        """Write the user and its name lock (``user-names``) in one transaction.

        The lock is conditional on being free or this user's, the user item on being
        unchanged since it was read; a new name deletes the user's old lock in the same
        transaction. Raises ``UserNameTakenError`` when another user holds the name, and
        ``StaleRecordError`` when concurrent writes kept cancelling the transaction.
        """
        m = self.models
        delay = 0.02
        for _ in range(_ATTEMPTS):
            stored = get_item(m.user, user.id)
            old_name = User.model_validate_json(stored.doc).name if stored is not None else None
            try:
                with TransactWrite(connection=self.connection) as tx:
                    lock = m.user_name(user.name, user_id=user.id)
                    free = m.user_name.name.does_not_exist() | (m.user_name.user_id == user.id)
                    tx.save(lock, condition=free)
                    unchanged = (
                        m.user.id.does_not_exist() if stored is None else m.user.doc == stored.doc
                    )
                    tx.save(m.user(user.id, doc=user.model_dump_json()), condition=unchanged)
                    if old_name is not None and old_name != user.name:
                        tx.delete(m.user_name(old_name), condition=m.user_name.user_id == user.id)
            except TransactWriteError as e:
                if e.cause_response_code != _TX_CANCELLED:
                    raise
                holder = get_item(m.user_name, user.name)
                if holder is not None and holder.user_id != user.id:
                    raise UserNameTakenError(user.name) from None
                time.sleep(delay * (1 + random.random()))
                delay *= 2
                continue
            return
        raise StaleRecordError(f"could not write user {user.id}: concurrent writes")

    def get_user(self, user_id: str) -> User | None:
        item = get_item(self.models.user, user_id)
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
        token = get_item(self.models.api_token, token_hash)
        return self.get_user(token.user_id) if token is not None else None
