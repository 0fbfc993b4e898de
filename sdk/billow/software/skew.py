"""Version skew between the client and a cluster: what must match, and what does not.

Python's major.minor and ``CORE_PACKAGES`` (dask, distributed, cloudpickle, msgpack,
tornado, toolz) must be the same on both sides, or pickling and the comm protocol break
in obscure ways; ``strict`` extends that to every package of the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from billow_control.core.software import CORE_PACKAGES, SoftwareSpec, normalize

from ..errors import VersionMismatchError
from .scan import iter_distributions


def client_versions(paths: Sequence[str] | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of the distributions the running interpreter sees
    (on ``paths``, default ``sys.path``; the first of a name wins)."""
    return {item.name: item.version for item in iter_distributions(paths)}


def check_versions(
    client: Mapping[str, str],
    cluster: SoftwareSpec,
    client_python: str,
    strict: bool = False,
) -> None:
    """Raise when the cluster's software does not match the client's where it must.

    Compares Python's major.minor, then each of ``CORE_PACKAGES`` (a package absent on
    exactly one side is a mismatch; absent on both is fine); with ``strict``, every
    package in ``client`` too. Versions are equal when their strings or their PEP 440
    forms are (``1.0`` equals ``1.0.0``).

    Raises
    ------
    VersionMismatchError
        Listing each mismatch as ``name: client X, cluster Y`` (``absent`` when missing).
    """
    mine = {normalize(name): version for name, version in client.items()}
    mismatches: dict[str, tuple[str | None, str | None]] = {}
    python = ".".join(client_python.split(".")[:2])
    if python != cluster.python_minor:
        mismatches["python"] = (python, cluster.python_minor)
    names = set(CORE_PACKAGES) | (set(mine) if strict else set())
    for name in sorted(names):
        ours, theirs = mine.get(name), cluster.version_of(name)
        if not same_version(ours, theirs):
            mismatches[name] = (ours, theirs)
    if mismatches:
        raise VersionMismatchError(mismatches)


def same_version(a: str | None, b: str | None) -> bool:
    """True when both are absent, or both present and equal as strings or PEP 440."""
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging comes with dask, but do not depend on it here
        return False
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False
