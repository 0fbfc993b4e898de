"""Idempotency-Key rules of ``POST /v1/clusters``, in one place.

A client may send ``Idempotency-Key`` (1 to 128 characters). The key belongs to the
caller: ``(owner, key)`` names one create. Repeating it with the same request answers
the first cluster (HTTP 200); with a different request it is a 409. The store keeps keys
for its Idempotency-Key lifetime (a day by default), after which a key counts as unused.
"""

from __future__ import annotations

import hashlib
import json

from .errors import Conflict, Invalid
from .models import ClusterRequest

MAX_KEY_LENGTH = 128


def check_key(key: str | None) -> str | None:
    """The key as given, or ``None``. Raises ``Invalid`` naming the header when it is
    empty or longer than ``MAX_KEY_LENGTH``."""
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise Invalid(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", field="Idempotency-Key"
        )
    return key


def request_hash(request: ClusterRequest) -> str:
    """A stable hash of the request body: a repeat must carry the same one.

    Fields added since keys were first stored count only when set, so a request that does
    not use them hashes as it did before (a retry across an upgrade still matches)."""
    unset = {"software_environment"} if request.software_environment is None else set()
    body = json.dumps(request.model_dump(mode="json", exclude=unset), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def reused_key() -> Conflict:
    """The 409 for a key already used with a different request."""
    return Conflict(
        "Idempotency-Key was already used for a different request", field="Idempotency-Key"
    )
