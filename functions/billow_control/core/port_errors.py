"""What adapters raise through the ports, for the core to act on (``core.ports``
re-exports each)."""

from __future__ import annotations


class StaleRecordError(Exception):
    """A conditional write lost: the record changed since it was read. Re-read and retry.

    (Not an HTTP error: the API's 409 is ``core.errors.Conflict``.)"""


class FinishedClusterError(ValueError):
    """A write tried to make a stopped or failed cluster active again; its name may belong
    to a newer cluster by now. Nothing was written."""


class NameTakenError(Exception):
    """An active cluster of this owner already has that name."""


class UserNameTakenError(Exception):
    """Another user already has that name. Nothing was written."""


class LaunchRefused(ValueError):
    """``Provider.launch`` cannot ever launch this spec (no machine type fits it, a type
    the region does not have): retrying will not help, so the cluster fails at once with
    this message. ``field`` names the request field at fault, when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request body."""
