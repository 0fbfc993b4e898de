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


def request_hash(request: ClusterRequest, salt: str = "") -> str:
    """A stable hash of the request body: a repeat must carry the same one.

    Fields added since keys were first stored count only when set, so a request that does
    not use them hashes as it did before (a retry across an upgrade still matches).

    Secret values count too (a repeat with other values is a different request, a 409),
    through ``secrets_digest`` salted with ``salt``: pass what names the key, e.g. the
    owner and the Idempotency-Key. The stored hash never holds a value, and a guess at
    one costs a salted scrypt per guess and key."""
    unset = {"software_environment"} if request.software_environment is None else set()
    fields = request.model_dump(mode="json", exclude=unset)  # secrets are never dumped
    if request.secrets:
        fields["secrets"] = secrets_digest(request.secrets, salt)
    body = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def secrets_digest(secrets: dict[str, str], salt: str) -> str:
    """A slow, salted digest of secret names and values (scrypt, 16 MiB, some 50 ms):
    hashes of low-entropy secrets such as passwords must not be cheap to invert."""
    body = json.dumps(secrets, sort_keys=True).encode()
    salted = hashlib.sha256(b"billow-secrets\0" + salt.encode()).digest()
    return hashlib.scrypt(body, salt=salted, n=2**14, r=8, p=1, dklen=32).hex()


def reused_key() -> Conflict:
    """The 409 for a key already used with a different request."""
    return Conflict(
        "Idempotency-Key was already used for a different request", field="Idempotency-Key"
    )
