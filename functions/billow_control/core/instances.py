"""Instances as the core and the providers speak of them: what the reconciler asks a
provider to run (``InstanceSpec``), what a provider reports (``InstanceInfo``), and the
one-time credential an instance bootstraps with. ``core.models`` re-exports each."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class InstanceRole(StrEnum):
    scheduler = "scheduler"
    worker = "worker"


class InstanceSpec(BaseModel):
    """What the reconciler asks a provider to run. ``name`` is unique within the cluster
    (a replacement gets a fresh name), so ``client_token`` makes the launch idempotent."""

    cluster_id: str
    name: str
    role: InstanceRole
    cpu: int
    memory: str
    tags: dict[str, str]
    environment: dict[str, str]
    # CIDR blocks that may reach the scheduler and dashboard; empty: the deployment's.
    ingress: list[str] = Field(default_factory=list)
    # Machine types in order of preference (empty: the deployment's), their
    # architecture, and spot, on-demand or spot_with_fallback (None: the deployment's).
    vm_types: list[str] = Field(default_factory=list)
    arch: str = "x86_64"
    spot_policy: str | None = None
    after_interruption: bool = False  # the cluster lost spot capacity: fall back sooner

    @property
    def client_token(self) -> str:
        return f"{self.cluster_id}-{self.name}"


class InstanceState(StrEnum):
    pending = "pending"
    running = "running"
    terminated = "terminated"


class InstanceInfo(BaseModel):
    id: str
    cluster_id: str
    name: str
    role: InstanceRole
    state: InstanceState
    tags: dict[str, str] = Field(default_factory=dict)
    launched_at: datetime
    exit_code: int | None = None
    # For metering (``core.metering``); ``None``/unknown when the provider cannot tell.
    terminated_at: datetime | None = None  # the provider's own termination time
    machine_type: str | None = None
    vcpus: int | None = None
    gpus: int = 0
    spot: bool = False
    # ``host:port`` where this instance's scheduler will listen, when the provider fixed
    # it at launch (the embedded provider); ``None``: known from its first heartbeat.
    listen_address: str | None = None


class InstanceCredential(BaseModel):
    """A one-time bootstrap token, stored by hash, naming the instance it belongs to."""

    token_hash: str
    cluster_id: str
    instance_name: str
    role: InstanceRole
    used: bool = False
    expires_at: datetime
    # A worker's: its scheduler's address when the provider fixed it at launch, so the
    # worker bootstraps and connects without waiting for the scheduler's first report.
    scheduler_address: str | None = None

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at
