"""What a deployment configures for EC2 (``EC2Settings``), and where a cluster runs
(``Network``). Pure data and validation: no AWS calls."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
_LOG_GROUP = re.compile(r"^[.\-_/#A-Za-z0-9]{1,512}$")


class EC2Settings(BaseModel):
    """How a deployment runs instances in EC2. Unknown fields are rejected.

    Raises
    ------
    pydantic.ValidationError
        For an unknown field or a value that EC2 would refuse; each message names the
        field and an example of an accepted value.
    """

    model_config = ConfigDict(extra="forbid")

    ami_id: str | None = Field(
        default=None,
        pattern=r"^ami-[0-9a-f]{8,17}$",
        description="Image of every instance; None: the latest Amazon Linux 2023 of the "
        "cluster's architecture (SSM public parameter).",
    )
    instance_types: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="The types the automatic choice picks from; empty: all of the region.",
    )
    purchase: Literal["spot", "on-demand", "spot_with_fallback"] = "spot_with_fallback"
    subnet_ids: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Reuse these subnets instead of creating a VPC.",
    )
    security_group_id: str | None = Field(
        default=None, description="Reuse this group for every cluster instead of one per cluster."
    )
    vpc_cidr: str = "10.86.0.0/16"
    max_subnets: int = Field(default=3, ge=1, le=6, description="Availability zones to span.")
    allowed_cidr: str = Field(
        description="Who may reach the scheduler and dashboard; the "
        "composition root passes the requester's CIDR."
    )
    scheduler_port: int = Field(default=8786, ge=1, le=65535)
    dashboard_port: int = Field(default=8787, ge=1, le=65535)
    log_group: str = "/billow/instances"
    instance_profile_arn: str | None = Field(
        default=None, description="Lets the instance's log agent write to ``log_group``."
    )
    warm_pool_size: int = Field(
        default=0,
        ge=0,
        le=50,
        description="Stopped instances kept per pool type (``billow.aws.warm-pool.size``); "
        "0: no warm pool, every launch is a cold start.",
    )
    warm_pool_types: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Instance types the warm pool keeps; empty: the first of "
        "``instance_types`` (no pool when that is empty too).",
    )

    @field_validator("instance_types", "warm_pool_types")
    @classmethod
    def _check_types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _INSTANCE_TYPE.match(t):
                raise ValueError(f"{t!r} is not an EC2 instance type such as 'm6i.large'")
        return v

    @field_validator("vpc_cidr")
    @classmethod
    def _check_vpc_cidr(cls, v: str) -> str:
        net = ipaddress.ip_network(v)
        if net.version != 4 or not 16 <= net.prefixlen <= 24:
            raise ValueError("must be an IPv4 network from /16 to /24, such as '10.86.0.0/16'")
        return str(net)

    @field_validator("allowed_cidr")
    @classmethod
    def _check_allowed(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise ValueError(f"{v!r} is not a CIDR block such as '203.0.113.7/32'") from e

    @field_validator("log_group")
    @classmethod
    def _check_log_group(cls, v: str) -> str:
        if not _LOG_GROUP.match(v):
            raise ValueError("may contain only letters, digits and . - _ / #")
        return v

    @model_validator(mode="after")
    def _check_ports(self) -> EC2Settings:
        if self.scheduler_port == self.dashboard_port:
            raise ValueError("scheduler_port and dashboard_port must differ")
        return self


class Network(BaseModel):
    """Where a cluster's instances run: subnets and the security group they share.

    ``vpc_id`` is ``None`` only when configured subnets and a configured security group
    are used as they are (the VPC is then never looked up).
    """

    vpc_id: str | None
    subnet_ids: list[str]
    security_group_id: str
