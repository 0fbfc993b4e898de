"""Usage records and closed-month marks on Firestore, mixed into ``FirestoreStore``.

A put is one conditional write: ``create`` when absent, else an update conditional on the
stored document as read and still open, so a closed record is final. Open records come
from an equality query on ``open``; closed ones from a range query on ``ended_us``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.cloud.firestore_v1 import FieldFilter

from ....core.metering import UsageRecord
from .documents import LOST, USAGE, USAGE_MONTHS, Collections, epoch_us, optimistic, unchanged

_ATTEMPTS = 25


class UsageRecords:
    """The usage methods of the ``Store`` port; the host class provides ``client`` and
    ``col`` (``Collections``)."""

    client: Any
    col: Collections

    def put_usage(self, record: UsageRecord) -> UsageRecord:
        ref = self.col.doc(USAGE, record.instance_id)
        ended = record.ended_at
        data = {
            "doc": record.model_dump_json(),
            "open": ended is None,
            "ended_us": epoch_us(ended) if ended is not None else None,
        }

        def attempt() -> UsageRecord | None:
            snap = ref.get()
            try:
                if not snap.exists:
                    ref.create(data)
                elif not snap.get("open"):
                    return UsageRecord.model_validate_json(snap.get("doc"))
                else:
                    ref.update(data, option=unchanged(self.client, snap))
            except LOST:
                return None
            return record

        return optimistic(attempt, _ATTEMPTS, f"usage of {record.instance_id}")

    def list_usage(self, ended_since: datetime | None = None) -> list[UsageRecord]:
        col = self.col(USAGE)
        snaps = list(col.where(filter=FieldFilter("open", "==", True)).stream())
        if ended_since is not None:
            later = FieldFilter("ended_us", ">=", epoch_us(ended_since))
            snaps += list(col.where(filter=later).stream())
        return [UsageRecord.model_validate_json(s.get("doc")) for s in snaps]

    def claim_usage_month(self, month: str) -> bool:
        try:
            self.col.doc(USAGE_MONTHS, month).create({"month": month})
        except LOST:
            return False
        return True
