"""The software of a cluster: scan the client's environment, build wheels of local code,
and check that the client and the cluster run matching versions."""

from ..errors import VersionMismatchError, WheelBuildError
from .scan import LocalProject, ScanResult, normalize_platform, scan_environment
from .skew import check_versions, client_versions
from .wheels import BuiltWheel, build_wheel, source_fingerprint

__all__ = [
    "BuiltWheel",
    "LocalProject",
    "ScanResult",
    "VersionMismatchError",
    "WheelBuildError",
    "build_wheel",
    "check_versions",
    "client_versions",
    "normalize_platform",
    "scan_environment",
    "source_fingerprint",
]
