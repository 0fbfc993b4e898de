"""Usage records and closed-month marks on DynamoDB, mixed into ``DynamoDBStore``.

A put is one conditional ``PutItem``: written only when no item exists or the stored one
is still open (``open_flag`` present), so a closed record is final. Open records are
read from the sparse GSI ``open-usage``; closed ones by a filtered Scan of the table (a
report, not the watchdog pass). A month mark is an item ``month#<YYYY-MM>`` created once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.exceptions import PutError

from ....core.metering import UsageRecord
from .items import get_item

_CONDITION_FAILED = "ConditionalCheckFailedException"
_MONTH = "month#"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ATTEMPTS = 8


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


class UsageRecords:
    """The usage methods of the ``Store`` port; the host class provides ``models``."""

    models: Any

    def put_usage(self, record: UsageRecord) -> UsageRecord:
        m = self.models.usage
        closed = record.ended_at is not None
        item = m(
            record.instance_id,
            open_flag=None if closed else "1",
            ended_us=_us(record.ended_at) if record.ended_at is not None else None,
            doc=record.model_dump_json(),
        )
        for _ in range(_ATTEMPTS):
            try:
                item.save(condition=m.instance_id.does_not_exist() | m.open_flag.exists())
                return record
            except PutError as e:
                if e.cause_response_code != _CONDITION_FAILED:
                    raise
            stored = get_item(m, record.instance_id)
            if stored is not None and stored.doc is not None:
                return UsageRecord.model_validate_json(stored.doc)
        raise RuntimeError(f"usage record {record.instance_id} could not be written")

    def list_usage(self, ended_since: datetime | None = None) -> list[UsageRecord]:
        m = self.models.usage
        if ended_since is None:
            items = m.open_usage.query("1")
        else:
            since = _us(ended_since)
            items = m.scan(
                filter_condition=m.open_flag.exists() | (m.ended_us >= since),
                consistent_read=True,
            )
        return [UsageRecord.model_validate_json(i.doc) for i in items if i.doc is not None]

    def claim_usage_month(self, month: str) -> bool:
        m = self.models.usage
        try:
            m(_MONTH + month).save(condition=m.instance_id.does_not_exist())
        except PutError as e:
            if e.cause_response_code == _CONDITION_FAILED:
                return False
            raise
        return True
