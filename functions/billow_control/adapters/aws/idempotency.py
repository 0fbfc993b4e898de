"""Powertools idempotency in front of cluster creation: the AWS ``IdempotencyCache``.

The store already makes ``POST /v1/clusters`` idempotent per ``Idempotency-Key``: one
transaction writes the cluster, its name lock and the key. That is the source of truth.
Before it gets there, though, every repeat of a create pays for a fresh cluster PKI,
seven KMS ``Encrypt`` calls and seven secret writes (eight with ``secrets``; left behind
under a cluster id that never exists). The powertools idempotency utility, with its own
DynamoDB table, answers a *completed* repeat from one read instead.

* The key is ``(owner, Idempotency-Key)``: the header alone would let one tenant replay
  another tenant's response by guessing a key.
* The payload is validated: the same key with a different request hash raises
  ``IdempotencyMismatch``, which the core answers with its 409.
* What is cached is the cluster id; the core answers a replay with the cluster as it
  is now (HTTP 200), exactly what the store path answers for a repeated key.
* A repeat that arrives while the first is still running (powertools says "in
  progress"), and any failure of the idempotency table, run ``create``: the store
  decides atomically. A duplicate therefore never sees a 409 "in progress" it would have
  to retry, and the idempotency table is never a single point of failure.
* An invocation that dies mid-create leaves an "in progress" record, which powertools
  lets expire after the invocation's time budget: ``API_TIMEOUT``, the API function's
  timeout in ``serverless.yml`` (no create outlives it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from ...core.ports import IdempotencyMismatch

log = logging.getLogger(__name__)

KEY_PREFIX = "billow.create_cluster"
API_TIMEOUT = timedelta(seconds=29)  # serverless.yml: functions.api.timeout


class _TimeBudget:
    """What powertools reads of a Lambda context to expire an "in progress" record."""

    def __init__(self, budget: timedelta) -> None:
        self.milliseconds = int(budget.total_seconds() * 1000)

    def get_remaining_time_in_millis(self) -> int:
        return self.milliseconds


class PowertoolsIdempotencyCache:
    """Implements ``billow_control.core.ports.IdempotencyCache`` with the powertools
    idempotency utility.

    Parameters
    ----------
    table
        The idempotency table (hash key ``id``, TTL on ``expiration``).
    dynamodb
        A boto3 DynamoDB client.
    expires_after
        How long a completed create is replayed; at most the store's Idempotency-Key
        lifetime.
    """

    def __init__(self, table: str, dynamodb: Any, expires_after: timedelta) -> None:
        self.persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=dynamodb)
        self.config = IdempotencyConfig(
            event_key_jmespath="[owner, key]",
            payload_validation_jmespath="request_hash",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=int(expires_after.total_seconds()),
        )
        self.config.register_lambda_context(_TimeBudget(API_TIMEOUT))  # type: ignore[arg-type]

    def run_once(self, owner: str, key: str, request_hash: str, create: Callable[[], str]) -> str:
        """See the protocol; replays log the cluster id they answer with."""
        ran: list[str] = []

        def first(idempotency: dict[str, str]) -> dict[str, str]:
            ran.append(create())
            return {"id": ran[0]}

        once = idempotent_function(
            first,
            data_keyword_argument="idempotency",
            persistence_store=self.persistence,
            config=self.config,
            key_prefix=KEY_PREFIX,
        )
        data = {"owner": owner, "key": key, "request_hash": request_hash}
        try:
            outcome = once(idempotency=data)
        except IdempotencyValidationError:
            raise IdempotencyMismatch(key) from None
        except IdempotencyAlreadyInProgressError:
            log.info("create with this Idempotency-Key in progress; the store decides")
            return create()
        except IdempotencyPersistenceLayerError as e:
            if ran:  # created, but the success record was not saved
                return ran[0]
            log.warning("idempotency table unavailable (%s); using the store alone", e)
            return create()
        if ran:
            return ran[0]
        log.info("replayed the create of cluster %s for its Idempotency-Key", outcome["id"])
        return str(outcome["id"])
