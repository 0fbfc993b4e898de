"""Use cases of people: authentication, API tokens, users and teams.

Every method asks ``core.access`` first. Tokens are returned once, when issued, and
stored as SHA-256 hashes with their metadata (``ApiToken``). ``last_used_at`` is written
at most once per ``TOUCH_INTERVAL`` per token, so a busy client costs one extra write a
minute, not one per request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from . import access
from .access import Action
from .accounts import DEFAULT_TEAM, ApiToken, Caller, Limits, Role, Team, TokenScope, User
from .auth import API_TOKEN_PREFIX, hash_token, new_token
from .errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from .models import new_id
from .ports import Ports, UserNameTakenError

TOUCH_INTERVAL = timedelta(minutes=1)

SINGLE_TENANT = (
    "this server is single-tenant: it cannot isolate one user's instances from another's "
    "(they would run as the same OS user as the server and could read its secrets), so "
    "it serves one user only. To serve several users, run `billow server` as root, with "
    "billow installed where unprivileged users can read it (each user's instances then "
    "run as an OS user of their own; the server's log says what is missing), or run one "
    "server per user."
)


class AccountService:
    """Authentication, tokens, users and teams over the runtime's ``Ports``."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Caller:
        """The user owning an API token, with the token. Raises ``Unauthorized`` for a
        missing, unknown (or revoked), expired token, or a disabled user."""
        if not token:
            raise Unauthorized("missing bearer token; run `billow login` or pass token=")
        store, now = self.ports.store, self.ports.clock.now()
        stored = store.get_api_token(hash_token(token))
        if stored is None:
            raise Unauthorized("invalid API token")
        if stored.expired(now):
            raise Unauthorized(
                f"API token {stored.id} expired at {stored.expires_at:%Y-%m-%d %H:%M} UTC; "
                "ask for a new one (`billow token create` with a valid token, or an admin)"
            )
        user = store.get_user(stored.user_id)
        if user is None or user.disabled:
            raise Unauthorized("this user is disabled; ask an admin")
        if stored.last_used_at is None or now - stored.last_used_at >= TOUCH_INTERVAL:
            store.touch_api_token(stored.token_hash, now)
            stored = stored.model_copy(update={"last_used_at": now})
        return Caller(**user.model_dump(), token=stored)

    def whoami(self, user: User) -> dict[str, Any]:
        access.require(user, Action.whoami)
        return user.public()

    # -- tokens --------------------------------------------------------------------------

    def issue_token(
        self,
        user: User,
        name: str = "",
        scope: TokenScope | None = None,
        lifetime: float | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token of ``user`` (stored hashed) and the token itself, shown once.

        ``lifetime`` seconds, at most (and by default) ``settings.tokens_lifetime``; 0
        there means tokens never expire. Raises ``Invalid`` on ``lifetime`` otherwise.
        """
        longest = self.ports.settings.tokens_lifetime
        if lifetime is not None and (lifetime <= 0 or (longest and lifetime > longest)):
            days = f"{longest / 86400:g} days" if longest else "no limit"
            raise Invalid(f"lifetime must be positive and at most {days}", field="lifetime")
        seconds = lifetime or longest
        now = self.ports.clock.now()
        token = new_token(API_TOKEN_PREFIX)
        stored = ApiToken(
            id=new_id("t"),
            token_hash=hash_token(token),
            user_id=user.id,
            name=name,
            scope=scope,
            created_at=now,
            expires_at=now + timedelta(seconds=seconds) if seconds else None,
        )
        self.ports.store.put_api_token(stored)
        return stored, token

    def create_token(
        self, user: User, name: str, scope: TokenScope | None, lifetime: float | None
    ) -> dict[str, Any]:
        """A new token for the caller. A scoped token cannot make tokens (403), so a
        token never begets one with more rights."""
        access.require(user, Action.manage_tokens)
        stored, token = self.issue_token(user, name, scope, lifetime)
        return {**stored.public(), "token": token}

    def list_tokens(self, user: User) -> list[dict[str, Any]]:
        access.require(user, Action.list_tokens)
        return [t.public() for t in self.ports.store.list_api_tokens(user.id)]

    def revoke_token(self, user: User, token_id: str) -> dict[str, Any]:
        """Revoke one of the caller's tokens at once (404 for another user's)."""
        access.require(user, Action.manage_tokens)
        for stored in self.ports.store.list_api_tokens(user.id):
            if stored.id == token_id:
                self.ports.store.delete_api_token(stored.token_hash)
                return {**stored.public(), "revoked": True}
        raise NotFound(f"no token {token_id!r}", field="token_id")

    # -- users ---------------------------------------------------------------------------

    def create_user(
        self,
        name: str,
        is_admin: bool = False,
        team: str = DEFAULT_TEAM,
        role: Role = Role.member,
    ) -> tuple[User, str]:
        """A new user and its first API token (returned once, stored hashed).

        Raises ``Conflict`` on ``name`` when another user has that name.
        """
        user = User(id=new_id("u"), name=name, is_admin=is_admin, team=team, role=role)
        try:
            self.ports.store.put_user(user)
        except UserNameTakenError:
            raise Conflict(f"a user named {name!r} already exists", field="name") from None
        return user, self.issue_token(user, "first")[1]

    def add_user(
        self, admin: User, name: str, team: str | None = None, role: Role = Role.member
    ) -> dict[str, Any]:
        """Admins create users (team admins: in their team); the new token is in the
        answer and nowhere else. ``team`` must exist (``Invalid`` otherwise).

        A single-tenant deployment (``ControlSettings.multi_tenant`` off: its instances
        could read one another's files and the control plane's) refuses any user beyond
        the first with ``Conflict``.
        """
        access.require(admin, Action.manage_users)
        team = team or admin.team
        if not admin.is_admin and team != admin.team:
            raise Forbidden("a team admin adds users to their own team only", field="team")
        self._team(team, field="team")
        if not self.ports.settings.multi_tenant and self.ports.store.count_users() > 0:
            raise Conflict(SINGLE_TENANT)
        user, token = self.create_user(name, team=team, role=role)
        return {**user.public(), "token": token}

    def list_users(self, admin: User, team: str | None = None) -> list[dict[str, Any]]:
        """The users ``admin`` manages (``access.manages``), optionally of one team."""
        access.require(admin, Action.manage_users)
        users = self.ports.store.list_users()
        return [
            u.public()
            for u in users
            if access.manages(admin, u) and (team is None or u.team == team)
        ]

    def find_user(self, admin: User, name: str) -> User:
        """The user named ``name`` if ``admin`` manages it; ``NotFound`` otherwise."""
        access.require(admin, Action.manage_users)
        for user in self.ports.store.list_users():
            if user.name == name and access.manages(admin, user):
                return user
        raise NotFound(f"no user {name!r}", field="name")

    def set_disabled(self, admin: User, name: str, disabled: bool = True) -> dict[str, Any]:
        """Disable a user, revoking every token of theirs at once (their clusters run on
        until stopped), or enable one again (they need a new token from an admin)."""
        user = self.find_user(admin, name)
        if user.id == admin.id:
            raise Conflict("you cannot disable yourself", field="name")
        user = user.model_copy(update={"disabled": disabled})
        self.ports.store.put_user(user)
        if disabled:
            for stored in self.ports.store.list_api_tokens(user.id):
                self.ports.store.delete_api_token(stored.token_hash)
        return user.public()

    def new_user_token(self, admin: User, name: str) -> dict[str, Any]:
        """A fresh token for a user an admin manages (a lost one, or after enabling)."""
        user = self.find_user(admin, name)
        if user.disabled:
            raise Conflict(f"user {name!r} is disabled; enable it first", field="name")
        stored, token = self.issue_token(user, "issued by an admin")
        return {**stored.public(), "user": user.name, "token": token}

    def set_user_limits(self, admin: User, name: str, limits: Limits) -> dict[str, Any]:
        """Replace a user's quota limits (deployment admins); unset fields fall back to
        the deployment's defaults."""
        access.require(admin, Action.set_limits)
        user = self.find_user(admin, name).model_copy(update={"limits": limits})
        self.ports.store.put_user(user)
        return user.public()

    def set_team_limits(self, admin: User, name: str, limits: Limits) -> dict[str, Any]:
        """Replace a team's quota limits (deployment admins); unset fields: no limit."""
        access.require(admin, Action.set_limits)
        team = self._team(name, missing=NotFound).model_copy(update={"limits": limits})
        self.ports.store.put_team(team)
        return team.model_dump(mode="json")

    # -- teams ---------------------------------------------------------------------------

    def add_team(self, admin: User, name: str) -> dict[str, Any]:
        access.require(admin, Action.manage_teams)
        team = Team(name=name, created_at=self.ports.clock.now())
        if name == DEFAULT_TEAM or self.ports.store.get_team(name) is not None:
            raise Conflict(f"a team named {name!r} already exists", field="name")
        self.ports.store.put_team(team)
        return team.model_dump(mode="json")

    def list_teams(self, admin: User) -> list[dict[str, Any]]:
        """Every team for a deployment admin, their own for a team admin."""
        access.require(admin, Action.manage_users)
        teams = [self._team(DEFAULT_TEAM), *self.ports.store.list_teams()]
        return [t.model_dump(mode="json") for t in teams if admin.is_admin or t.name == admin.team]

    def team_members(self, admin: User, name: str) -> list[dict[str, Any]]:
        access.require(admin, Action.manage_users)
        if not admin.is_admin and name != admin.team:
            raise NotFound(f"no team {name!r}", field="team")
        self._team(name, field="team", missing=NotFound)
        return self.list_users(admin, team=name)

    def _team(self, name: str, field: str = "team", missing: type = Invalid) -> Team:
        """The team ``name``; ``default`` exists without being stored."""
        team = self.ports.store.get_team(name)
        if team is not None:
            return team
        if name == DEFAULT_TEAM:
            return Team(name=DEFAULT_TEAM, created_at=datetime(1970, 1, 1, tzinfo=UTC))
        raise missing(f"no team {name!r}; create it with `billow admin team add`", field=field)

    def bootstrap_admin(self) -> str | None:
        """Create the first admin and return its token, or ``None`` if users exist."""
        if self.ports.store.count_users() > 0:
            return None
        return self.create_user("admin", is_admin=True, role=Role.admin)[1]
