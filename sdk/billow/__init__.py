"""Billow: Dask clusters in your own cloud account, run by a serverless control plane.

``Cluster`` and the software-environment functions are imported on first use (PEP 562):
``python -m billow.agent`` on an instance imports this package too, and needs none of the
client's modules (their HTTP client alone, httpx with rich and pygments, costs each agent
process about 0.1 s of CPU while a cluster starts).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import config  # noqa: F401  (registers billow.* defaults with dask.config)
from .errors import (
    AuthenticationError,
    BillowAPIError,
    BillowError,
    ClusterNotFound,
    ClusterStartError,
    ClusterStopped,
    NotLoggedIn,
    PermissionDenied,
    QuotaExceeded,
    ResolutionError,
    SoftwareEnvironmentNotFound,
    ValidationError,
    VersionMismatchError,
    WheelBuildError,
)

if TYPE_CHECKING:
    from .cluster import BillowWarning, Cluster
    from .environments import (
        create_software_environment,
        delete_software_environment,
        get_software_environment,
        list_instance_types,
        list_software_environments,
    )

__all__ = [
    "AuthenticationError",
    "BillowAPIError",
    "BillowError",
    "BillowWarning",
    "Cluster",
    "ClusterNotFound",
    "ClusterStartError",
    "ClusterStopped",
    "NotLoggedIn",
    "PermissionDenied",
    "QuotaExceeded",
    "ResolutionError",
    "SoftwareEnvironmentNotFound",
    "ValidationError",
    "VersionMismatchError",
    "WheelBuildError",
    "create_software_environment",
    "delete_software_environment",
    "get_software_environment",
    "list_instance_types",
    "list_software_environments",
]
__version__ = "0.1.0"

_LAZY = {  # name -> the module that defines it, imported on first use
    "BillowWarning": "cluster",
    "Cluster": "cluster",
    "create_software_environment": "environments",
    "delete_software_environment": "environments",
    "get_software_environment": "environments",
    "list_instance_types": "environments",
    "list_software_environments": "environments",
}


def __getattr__(name: str) -> Any:
    """Import ``Cluster`` or an environment function's module when first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'billow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
