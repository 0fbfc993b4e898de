"""Deployment settings the core needs, built the same way by every runtime.

The embedded server reads them from ``dask.config`` (``billow.idle-timeout``...), Lambda
and Cloud Functions from ``BILLOW_<FIELD>`` environment variables; both go through
``ControlSettings.from_values``, which parses durations such as ``"20m"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from .models import parse_duration

DURATIONS = (
    "start_timeout",
    "idle_timeout",
    "no_client_timeout",
    "heartbeat_loss_timeout",
    "heartbeat_interval",
    "instance_token_ttl",
    "reconcile_interval",
    "reaper_interval",
    "orphan_grace",
    "gpu_idle_warning",
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
    heartbeat_interval: float = 5.0
    instance_token_ttl: float = 900.0
    reconcile_interval: float = 0.5
    log_lines_on_failure: int = 30
    reaper_interval: float = 30.0
    orphan_grace: float = 300.0
    gpu_utilization_threshold: float = 0.1
    gpu_idle_warning: float = 900.0

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **defaults: Any) -> ControlSettings:
        """Settings from ``values`` over ``defaults`` over the field defaults.

        Keys are field names, in snake or kebab case (``start-timeout``); keys that name
        no field and empty values (``None``, ``""``) are skipped. Raises ``ValueError``
        naming the field and what it accepts.
        """
        chosen = dict(defaults)
        for key, value in values.items():
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
