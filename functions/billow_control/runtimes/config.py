"""Reading a serverless runtime's configuration from environment variables (shared by
``runtimes.aws`` and ``runtimes.gcp``): every failure is a ``ConfigError`` naming the
variable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from ..core.settings import ControlSettings


class ConfigError(ValueError):
    """A required environment variable is missing or invalid (names it)."""


def required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required")
    return value


def csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def first_error(e: ValidationError, variables: Callable[[str], str]) -> ConfigError:
    first = e.errors()[0]
    field = str(first["loc"][0]) if first.get("loc") else ""
    return ConfigError(f"{variables(field)}: {first['msg']}")


def settings_from_env(env: Mapping[str, str], **defaults: Any) -> ControlSettings:
    """``ControlSettings`` from ``BILLOW_<FIELD>`` variables over ``defaults``;
    ``BILLOW_DEPLOYMENT`` and ``BILLOW_CONTROL_URL`` are required."""
    try:
        return ControlSettings.from_env(
            env,
            **defaults,
            deployment=required(env, "BILLOW_DEPLOYMENT"),
            control_url=required(env, "BILLOW_CONTROL_URL").rstrip("/"),
        )
    except ValidationError as e:
        raise first_error(e, lambda field: f"BILLOW_{field.upper()}") from None
