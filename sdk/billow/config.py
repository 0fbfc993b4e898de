"""Billow configuration through ``dask.config`` (``billow.*``) and ``BILLOW_*`` variables.

``BILLOW_IDLE_TIMEOUT=5m`` sets ``billow.idle-timeout``; values are parsed as YAML.
Variables that describe a cluster instance (set by providers) are not configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS = Path(__file__).with_name("billow.yaml")
_INSTANCE_VARIABLES = {
    "BILLOW_CONTROL_URL",
    "BILLOW_SCHEDULER_PORT",
    "BILLOW_DASHBOARD_PORT",
    "BILLOW_INSTANCE_TOKEN",
    "BILLOW_INSTANCE_TOKEN_FD",
    "BILLOW_CLUSTER_ID",
    "BILLOW_ROLE",
    "BILLOW_INSTANCE_ID",
    "BILLOW_INSTANCE_DIR",
    "BILLOW_INSTANCE_NAME",
    "BILLOW_HOST",
}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith("BILLOW_") or key in _INSTANCE_VARIABLES:
            continue
        name = key[len("BILLOW_") :].lower().replace("__", ".").replace("_", "-")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[name] = value
    return out


def _load() -> None:
    with open(_DEFAULTS) as f:
        dask.config.update_defaults(yaml.safe_load(f))
    overrides = _env_overrides(dict(os.environ))
    if overrides:
        dask.config.update(dask.config.config, {"billow": overrides}, priority="new")


_load()


def get(key: str, default: Any = None) -> Any:
    return dask.config.get(f"billow.{key}", default=default)


def analytics_level() -> str:
    """``billow.analytics``; YAML reads an unquoted ``off`` as ``False``, which means off."""
    value = get("analytics", "minimal")
    return "off" if value is False else str(value)


def login_file() -> Path:
    configured = get("login-file")
    return Path(configured) if configured else Path(dask.config.PATH) / "billow-login.yaml"


def data_dir() -> Path:
    configured = get("data-dir")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "billow"


def credentials(server: str | None = None, token: str | None = None) -> tuple[str, str]:
    """The control-plane URL and API token: arguments, then config, then the login file.

    Raises ``billow.errors.NotLoggedIn`` naming the ways to provide them.
    """
    from .errors import NotLoggedIn

    server = server or get("server")
    token = token or get("token")
    if not (server and token):
        path = login_file()
        if path.exists():
            saved = (yaml.safe_load(path.read_text()) or {}).get("billow", {})
            server = server or saved.get("server")
            token = token or saved.get("token")
    if not (server and token):
        raise NotLoggedIn(
            "no Billow control plane configured: run `billow server` (first start logs you "
            "in), `billow login --server URL --token TOKEN`, or pass server= and token="
        )
    return server.rstrip("/"), token
