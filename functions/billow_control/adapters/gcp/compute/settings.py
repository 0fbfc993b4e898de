"""What a deployment configures for Compute Engine (``GceSettings``). Pure data and
validation: no Google calls."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A Compute Engine resource name (RFC 1035): what the deployment name must be, because
# it becomes part of firewall, template and network-tag names.
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_FAMILY = re.compile(r"^[a-z][a-z0-9]{1,5}$")
_ACCELERATOR = re.compile(r"^[a-z0-9-]{1,63}$")


class GceSettings(BaseModel):
    """How a deployment runs instances in Compute Engine. Unknown fields are rejected.

    Raises
    ------
    pydantic.ValidationError
        For an unknown field or a value Compute Engine would refuse; each message names
        the field and an example of an accepted value.
    """

    model_config = ConfigDict(extra="forbid")

    project: str = Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    zone: str
    deployment: str = Field(max_length=40)
    image: str = Field(
        default="projects/debian-cloud/global/images/family/debian-12",
        description="Boot image of instances (its python3 runs the bootstrap).",
    )
    machine_families: list[str] = Field(
        default_factory=lambda: ["e2", "n2", "n2d"],
        min_length=1,
        max_length=10,
        description="Machine families to choose from, in order of preference.",
    )
    purchase: Literal["spot", "standard", "spot_with_fallback"] = "spot_with_fallback"
    worker_gpu: tuple[str, int] | None = Field(
        default=None, description="Accelerator type and count of each worker."
    )
    network: str = "global/networks/default"
    subnetwork: str | None = None
    allowed_cidr: str = Field(
        default="0.0.0.0/0",
        description="Who may reach schedulers and dashboards (mutual TLS guards them).",
    )
    scheduler_port: int = Field(default=8786, ge=1, le=65535)
    dashboard_port: int = Field(default=8787, ge=1, le=65535)
    disk_gb: int = Field(default=50, ge=10, le=65536)
    service_account: str | None = Field(
        default=None, description="Service account of instances; it may write logs."
    )
    log_name: str = Field(default="billow-agent", pattern=r"^[A-Za-z0-9_./-]{1,100}$")

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, v: str) -> str:
        if not _ZONE.match(v):
            raise ValueError(f"{v!r} is not a Compute Engine zone such as 'us-central1-a'")
        return v

    @field_validator("deployment")
    @classmethod
    def _check_deployment(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(
                f"{v!r} must be lower-case letters, digits and '-', starting with a letter "
                "(it names firewall rules and network tags), such as 'prod'"
            )
        return v

    @field_validator("machine_families")
    @classmethod
    def _check_families(cls, v: list[str]) -> list[str]:
        for family in v:
            if not _FAMILY.match(family):
                raise ValueError(f"{family!r} is not a machine family such as 'e2' or 'n2'")
        return v

    @field_validator("worker_gpu", mode="before")
    @classmethod
    def _check_gpu(cls, v: object) -> object:
        """``"nvidia-tesla-t4:1"`` (a bare type means one) or a pair."""
        if isinstance(v, str):
            kind, _, count = v.strip().partition(":")
            if not kind:
                return None
            if not _ACCELERATOR.match(kind) or (count and not count.isdigit()):
                raise ValueError(f"{v!r} is not an accelerator such as 'nvidia-tesla-t4:1'")
            return (kind, int(count or 1))
        return v

    @field_validator("allowed_cidr")
    @classmethod
    def _check_allowed(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise ValueError(f"{v!r} is not a CIDR block such as '203.0.113.7/32'") from e

    @model_validator(mode="after")
    def _check(self) -> GceSettings:
        if self.scheduler_port == self.dashboard_port:
            raise ValueError("scheduler_port and dashboard_port must differ")
        if self.worker_gpu is not None and not 1 <= self.worker_gpu[1] <= 16:
            raise ValueError("worker_gpu: the count must be from 1 to 16")
        return self

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]
