"""Billow: Dask clusters in your own cloud account, run by a serverless control plane."""

from . import config  # noqa: F401  (registers billow.* defaults with dask.config)
from .cluster import BillowWarning, Cluster
from .environments import (
    create_software_environment,
    delete_software_environment,
    get_software_environment,
    list_instance_types,
    list_software_environments,
)
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
