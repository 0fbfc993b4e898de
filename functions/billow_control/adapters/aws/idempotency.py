"""Powertools idempotency in front of cluster creation (AWS runtime only).

The store already makes ``POST /v1/clusters`` idempotent per ``Idempotency-Key``: one
transaction writes the cluster, its name lock and the key. That is the source of truth.
Before it gets there, though, every repeat of a create pays for a fresh cluster PKI,
seven KMS ``Encrypt`` calls and seven secret writes (left behind under a cluster id that
never exists). The powertools idempotency utility, with its own DynamoDB table, answers a
*completed* repeat from one read instead.

* The key is ``(owner, Idempotency-Key)``: the header alone would let one tenant replay
  another tenant's response by guessing a key.
* The payload is validated: the same key with a different request body is a 409, as in
  the store.
* What is cached is ``{"id", "created"}``; a replay answers with the cluster as it is now
  (HTTP 200), exactly what the store path answers for a repeated key.
* A repeat that arrives while the first is still running (powertools says "in
  progress"), and any failure of the idempotency table, fall through to the store path,
  which decides atomically. A duplicate therefore never sees a 409 "in progress" it would
  have to retry, and the idempotency table is never a single point of failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
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

from ...core.errors import Conflict
from ...core.models import ClusterRequest, User
from ...core.service import ControlPlane

log = logging.getLogger(__name__)

KEY_PREFIX = "billow.create_cluster"


def request_hash(request: ClusterRequest) -> str:
    """The hash ``ControlPlane.create_cluster`` stores with an Idempotency-Key."""
    return hashlib.sha256(
        json.dumps(request.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


class IdempotentControlPlane(ControlPlane):
    """``ControlPlane`` whose ``create_cluster`` is answered from the powertools
    idempotency table for a completed repeat of ``(owner, Idempotency-Key)``.

    Parameters
    ----------
    *args, **kwargs
        Those of ``ControlPlane``.
    persistence
        The powertools DynamoDB persistence layer (table with hash key ``id``, TTL on
        ``expiration``).
    expires_after_seconds
        How long a completed create is replayed; at most the store's Idempotency-Key TTL.
    """

    def __init__(
        self,
        *args: Any,
        persistence: DynamoDBPersistenceLayer,
        expires_after_seconds: int = 86400,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.persistence = persistence
        self.idempotency_config = IdempotencyConfig(
            event_key_jmespath="[owner, key]",
            payload_validation_jmespath="request_hash",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=expires_after_seconds,
        )

    def register_lambda_context(self, context: Any) -> None:
        """Lets powertools expire an in-progress record when this invocation times out."""
        self.idempotency_config.register_lambda_context(context)

    def create_cluster(
        self, user: User, request: ClusterRequest, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        if idempotency_key is None or not 0 < len(idempotency_key) <= 128:
            return super().create_cluster(user, request, idempotency_key)
        fresh: dict[str, Any] = {}

        def create(idempotency: dict[str, str]) -> dict[str, Any]:
            cluster, created = ControlPlane.create_cluster(self, user, request, idempotency_key)
            fresh["answer"] = (cluster, created)
            return {"id": cluster["id"], "created": created}

        once = idempotent_function(
            create,
            data_keyword_argument="idempotency",
            persistence_store=self.persistence,
            config=self.idempotency_config,
            key_prefix=KEY_PREFIX,
        )
        data = {"owner": user.id, "key": idempotency_key, "request_hash": request_hash(request)}
        try:
            outcome = once(idempotency=data)
        except IdempotencyValidationError:
            raise Conflict(
                "Idempotency-Key was already used for a different request",
                field="Idempotency-Key",
            ) from None
        except IdempotencyAlreadyInProgressError:
            log.info("create with this Idempotency-Key in progress; the store decides")
            return super().create_cluster(user, request, idempotency_key)
        except IdempotencyPersistenceLayerError as e:
            if "answer" in fresh:  # created, but the success record was not saved
                return fresh["answer"]
            log.warning("idempotency table unavailable (%s); using the store alone", e)
            return super().create_cluster(user, request, idempotency_key)
        if "answer" in fresh:
            return fresh["answer"]
        log.info("replayed the create of cluster %s for its Idempotency-Key", outcome["id"])
        return self.get_cluster(user, outcome["id"]), False
