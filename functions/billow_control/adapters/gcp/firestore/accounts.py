"""Users and their API tokens on Firestore, mixed into ``FirestoreStore``.

A user's name is unique: a ``user-names`` document (the name lock) is written in the same
conditional commit as the user, created if free or kept if this user's; a new name
deletes the user's old lock in that commit.
"""

from __future__ import annotations

from typing import Any

from ....core.models import User
from ....core.ports import UserNameTakenError
from .documents import API_TOKENS, LOST, USER_NAMES, USERS, Collections, optimistic, unchanged

_ATTEMPTS = 25


class UserAccounts:
    """The user and API-token methods of the ``Store`` port; the host class provides
    ``client`` and ``col`` (``Collections``)."""

    client: Any
    col: Collections

    def put_user(self, user: User) -> None:
        """Write the user and its name lock in one commit, conditional on both as read.

        Raises ``UserNameTakenError`` (nothing written) when another user holds the name,
        and ``StaleRecordError`` when concurrent writes kept winning.
        """
        user_ref, lock_ref = self.col.doc(USERS, user.id), self.col.doc(USER_NAMES, user.name)

        def attempt() -> bool | None:
            snaps = {s.reference.path: s for s in self.client.get_all([user_ref, lock_ref])}
            stored, lock = snaps[user_ref.path], snaps[lock_ref.path]
            if lock.exists and lock.get("user_id") != user.id:
                raise UserNameTakenError(user.name)
            batch = self.client.batch()
            if not lock.exists:
                batch.create(lock_ref, {"user_id": user.id})
            doc = {"doc": user.model_dump_json()}
            if stored.exists:
                batch.update(user_ref, doc, option=unchanged(self.client, stored))
                old_name = User.model_validate_json(stored.get("doc")).name
                if old_name != user.name:
                    old_ref = self.col.doc(USER_NAMES, old_name)
                    old = old_ref.get()
                    if old.exists and old.get("user_id") == user.id:
                        batch.delete(old_ref, option=unchanged(self.client, old))
            else:
                batch.create(user_ref, doc)
            try:
                batch.commit()
            except LOST:
                return None
            return True

        optimistic(attempt, _ATTEMPTS, f"user {user.id}")

    def get_user(self, user_id: str) -> User | None:
        snap = self.col.doc(USERS, user_id).get()
        return User.model_validate_json(snap.get("doc")) if snap.exists else None

    def count_users(self) -> int:
        """One aggregation query (billed as one read per 1,000 users)."""
        result = self.col(USERS).count().get()
        return int(result[0][0].value)

    def put_api_token(self, token_hash: str, user_id: str) -> None:
        self.col.doc(API_TOKENS, token_hash).set({"user_id": user_id})

    def user_for_token(self, token_hash: str) -> User | None:
        """The token's user; ``None`` for an unknown token or a deleted user."""
        snap = self.col.doc(API_TOKENS, token_hash).get()
        return self.get_user(str(snap.get("user_id"))) if snap.exists else None
