"""Cloud KMS secret box: the GCP runtime's ``SecretBox``, sealing cluster secrets at rest.

Every secret is sealed under the deployment's symmetric key with the additional
authenticated data ``billow:deployment=<deployment>``. KMS binds it to the ciphertext
(authenticated, not secret): a blob copied to another deployment's store, or decrypted
without it, fails, and each decrypt is attributable to a deployment in the audit log.

Up to ``KMS_MAX_PLAINTEXT`` bytes (Cloud KMS's own limit; TLS keys, certificates and a
cluster's ``secrets`` all fit) a secret is one KMS ``encrypt``. A larger one is sealed
by envelope encryption: a fresh 256-bit data key here, AES-256-GCM with it, and the data
key sealed by one KMS ``encrypt`` under the same key and AAD (Cloud KMS has no
GenerateDataKey); opening it is again one KMS ``decrypt``. An envelope blob starts with
``ENVELOPE``. Requests and answers carry CRC32C checksums, which are verified both ways
(as Google recommends), so a blob corrupted in transit is refused, not stored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .. import envelope

KMS_MAX_PLAINTEXT = 64 * 1024  # bytes: the limit of a Cloud KMS encrypt
MAX_PLAINTEXT = 256 * 1024  # bytes, as the AWS box


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, the checksum Cloud KMS requests carry."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class KmsIntegrityError(RuntimeError):
    """A checksum did not match: the request or answer was corrupted in transit.
    Nothing was stored; retrying is safe."""


class CloudKmsSecretBox:
    """Implements ``billow_control.core.ports.SecretBox`` with Cloud KMS.

    Parameters
    ----------
    kms
        A ``google.cloud.kms_v1.KeyManagementServiceClient``.
    key_name
        ``projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>``, a symmetric key.
    deployment
        The deployment name, bound to every ciphertext as its AAD.
    """

    def __init__(self, kms: Any, key_name: str, deployment: str) -> None:
        if not key_name or "/cryptoKeys/" not in key_name:
            raise ValueError(
                "key_name must be projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>"
                " (BILLOW_GCP_KMS_KEY)"
            )
        self.kms = kms
        self.key_name = key_name
        self.aad = f"billow:deployment={deployment}".encode()

    def encrypt(self, plaintext: bytes) -> bytes:
        """The sealed blob of ``plaintext``: a KMS ciphertext, or an envelope above
        ``KMS_MAX_PLAINTEXT`` bytes.

        Raises ``ValueError`` above ``MAX_PLAINTEXT`` bytes, ``KmsIntegrityError`` on a
        checksum mismatch, and ``GoogleAPICallError`` when KMS refuses.
        """
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"secret is {len(plaintext)} bytes; at most {MAX_PLAINTEXT}")
        if len(plaintext) > KMS_MAX_PLAINTEXT:
            return self._seal_envelope(plaintext)
        return self._kms_encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext of a blob from ``encrypt``.

        Raises ``GoogleAPICallError`` (``BadRequest``, HTTP 400) for a blob of another key or
        deployment, ``cryptography``'s ``InvalidTag`` for a tampered envelope, and
        ``KmsIntegrityError`` on a checksum mismatch.
        """
        if envelope.is_envelope(ciphertext):
            return envelope.open_envelope(ciphertext, self._kms_decrypt)
        return self._kms_decrypt(ciphertext)

    def _kms_encrypt(self, plaintext: bytes) -> bytes:
        response = self.kms.encrypt(
            request={
                "name": self.key_name,
                "plaintext": plaintext,
                "plaintext_crc32c": crc32c(plaintext),
                "additional_authenticated_data": self.aad,
                "additional_authenticated_data_crc32c": crc32c(self.aad),
            }
        )
        blob = bytes(response.ciphertext)
        verified = (
            response.verified_plaintext_crc32c
            and response.verified_additional_authenticated_data_crc32c
            and response.ciphertext_crc32c == crc32c(blob)
        )
        if not verified:
            raise KmsIntegrityError("Cloud KMS encrypt: a checksum did not match")
        return blob

    def _kms_decrypt(self, blob: bytes) -> bytes:
        response = self.kms.decrypt(
            request={
                "name": self.key_name,
                "ciphertext": blob,
                "ciphertext_crc32c": crc32c(blob),
                "additional_authenticated_data": self.aad,
                "additional_authenticated_data_crc32c": crc32c(self.aad),
            }
        )
        plaintext = bytes(response.plaintext)
        if response.plaintext_crc32c != crc32c(plaintext):
            raise KmsIntegrityError("Cloud KMS decrypt: the plaintext checksum did not match")
        return plaintext

    def _seal_envelope(self, plaintext: bytes) -> bytes:
        """An envelope (``adapters.envelope``) under a fresh data key sealed by KMS."""
        data_key = os.urandom(32)
        return envelope.seal(data_key, self._kms_encrypt(data_key), plaintext)


def kms_box_from_env(env: Mapping[str, str] | None = None) -> CloudKmsSecretBox:
    """The deployment's box, configured by ``BILLOW_GCP_KMS_KEY`` (the key's resource
    name, required), ``BILLOW_DEPLOYMENT`` (required) and ``BILLOW_GCP_KMS_ENDPOINT``
    (tests: a loopback fake, reached with anonymous credentials). REST transport.
    Makes no KMS call; raises ``ValueError`` naming a missing variable."""
    from google.cloud import kms_v1

    from .clients import client_options

    env = os.environ if env is None else env
    for variable in ("BILLOW_GCP_KMS_KEY", "BILLOW_DEPLOYMENT"):
        if not env.get(variable, "").strip():
            raise ValueError(f"environment variable {variable} is required")
    kwargs, options = client_options(env.get("BILLOW_GCP_KMS_ENDPOINT"))
    client = kms_v1.KeyManagementServiceClient(
        transport="rest", client_options=options or None, **kwargs
    )
    return CloudKmsSecretBox(client, env["BILLOW_GCP_KMS_KEY"].strip(), env["BILLOW_DEPLOYMENT"])
