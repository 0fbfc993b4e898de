"""Users, teams and API tokens on DynamoDB, mixed into ``DynamoDBStore``.

A user's name is unique: a ``user-names`` item (the name lock) is written in the same
transaction as the user, conditional on being free or this user's. Listing users, and a
user's tokens, are consistent Scans of small tables (no index: a deployment has at most
thousands of users and tokens).
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

from pynamodb.exceptions import DeleteError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from ....core.accounts import ApiToken, Team, User
from ....core.ports import StaleRecordError, UserNameTakenError
from .items import get_item

_TX_CANCELLED = "TransactionCanceledException"
_CONDITION_FAILED = "ConditionalCheckFailedException"
_ATTEMPTS = 8


class UserAccounts:
    """The user, team and API-token methods of the ``Store`` port; the host class
    provides ``models`` (bound item classes) and ``connection`` (the shared pynamodb
    connection)."""

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

    def list_users(self) -> list[User]:
        found = (
            User.model_validate_json(i.doc) for i in self.models.user.scan(consistent_read=True)
        )
        return sorted(found, key=lambda u: u.name)

    # -- teams ---------------------------------------------------------------------------

    def put_team(self, team: Team) -> None:
        self.models.team(team.name, doc=team.model_dump_json()).save()

    def get_team(self, name: str) -> Team | None:
        item = get_item(self.models.team, name)
        return Team.model_validate_json(item.doc) if item is not None else None

    def list_teams(self) -> list[Team]:
        found = (
            Team.model_validate_json(i.doc) for i in self.models.team.scan(consistent_read=True)
        )
        return sorted(found, key=lambda t: t.name)

    # -- API tokens ----------------------------------------------------------------------

    def put_api_token(self, token: ApiToken) -> None:
        self.models.api_token(
            token.token_hash, user_id=token.user_id, doc=token.model_dump_json()
        ).save()

    @staticmethod
    def _token(item: Any) -> ApiToken:
        if item.doc:
            return ApiToken.model_validate_json(item.doc)
        return ApiToken.legacy(item.token_hash, item.user_id)

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        item = get_item(self.models.api_token, token_hash)
        return self._token(item) if item is not None else None

    def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        tokens = self.models.api_token
        found = [
            self._token(i) for i in tokens.scan(tokens.user_id == user_id, consistent_read=True)
        ]
        return sorted(found, key=lambda t: (t.created_at is not None, t.created_at, t.id))

    def touch_api_token(self, token_hash: str, at: datetime) -> None:
        """Rewrite ``doc`` with ``last_used_at``, conditional on the token still existing
        (a concurrent revoke wins)."""
        tokens = self.models.api_token
        item = get_item(tokens, token_hash)
        if item is None:
            return
        doc = self._token(item).model_copy(update={"last_used_at": at}).model_dump_json()
        try:
            item.update(actions=[tokens.doc.set(doc)], condition=tokens.token_hash.exists())
        except UpdateError as e:
            if e.cause_response_code != _CONDITION_FAILED:
                raise

    def delete_api_token(self, token_hash: str) -> bool:
        tokens = self.models.api_token
        try:
            tokens(token_hash).delete(condition=tokens.token_hash.exists())
        except DeleteError as e:
            if e.cause_response_code == _CONDITION_FAILED:
                return False
            raise
        return True
