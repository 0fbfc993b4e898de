"""Pydantic models of the control plane: what users ask for and what the store holds.

Every validation error names the field and the allowed values, so the HTTP layer can
return it verbatim and the SDK can raise it as a typed exception.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import tags
from .accounts import DEFAULT_TEAM, TEAM_PATTERN, USER_NAME_PATTERN, Role
from .accounts import User as User  # re-exported: users were defined here
from .instances import InstanceCredential as InstanceCredential  # re-exported, as above
from .instances import InstanceInfo as InstanceInfo
from .instances import InstanceRole as InstanceRole
from .instances import InstanceSpec as InstanceSpec
from .instances import InstanceState as InstanceState
from .placement import Placement
from .software import NAME_PATTERN, SoftwareSpec
from .units import MAX_MEMORY, parse_bytes, parse_duration

MAX_WORKERS = 1000
MAX_SECRETS = 64
MAX_SECRETS_BYTES = 64 * 1024  # names and values, UTF-8
# A software environment by name, optionally at one revision: ``etl`` or ``etl:3``.
ENVIRONMENT_REF_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}(:[1-9][0-9]{0,8})?$"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


class ClusterStatus(StrEnum):
    pending = "pending"
    provisioning = "provisioning"
    ready = "ready"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (ClusterStatus.stopped, ClusterStatus.failed)


class ClusterTarget(StrEnum):
    running = "running"
    stopped = "stopped"


WorkerCount = Annotated[int, Field(strict=True, ge=0, le=MAX_WORKERS)]


class ClusterRequest(Placement):
    """What a user asks for. Unknown fields are rejected, not ignored. Placement fields
    (machine types, arm, GPUs, spot, ingress) come from ``core.placement.Placement``."""

    # Validation errors never quote the input: it may hold secrets.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits and dashes, at most 63 characters. "
        "Unique among the owner's active clusters; generated when omitted.",
    )
    n_workers: WorkerCount | list[WorkerCount] = Field(
        default=4,
        description=f"Worker count (0..{MAX_WORKERS}) or [minimum, maximum] for adaptive scaling.",
    )
    worker_cpu: int = Field(default=1, ge=1, le=64, strict=True)
    worker_memory: str = Field(default="2 GiB", description="For example '4 GiB'.")
    scheduler_cpu: int = Field(default=1, ge=1, le=64, strict=True)
    scheduler_memory: str = Field(default="2 GiB")
    idle_timeout: str | float | None = Field(
        default=None,
        description="Stop after this long with no tasks and no client activity, e.g. '20m'; "
        "the deployment default when omitted.",
    )
    no_client_timeout: str | float | None = Field(
        default=None,
        description="Stop this long after the last client disconnected (only once a client "
        "has connected); the deployment default when omitted.",
    )
    cluster_timeout: str | float | None = Field(
        default=None, description="Maximum lifetime, e.g. '8h'; no limit when omitted."
    )
    analytics: Literal["off", "minimal", "full"] = Field(
        default="minimal",
        description="What the scheduler plugin reports; 'off' sends only liveness and idleness.",
    )
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)
    environ: dict[str, str] = Field(
        default_factory=dict,
        max_length=128,
        description="Plain configuration set in every instance's environment; stored and "
        "returned as given. Put credentials in 'secrets'.",
    )
    # Never serialized (exclude) nor shown in a repr: the core seals the values with the
    # secret box before the record exists, and records keep only the names.
    secrets: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_SECRETS,
        exclude=True,
        repr=False,
        description=f"Variables set in every instance's environment like 'environ', for "
        f"credentials: encrypted at rest, handed only to the cluster's instances, never "
        f"returned (the cluster lists their names). At most {MAX_SECRETS} entries and "
        f"{MAX_SECRETS_BYTES // 1024} KiB in all; a name may not also be in 'environ'.",
    )
    software: SoftwareSpec | None = Field(
        default=None,
        description="The environment every instance runs (package sync or a named "
        "environment): pinned packages, wheels of local code by sha256. Omitted: the "
        "instance image's own Python environment.",
    )
    software_environment: str | None = Field(
        default=None,
        pattern=ENVIRONMENT_REF_PATTERN,
        description="A software environment of yours by name ('etl', its latest revision) "
        "or at one revision ('etl:3'); the control plane stores the spec it names at create, "
        "so later revisions never change this cluster. Excludes 'software'.",
    )
    shutdown_on_close: bool = True

    @model_validator(mode="after")
    def _one_software_source(self) -> ClusterRequest:
        if self.software is not None and self.software_environment is not None:
            raise ValueError(
                "software and software_environment are mutually exclusive: give a spec "
                "or the name of a software environment, not both"
            )
        return self

    @field_validator("n_workers")
    @classmethod
    def _check_range(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list) and (len(v) != 2 or v[0] > v[1]):
            raise ValueError("must be an integer or [minimum, maximum] with minimum <= maximum")
        return v

    @field_validator("worker_memory", "scheduler_memory")
    @classmethod
    def _check_memory(cls, v: str) -> str:
        try:
            n = parse_bytes(v)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{v[:40]!r} is not a memory size such as '4 GiB' ({e})") from None
        if n < 256 * 2**20:
            raise ValueError("must be at least 256 MiB")
        if n > MAX_MEMORY:
            raise ValueError("must be at most 1 PiB")
        return v

    @field_validator("idle_timeout", "no_client_timeout", "cluster_timeout")
    @classmethod
    def _check_timeout(cls, v: str | float | None) -> str | float | None:
        seconds = parse_duration(v)
        if seconds is not None and not (10 <= seconds <= 7 * 86400):
            raise ValueError("must be between 10 seconds and 7 days")
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if tags.is_reserved(key):
                raise ValueError(f"tag {key!r} uses the reserved prefix {tags.PREFIX!r}")
        return v

    @field_validator("environ", "secrets")
    @classmethod
    def _check_variables(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # What an instance can put in its environment: never echo a value in a message.
        for key, value in v.items():
            if not key or "=" in key or "\0" in key:
                raise ValueError(
                    f"{key!r} is not a variable name: it must be non-empty, without '=' or NUL"
                )
            if "\0" in value:
                raise ValueError(f"the value of {key!r} contains a NUL character")
        if info.field_name == "secrets":
            size = sum(len(k.encode()) + len(x.encode()) for k, x in v.items())
            if size > MAX_SECRETS_BYTES:
                raise ValueError(
                    f"secrets are {size} bytes; at most {MAX_SECRETS_BYTES} (names and values)"
                )
            both = sorted(set(v) & set(info.data.get("environ") or {}))
            if both:
                raise ValueError(
                    f"{', '.join(map(repr, both))} in both environ and secrets; "
                    "give each variable once"
                )
        return v

    @property
    def worker_bounds(self) -> tuple[int, int]:
        if isinstance(self.n_workers, list):
            return self.n_workers[0], self.n_workers[1]
        return self.n_workers, self.n_workers

    @property
    def initial_workers(self) -> int:
        return self.worker_bounds[0]


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_workers: WorkerCount
    remove: list[str] = Field(
        default_factory=list,
        description="Names of workers to remove first when scaling down (already retired).",
    )


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=USER_NAME_PATTERN)
    team: str | None = Field(
        default=None,
        pattern=TEAM_PATTERN,
        description="An existing team; the admin's own when omitted.",
    )
    role: Role = Role.member


# Where the scheduler and its dashboard listen, as a heartbeat reports them and as the
# cluster record keeps them from ready on.
ADDRESS_FIELDS = (
    "scheduler_address",
    "dashboard_address",
    "scheduler_public_address",
    "dashboard_public_address",
)


class Heartbeat(BaseModel):
    """What the scheduler plugin sends. Extra metrics are kept but never required."""

    model_config = ConfigDict(extra="allow")

    scheduler_address: str
    dashboard_address: str | None = None
    # As clients outside the instance's network reach it (its public IP), when it has one.
    scheduler_public_address: str | None = None
    dashboard_public_address: str | None = None
    workers: list[str] = Field(default_factory=list)
    busy: bool = False
    idle_seconds: float = Field(default=0.0, ge=0)
    clients: int = Field(default=0, ge=0)
    seconds_without_clients: float | None = Field(
        default=None,
        description="Since the last client left; None while one is connected "
        "or before any client ever connected.",
    )
    gpus: int = 0
    spot_interrupted: list[str] = Field(default_factory=list)  # workers noticed, cumulative
    gpu_low_seconds: float | None = Field(
        default=None, description="How long GPU utilisation has stayed below the threshold."
    )
    # 'minimal' and 'full' analytics (see docs/analytics.md)
    n_threads: int | None = None
    memory_bytes: int | None = None
    tasks_processing: int | None = None
    tasks_queued: int | None = None
    versions: dict[str, str] | None = None

    def addresses(self) -> dict[str, str | None]:
        """The reported addresses, by ``ADDRESS_FIELDS`` name."""
        return {name: getattr(self, name) for name in ADDRESS_FIELDS}

    def __repr__(self) -> str:
        """Short: the API's debug logging formats every heartbeat it routes."""
        return (
            f"Heartbeat(scheduler_address={self.scheduler_address!r}, "
            f"workers={len(self.workers)}, busy={self.busy}, clients={self.clients})"
        )


