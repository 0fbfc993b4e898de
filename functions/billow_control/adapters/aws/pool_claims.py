"""Who took which warm-pool instance: a conditional DynamoDB claim per instance.

EC2 tags are last-writer-wins, so two launches that both tag the same stopped instance
would both believe they own it. The claim is one ``TransactWriteItems`` of two items in
the deployment's idempotency table (the one powertools uses; its TTL attribute is
``expiration``):

* ``billow.pool#instance#<instance id>`` holding the claiming ``client_token``: put only
  if absent or already this token's, so exactly one launch wins an instance;
* ``billow.pool#token#<client_token>`` holding the instance id: put only if absent or
  already this instance, so a launch retried after a crash finds the instance it took.

Both items, or neither, are written. They expire after ``CLAIM_TTL``; by then the
instance has long been tagged for its cluster (the pool never lists it again) or been
terminated by the pool refill as an abandoned claim.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from .errors import error_code

CLAIM_TTL = timedelta(days=7)
_PREFIX = "billow.pool#"


class DynamoPoolClaims:
    """``PoolClaims`` (see ``ec2.pool``) on a DynamoDB table with a string hash key
    ``id``. ``dynamodb`` is a boto3 DynamoDB client. Errors other than a lost claim are
    raised as ``botocore.exceptions.ClientError``."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.dynamodb = dynamodb
        self.table = table

    def claim(self, instance_id: str, client_token: str) -> bool:
        """``True`` when ``client_token`` now holds ``instance_id`` (also when it already
        did); ``False`` when another token holds it, or this token holds another one."""
        now = int(time.time())
        expires = now + int(CLAIM_TTL.total_seconds())
        names = {"#k": "id", "#v": "holder"}
        try:
            self.dynamodb.transact_write_items(
                TransactItems=[
                    self._put(f"instance#{instance_id}", client_token, now, expires, names),
                    self._put(f"token#{client_token}", instance_id, now, expires, names),
                ]
            )
        except ClientError as e:
            if error_code(e) in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                return False
            raise
        return True

    def claimed_by(self, client_token: str) -> str | None:
        """The instance ``client_token`` claimed, if any."""
        item = self._get(f"token#{client_token}")
        return str(item["holder"]["S"]) if item else None

    def claimed_at(self, instance_id: str) -> datetime | None:
        """When ``instance_id`` was claimed (last confirmed), ``None`` if it never was."""
        item = self._get(f"instance#{instance_id}")
        return datetime.fromtimestamp(int(item["claimed_at"]["N"]), UTC) if item else None

    def _put(
        self, key: str, holder: str, now: int, expires: int, names: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "id": {"S": _PREFIX + key},
                    "holder": {"S": holder},
                    "claimed_at": {"N": str(now)},
                    "expiration": {"N": str(expires)},
                },
                "ConditionExpression": "attribute_not_exists(#k) OR #v = :v",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {":v": {"S": holder}},
            }
        }

    def _get(self, key: str) -> dict[str, Any] | None:
        response = self.dynamodb.get_item(
            TableName=self.table, Key={"id": {"S": _PREFIX + key}}, ConsistentRead=True
        )
        item = response.get("Item")
        return dict(item) if item else None
