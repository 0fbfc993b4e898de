"""Users, teams and API tokens on Firestore, mixed into ``FirestoreStore``.

A user's name is unique: a ``user-names`` document (the name lock) is written in the same
conditional commit as the user, created if free or kept if this user's; a new name
deletes the user's old lock in that commit.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from google.cloud.firestore_v1 import FieldFilter

from ....core.accounts import ApiToken, Team
from ....core.models import User
from ....core.ports import UserNameTakenError
from .documents import (
    API_TOKENS,
    LOST,
    TEAMS,
    USER_NAMES,
    USERS,
    Collections,
    optimistic,
    unchanged,
)

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

    def list_users(self) -> list[User]:
        found = (User.model_validate_json(s.get("doc")) for s in self.col(USERS).stream())
        return sorted(found, key=lambda u: u.name)

    # -- teams ---------------------------------------------------------------------------

    def put_team(self, team: Team) -> None:
        self.col.doc(TEAMS, team.name).set({"doc": team.model_dump_json()})

    def get_team(self, name: str) -> Team | None:
        snap = self.col.doc(TEAMS, name).get()
        return Team.model_validate_json(snap.get("doc")) if snap.exists else None

    def list_teams(self) -> list[Team]:
        found = (Team.model_validate_json(s.get("doc")) for s in self.col(TEAMS).stream())
        return sorted(found, key=lambda t: t.name)

    # -- API tokens ----------------------------------------------------------------------

    def put_api_token(self, token: ApiToken) -> None:
        self.col.doc(API_TOKENS, token.token_hash).set(
            {"user_id": token.user_id, "doc": token.model_dump_json()}
        )

    @staticmethod
    def _token(snap: Any) -> ApiToken:
        data = snap.to_dict() or {}
        if data.get("doc"):
            return ApiToken.model_validate_json(data["doc"])
        return ApiToken.legacy(snap.id, str(data.get("user_id")))

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        snap = self.col.doc(API_TOKENS, token_hash).get()
        return self._token(snap) if snap.exists else None

    def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        query = self.col(API_TOKENS).where(filter=FieldFilter("user_id", "==", user_id))
        found = [self._token(s) for s in query.stream()]
        return sorted(found, key=lambda t: (t.created_at is not None, t.created_at, t.id))

    def touch_api_token(self, token_hash: str, at: datetime) -> None:
        """Rewrite ``doc`` with ``last_used_at``, conditional on the token being unchanged
        since read (a concurrent revoke wins; so does a concurrent touch)."""
        ref = self.col.doc(API_TOKENS, token_hash)
        snap = ref.get()
        if not snap.exists:
            return
        doc = self._token(snap).model_copy(update={"last_used_at": at}).model_dump_json()
        with contextlib.suppress(*LOST):
            ref.update({"doc": doc}, option=unchanged(self.client, snap))

    def delete_api_token(self, token_hash: str) -> bool:
        ref = self.col.doc(API_TOKENS, token_hash)
        snap = ref.get()
        if not snap.exists:
            return False
        try:
            ref.delete(option=unchanged(self.client, snap))
        except LOST:
            return False
        return True
