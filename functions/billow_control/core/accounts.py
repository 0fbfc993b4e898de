"""Users, teams, roles, API tokens and quota limits: what the store keeps about people.

A user belongs to exactly one team with one role. ``is_admin`` marks the deployment's
administrators (the first user of a deployment), who act on every team. Fields added
after a record was written take their defaults when it is read, so users stored by an
older version land in the team ``default`` as members (the bootstrap admin as that
team's admin is not implied: ``is_admin`` already lets it do everything).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TEAM = "default"
USER_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
TEAM_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Role(StrEnum):
    """``admin``: the team's clusters and users; ``member``: own clusters;
    ``viewer``: reads the team's clusters, changes nothing."""

    admin = "admin"
    member = "member"
    viewer = "viewer"


class TokenScope(StrEnum):
    """What a token may do besides what its user's role allows. ``read-only``: reads;
    ``clusters``: clusters and software, never tokens, users, teams or limits."""

    read_only = "read-only"
    clusters = "clusters"


class Limits(BaseModel):
    """Quota limits; ``None`` means "not set here" (the team's, then the deployment's
    default applies). Concurrent figures count active clusters; ``cpu_hours`` is per
    calendar month (UTC)."""

    model_config = ConfigDict(extra="forbid")

    cores: int | None = Field(default=None, ge=0, le=1_000_000, strict=True)
    gpus: int | None = Field(default=None, ge=0, le=100_000, strict=True)
    instances: int | None = Field(default=None, ge=0, le=100_000, strict=True)
    clusters: int | None = Field(default=None, ge=0, le=10_000, strict=True)
    cpu_hours: float | None = Field(default=None, ge=0, le=1e9)


class User(BaseModel):
    id: str
    name: str
    is_admin: bool = False
    team: str = DEFAULT_TEAM
    role: Role = Role.member
    disabled: bool = False
    limits: Limits = Field(default_factory=Limits)

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Team(BaseModel):
    name: str
    created_at: datetime
    limits: Limits = Field(default_factory=Limits)


class ApiToken(BaseModel):
    """An API token as stored: its SHA-256, never the token. ``expires_at`` ``None``
    never expires (tokens issued before expiry existed)."""

    id: str
    token_hash: str
    user_id: str
    name: str = ""
    scope: TokenScope | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def public(self) -> dict[str, Any]:
        """What its owner sees: everything but the hash."""
        return self.model_dump(mode="json", exclude={"token_hash", "user_id"})

    @classmethod
    def legacy(cls, token_hash: str, user_id: str) -> ApiToken:
        """A token stored before tokens had metadata: full scope, no expiry."""
        return cls(id=f"t-{token_hash[:16]}", token_hash=token_hash, user_id=user_id)


class Caller(User):
    """The user an API token authenticated, with that token (scope, expiry)."""

    token: ApiToken | None = Field(default=None, exclude=True)

    def public(self) -> dict[str, Any]:
        out = super().public()
        out["token"] = self.token.public() if self.token else None
        return out