class ClusterRecord(BaseModel):
    """The stored state of one cluster: ``status`` is what is, ``target`` what is wanted."""

    id: str
    owner: str
    name: str
    team: str = DEFAULT_TEAM  # the owner's team at create (records before teams: default)
    request: ClusterRequest
    status: ClusterStatus = ClusterStatus.pending
    target: ClusterTarget = ClusterTarget.running
    desired_workers: int
    remove_workers: list[str] = Field(default_factory=list)
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    ready_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    error: str | None = None
    error_logs: list[str] = Field(default_factory=list)
    fail_on_stop: bool = False
    idempotency_key: str | None = None  # SHA-256 of the create's Idempotency-Key; hidden
    warnings: list[str] = Field(default_factory=list)
    spot_interruptions: int = 0
    scheduler_address: str | None = None
    dashboard_address: str | None = None
    scheduler_public_address: str | None = None
    dashboard_public_address: str | None = None
    software_environment: str | None = Field(
        default=None,
        description="'name:revision' of the software environment whose spec "
        "request.software holds, when the cluster was asked for one by name.",
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of the cluster's secrets (request.secrets), sorted. Their "
        "values are sealed by the secret box in the store, never in the record.",
    )

    @property
    def active(self) -> bool:
        return not self.status.terminal

    def public(self, heartbeat: HeartbeatRecord | None = None) -> dict[str, Any]:
        """The JSON users see: no secrets, plus the latest observed workers, and the
        scheduler's addresses from its reports before the record holds them (it does
        from ready on): a client connects while the workers join."""
        hidden = {"version", "remove_workers", "fail_on_stop", "idempotency_key"}
        out = self.model_dump(mode="json", exclude=hidden)
        if heartbeat and self.scheduler_address is None:
            out.update(heartbeat.heartbeat.addresses())
        out["workers"] = len(heartbeat.heartbeat.workers) if heartbeat else 0
        out["last_heartbeat_at"] = heartbeat.received_at.isoformat() if heartbeat else None
        return out


class HeartbeatRecord(BaseModel):
    cluster_id: str
    received_at: datetime
    heartbeat: Heartbeat


class ReconcileResult(BaseModel):
    """``done`` when the cluster reached its target; otherwise run again after ``wait``."""

    done: bool
    wait: float = 0.0
    status: ClusterStatus
