"""KMS secret box: the AWS runtime's ``SecretBox``, sealing cluster secrets at rest.

Every secret is sealed under the deployment's key with the encryption context
``{"billow:deployment": <deployment>}``. KMS binds the context to the ciphertext (it is
authenticated, not secret): a blob copied to another deployment's table, or decrypted
without the context, fails. The context also appears in CloudTrail, so every decrypt is
attributable to a deployment.

Up to ``KMS_MAX_PLAINTEXT`` bytes (TLS keys and certificates) a secret is one KMS
``Encrypt``. A larger one (a cluster's ``secrets``, up to 64 KiB) is sealed by envelope
encryption: one ``GenerateDataKey`` under the same key and context, then AES-256-GCM
with that data key here; the blob keeps the data key as KMS encrypted it, so opening it
is again one KMS ``Decrypt``. An envelope blob (``adapters.envelope``) starts with
``ENVELOPE``, which no KMS ciphertext blob does (those start with a version byte,
``0x01``, never ``0x00``).
"""

from __future__ import annotations

from typing import Any

from .. import envelope

KMS_MAX_PLAINTEXT = 4096  # bytes: the limit of a direct KMS Encrypt
MAX_PLAINTEXT = 256 * 1024  # bytes: well within a DynamoDB item (400 KB)
CONTEXT_KEY = "billow:deployment"


class KmsSecretBox:
    """Implements ``billow_control.core.ports.SecretBox`` with AWS KMS.

    Parameters
    ----------
    kms
        A boto3 KMS client.
    key_id
        Key id, ARN or alias of the deployment's symmetric key.
    deployment
        The deployment name, bound to every ciphertext as its encryption context.
    """

    def __init__(self, kms: Any, key_id: str, deployment: str) -> None:
        if not key_id:
            raise ValueError("key_id is required (BILLOW_KMS_KEY_ID)")
        self.kms = kms
        self.key_id = key_id
        self.context = {CONTEXT_KEY: deployment}

    def encrypt(self, plaintext: bytes) -> bytes:
        """The sealed blob of ``plaintext``: a KMS ciphertext blob, or an envelope above
        ``KMS_MAX_PLAINTEXT`` bytes.

        Raises ``ValueError`` above ``MAX_PLAINTEXT`` bytes, and
        ``botocore.exceptions.ClientError`` when KMS refuses (key disabled, no
        permission, throttled after retries).
        """
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"secret is {len(plaintext)} bytes; at most {MAX_PLAINTEXT}")
        if len(plaintext) > KMS_MAX_PLAINTEXT:
            return self._seal_envelope(plaintext)
        response = self.kms.encrypt(
            KeyId=self.key_id, Plaintext=plaintext, EncryptionContext=self.context
        )
        return bytes(response["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext of a blob from ``encrypt``.

        Raises ``botocore.exceptions.ClientError`` (``InvalidCiphertextException``) for a
        blob of another key or deployment, and ``cryptography``'s ``InvalidTag`` for a
        tampered envelope.
        """
        if envelope.is_envelope(ciphertext):
            return envelope.open_envelope(ciphertext, self._kms_decrypt)
        return self._kms_decrypt(ciphertext)

    def _kms_decrypt(self, blob: bytes) -> bytes:
        response = self.kms.decrypt(
            CiphertextBlob=blob, EncryptionContext=self.context, KeyId=self.key_id
        )
        return bytes(response["Plaintext"])

    def _seal_envelope(self, plaintext: bytes) -> bytes:
        """An envelope (``adapters.envelope``) under a data key from ``GenerateDataKey``."""
        key = self.kms.generate_data_key(
            KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=self.context
        )
        return envelope.seal(bytes(key["Plaintext"]), bytes(key["CiphertextBlob"]), plaintext)
