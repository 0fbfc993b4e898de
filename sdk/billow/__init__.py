"""Billow: Dask clusters in your own cloud account, run by a serverless control plane."""

from . import config  # noqa: F401  (registers billow.* defaults with dask.config)
from .cluster import BillowWarning, Cluster
from .errors import (
    AuthenticationError,
    BillowAPIError,
    BillowError,
    ClusterNotFound,
    ClusterStartError,
    ClusterStopped,
    NotLoggedIn,
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
    "ValidationError",
    "VersionMismatchError",
    "WheelBuildError",
]
__version__ = "0.1.0"
