"""Deployment settings the core needs, built the same way by every runtime.

The embedded server reads them from ``dask.config`` (``billow.idle-timeout``...), Lambda
and Cloud Functions from ``BILLOW_<FIELD>`` environment variables; both go through
``ControlSettings.from_values``, which parses durations such as ``"20m"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .units import parse_duration

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AGENT_WHEEL = re.compile(r"^[0-9a-f]{64}/[A-Za-z0-9_.+!-]+\.whl$")
UV_MACHINES = ("x86_64", "aarch64")  # platform.machine() of the instances uv is kept for

DURATIONS = (
    "start_timeout",
    "idle_timeout",
    "no_client_timeout",
    "heartbeat_loss_timeout",
    "heartbeat_interval",
    "heartbeat_steady_interval",
    "instance_token_ttl",
    "reconcile_interval",
    "poll_interval",
    "reaper_interval",
    "orphan_grace",
    "gpu_idle_warning",
    "tokens_lifetime",
)


class ControlSettings(BaseModel):
    """Durations are seconds (a number, or a string such as ``"20m"``)."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = "embedded"
    control_url: str = "http://127.0.0.1:8787"
    start_timeout: float = 600.0
    idle_timeout: float = 1200.0
    no_client_timeout: float = 120.0
    heartbeat_loss_timeout: float = 1200.0
    heartbeat_interval: float = 5.0  # while a cluster starts or changes
    heartbeat_steady_interval: float = 60.0  # once ready, when nothing changes
    instance_token_ttl: float = 900.0
    reconcile_interval: float = 0.5
    # How long a waiting caller waits between two requests: a worker waiting for its
    # scheduler's address, the SDK waiting for ready. Free on the embedded server; each
    # request costs API Gateway and Lambda (or Cloud Functions) on a cloud control plane.
    poll_interval: float = 0.1
    log_lines_on_failure: int = 30
    reaper_interval: float = 30.0
    orphan_grace: float = 300.0
    gpu_utilization_threshold: float = 0.1
    gpu_idle_warning: float = 900.0
    # ``billow.tokens.lifetime``: how long a new API token lives (0: forever); also the
    # longest lifetime a user may ask for.
    tokens_lifetime: float = Field(default=90 * 86400.0, ge=0)
    # At most this many instances launched per reconcile step (``billow.launch-batch``).
    launch_batch: int = Field(default=20, ge=1, le=1000)
    # Deployment defaults of each user's quotas (``billow.quotas.user.cores``...), which a
    # user's own limits override; deployment admins have only the limits set on them.
    # Teams have none unless an admin sets them. ``core.quotas`` enforces them.
    quotas_user_cores: int = Field(default=64, ge=0)
    quotas_user_gpus: int = Field(default=8, ge=0)
    quotas_user_instances: int = Field(default=64, ge=0)
    quotas_user_clusters: int = Field(default=16, ge=0)
    quotas_user_cpu_hours: float = Field(default=10_000.0, ge=0)
    # Billow's own price of managed CPU-hours (``core.billing``; ``billow.pricing.tiers``,
    # ``BILLOW_PRICING_TIERS="0=0,10000=0.05,..."``): CPU-hours of a team's month from
    # each threshold up to the next are charged at its rate (graduated, like tax brackets).
    pricing_tiers: dict[float, float] = Field(
        default_factory=lambda: {0.0: 0.0, 10_000.0: 0.05, 100_000.0: 0.04, 1_000_000.0: 0.03},
        description="CPU-hour threshold -> USD per CPU-hour from it on; must start at 0",
    )
    pricing_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    # Whether the instances of one user are isolated from another's. Cloud instances are
    # machines of their own; the embedded server turns this off when its processes would
    # share an OS user (it is not root), and then refuses a second user.
    multi_tenant: bool = Field(
        default=True, description="whether this deployment may serve more than one user"
    )
    # The instance kit (``ClusterAgents.kit``): objects of the deployment's object
    # store that bare instances bootstrap from; scripts/upload-instance-kit.sh makes them.
    agent_wheel: str | None = Field(
        default=None, description="'<sha256>/<filename>' of the billow wheel instances start"
    )
    uv_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of the uv binary per machine: 'x86_64=<sha256>,aarch64=<sha256>'",
    )

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("agent_wheel")
    @classmethod
    def _agent_wheel(cls, value: str | None) -> str | None:
        if value is not None and not _AGENT_WHEEL.match(value):
            raise ValueError(
                "must be '<sha256>/<wheel file name>', such as "
                "'<64 hex digits>/billow-0.1.0-py3-none-any.whl'"
            )
        return value

    @field_validator("uv_sha256", mode="before")
    @classmethod
    def _uv_sha256(cls, value: Any) -> Any:
        """``"x86_64=<sha256>,aarch64=<sha256>"`` (a bare sha256 is x86_64's) or a dict."""
        if isinstance(value, str):
            pairs = [p.strip() for p in value.split(",") if p.strip()]
            value = dict(p.partition("=")[::2] if "=" in p else ("x86_64", p) for p in pairs)
        if not isinstance(value, dict):
            return value
        for machine, sha in value.items():
            if machine not in UV_MACHINES:
                raise ValueError(f"{machine!r} is not one of {', '.join(UV_MACHINES)}")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ValueError(f"the uv sha256 of {machine} is not 64 lower-case hex digits")
        return value

    @field_validator("pricing_tiers", mode="before")
    @classmethod
    def _pricing_tiers(cls, value: Any) -> Any:
        """``"0=0,10000=0.05"`` or a mapping; thresholds from 0, rates >= 0, at most 20."""
        if isinstance(value, str):
            pairs = [p.strip().partition("=") for p in value.split(",") if p.strip()]
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, Mapping):
            return value
        try:
            tiers = {float(k): float(v) for k, v in value.items()}
        except (TypeError, ValueError) as e:
            raise ValueError("must map CPU-hour thresholds to rates, e.g. '0=0,10000=0.05'") from e
        if 0.0 not in tiers or len(tiers) > 20:
            raise ValueError("must start at threshold 0 and have at most 20 tiers")
        if any(k < 0 or v < 0 for k, v in tiers.items()):
            raise ValueError("thresholds and rates must not be negative")
        return dict(sorted(tiers.items()))

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **defaults: Any) -> ControlSettings:
        """Settings from ``values`` over ``defaults`` over the field defaults.

        Keys are field names, in snake or kebab case (``start-timeout``), nested mappings
        joined by ``_`` (``{"tokens": {"lifetime": ...}}`` is ``tokens_lifetime``); keys that name
        no field and empty values (``None``, ``""``) are skipped. Raises ``ValueError``
        naming the field and what it accepts.
        """
        chosen = dict(defaults)
        for key, value in _flatten(values, set(cls.model_fields)).items():
            name = key.replace("-", "_")
            if name in cls.model_fields and value is not None and value != "":
                chosen[name] = value
        return cls.model_validate(chosen)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **defaults: Any) -> ControlSettings:
        """Settings from ``BILLOW_<FIELD>`` variables (``BILLOW_START_TIMEOUT=10m``)."""
        return cls.from_values(
            {name: env.get(f"BILLOW_{name.upper()}") for name in cls.model_fields}, **defaults
        )


def _flatten(values: Mapping[str, Any], fields: set[str], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a_b`` keys, except where ``a`` itself is a field."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and f"{prefix}{key}".replace("-", "_") not in fields:
            out.update(_flatten(value, fields, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out
