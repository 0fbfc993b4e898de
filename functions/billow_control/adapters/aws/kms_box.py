"""KMS secret box: the AWS runtime's ``SecretBox``, sealing TLS private keys at rest.

Each secret is one KMS ``Encrypt`` under the deployment's key, with the encryption
context ``{"billow:deployment": <deployment>}``. KMS binds the context to the ciphertext
(it is authenticated, not secret): a blob copied to another deployment's table, or
decrypted without the context, fails. The context also appears in CloudTrail, so every
decrypt is attributable to a deployment.
"""

from __future__ import annotations

from typing import Any

KMS_MAX_PLAINTEXT = 4096  # bytes: the limit of a direct KMS Encrypt
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
        """The KMS ciphertext blob of ``plaintext``.

        Raises ``ValueError`` above ``KMS_MAX_PLAINTEXT`` bytes (a cluster's keys and
        certificates are far smaller), and ``botocore.exceptions.ClientError`` when KMS
        refuses (key disabled, no permission, throttled after retries).
        """
        if len(plaintext) > KMS_MAX_PLAINTEXT:
            raise ValueError(
                f"secret is {len(plaintext)} bytes; KMS encrypts at most {KMS_MAX_PLAINTEXT}"
            )
        response = self.kms.encrypt(
            KeyId=self.key_id, Plaintext=plaintext, EncryptionContext=self.context
        )
        return bytes(response["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext of a blob from ``encrypt``.

        Raises ``botocore.exceptions.ClientError`` (``InvalidCiphertextException``) for a
        blob of another key or deployment, or a tampered one.
        """
        response = self.kms.decrypt(
            CiphertextBlob=ciphertext, EncryptionContext=self.context, KeyId=self.key_id
        )
        return bytes(response["Plaintext"])
