"""The usage part of the ``Store`` port (``ports.Store`` inherits it): one record per
instance, written by the watchdog's metering pass, and one mark per closed month."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .metering import UsageRecord


class UsageStore(Protocol):
    def put_usage(self, record: UsageRecord) -> UsageRecord:
        """Insert or replace the record of ``record.instance_id`` and return what is stored.

        Idempotent, and final once closed: when the stored record is closed (``ended_at``
        set) nothing is written and the stored one is returned, so a late or repeated pass
        never reopens, moves or double-counts a lifetime. Atomic against concurrent puts.
        """
        ...

    def list_usage(self, ended_since: datetime | None = None) -> list[UsageRecord]:
        """Every open record, plus (with ``ended_since``) every closed one that ended at or
        after it. Open records come from an index of open ones only (the metering pass);
        closed ones may be a scan of the usage table (reports)."""
        ...

    def claim_usage_month(self, month: str) -> bool:
        """Mark ``month`` (``YYYY-MM``) closed: ``True`` for the one caller that marked it,
        ``False`` for every later or concurrent one (the month-closed event goes out once)."""
        ...


@runtime_checkable
class UsageEvents(Protocol):
    """An ``EventBus`` that also publishes usage events (every bus of this repository);
    a bus without it gets the month-closed totals logged instead."""

    def publish_usage(self, kind: str, detail: dict[str, Any]) -> None:
        """Emit ``billow.<kind>`` with ``detail``; failures are logged, never raised."""
        ...
