"""Token, user and team routes: ``/v1/tokens`` (the caller's own API tokens) and
``/v1/admin/...`` (users and teams). Each calls one ``AccountService`` method for the
caller the guard authenticated; ``core.access`` decides who may."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.accounts import TEAM_PATTERN, USER_NAME_PATTERN, Limits, TokenScope
from ..core.models import NewUser
from ..core.service import ControlPlane
from ..core.units import parse_duration
from .guard import caller
from .openapi import created
from .responses import json_response

UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN, max_length=64)]
TeamName = Annotated[str, Path(pattern=TEAM_PATTERN)]
TokenId = Annotated[str, Path(pattern=r"^t-[0-9a-f]{16}$", description="A token's id (t-...).")]


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=64, description="A label to recognise it by.")
    scope: TokenScope | None = Field(
        default=None,
        description="'read-only' (reads only) or 'clusters' (clusters and software, not "
        "tokens, users, teams or limits); omitted: everything your role allows.",
    )
    lifetime: str | float | None = Field(
        default=None,
        description="How long it lives, e.g. '30d'; at most (and by default) the "
        "deployment's billow.tokens.lifetime (90 days unless configured).",
    )

    @field_validator("lifetime")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        seconds = parse_duration(v)
        if seconds is not None and not 60 <= seconds <= 10 * 365 * 86400:
            raise ValueError("must be between 1 minute and 10 years")
        return v


class NewTeam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TEAM_PATTERN, description="Lower-case letters, digits, dashes.")


def account_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    def accounts() -> Any:
        return plane().accounts

    @router.get("/v1/whoami")
    def whoami() -> dict[str, Any]:
        """Who the token belongs to: name, team, role, and the token's scope and expiry."""
        return accounts().whoami(caller(router))

    # -- the caller's tokens -------------------------------------------------------------

    @router.get("/v1/tokens")
    def list_tokens() -> dict[str, Any]:
        """Your API tokens (never the tokens themselves): id, name, scope, expiry, last use."""
        return {"tokens": accounts().list_tokens(caller(router))}

    @router.post("/v1/tokens", responses=created())
    def create_token(request: NewToken) -> Response[dict[str, Any]]:
        """A new API token of yours, shown once. Scoped tokens cannot make tokens."""
        lifetime = parse_duration(request.lifetime)
        token = accounts().create_token(caller(router), request.name, request.scope, lifetime)
        return json_response(token, 201)

    @router.delete("/v1/tokens/<token_id>")
    def revoke_token(token_id: TokenId) -> dict[str, Any]:
        """Revoke one of your tokens: it stops working at once."""
        return accounts().revoke_token(caller(router), token_id)

    # -- users (deployment admins: everyone; team admins: their team) --------------------

    @router.post("/v1/users", responses=created())
    def add_user(new_user: NewUser) -> Response[dict[str, Any]]:
        """A new user (admins only) and its API token, shown once. (As /v1/admin/users.)"""
        return _add_user(new_user)

    @router.post("/v1/admin/users", responses=created())
    def admin_add_user(new_user: NewUser) -> Response[dict[str, Any]]:
        """A new user in a team (team admins: their own) and its API token, shown once."""
        return _add_user(new_user)

    def _add_user(new_user: NewUser) -> Response[dict[str, Any]]:
        user = accounts().add_user(caller(router), new_user.name, new_user.team, new_user.role)
        return json_response(user, 201)

    @router.get("/v1/admin/users")
    def list_users(team: Annotated[str | None, Query(pattern=TEAM_PATTERN)] = None) -> dict:
        """The users you manage, optionally of one team."""
        return {"users": accounts().list_users(caller(router), team)}

    @router.post("/v1/admin/users/<name>/disable")
    def disable_user(name: UserName) -> dict[str, Any]:
        """Disable a user: every token of theirs stops working at once."""
        return accounts().set_disabled(caller(router), name, True)

    @router.post("/v1/admin/users/<name>/enable")
    def enable_user(name: UserName) -> dict[str, Any]:
        """Enable a disabled user again (they need a new token: POST .../tokens)."""
        return accounts().set_disabled(caller(router), name, False)

    @router.post("/v1/admin/users/<name>/tokens", responses=created())
    def issue_user_token(name: UserName) -> Response[dict[str, Any]]:
        """A new API token for a user you manage, shown once."""
        return json_response(accounts().new_user_token(caller(router), name), 201)

    @router.put("/v1/admin/users/<name>/limits")
    def set_user_limits(name: UserName, limits: Limits) -> dict[str, Any]:
        """Replace a user's quota limits (deployment admins); omitted: the default."""
        return accounts().set_user_limits(caller(router), name, limits)

    # -- teams ---------------------------------------------------------------------------

    @router.get("/v1/admin/teams")
    def list_teams() -> dict[str, Any]:
        """Every team (deployment admins), or your own (team admins)."""
        return {"teams": accounts().list_teams(caller(router))}

    @router.post("/v1/admin/teams", responses=created())
    def add_team(request: NewTeam) -> Response[dict[str, Any]]:
        """A new team (deployment admins only)."""
        return json_response(accounts().add_team(caller(router), request.name), 201)

    @router.get("/v1/admin/teams/<name>/members")
    def team_members(name: TeamName) -> dict[str, Any]:
        """The users of one team, with their roles."""
        return {"users": accounts().team_members(caller(router), name)}

    @router.put("/v1/admin/teams/<name>/limits")
    def set_team_limits(name: TeamName, limits: Limits) -> dict[str, Any]:
        """Replace a team's quota limits (deployment admins); omitted: no limit."""
        return accounts().set_team_limits(caller(router), name, limits)

    return router
