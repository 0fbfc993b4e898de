"""A loopback fake of Cloud KMS ``encrypt`` and ``decrypt`` of symmetric keys (v1 REST),
for ``kms_v1.KeyManagementServiceClient(transport="rest")`` through ``api_endpoint``.

Bodies are parsed as ``kms_v1.EncryptRequest`` / ``DecryptRequest``. Encryption is real
authenticated encryption: AES-256-GCM under a per-key secret (random per fake), with the
request's additional authenticated data, so a wrong or missing AAD, another key or a
flipped bit is refused with 400 as KMS refuses it. CRC32C fields are checked when sent
and answered as KMS answers them. Keys exist once ``create_key`` made them (404 else).

Not modelled: key versions and rotation (one version, ``1``), key states, IAM, quotas,
asymmetric, MAC and raw operations, protection levels beyond ``SOFTWARE``.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms_v1

from billow_control.adapters.gcp.kms_box import crc32c
from tests.support.gcp_fakes.server import FakeServer, HttpError, parse

_KEY = "(?P<name>projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+)"
_MAX = 64 * 1024


class KmsFake:
    """Symmetric keys by resource name; see the module docstring."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self.server = FakeServer(
            [
                ("POST", f"/v1/{_KEY}:encrypt", self._encrypt),
                ("POST", f"/v1/{_KEY}:decrypt", self._decrypt),
            ]
        )
        self.url = self.server.url

    def create_key(self, name: str) -> str:
        with self._lock:
            self.keys.setdefault(name, os.urandom(32))
        return name

    def start(self) -> KmsFake:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _key(self, name: str) -> bytes:
        if name not in self.keys:
            raise HttpError(404, f"CryptoKey {name} not found.")
        return self.keys[name]

    def _encrypt(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        request = parse(kms_v1.EncryptRequest, body)
        self.calls.append("encrypt")
        key = self._key(p["name"])
        plaintext, aad = bytes(request.plaintext), bytes(request.additional_authenticated_data)
        if len(plaintext) > _MAX:
            raise HttpError(400, f"The plaintext must be at most {_MAX} bytes.")
        _check_crc(request, "plaintext_crc32c", plaintext)
        _check_crc(request, "additional_authenticated_data_crc32c", aad)
        nonce = os.urandom(12)
        blob = b"\x01fake-kms" + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
        return 200, {
            "name": f"{p['name']}/cryptoKeyVersions/1",
            "ciphertext": base64.b64encode(blob).decode(),
            "ciphertextCrc32c": str(crc32c(blob)),
            "verifiedPlaintextCrc32c": "plaintextCrc32c" in body,
            "verifiedAdditionalAuthenticatedDataCrc32c": "additionalAuthenticatedDataCrc32c"
            in body,
            "protectionLevel": "SOFTWARE",
        }

    def _decrypt(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        request = parse(kms_v1.DecryptRequest, body)
        self.calls.append("decrypt")
        key = self._key(p["name"])
        blob, aad = bytes(request.ciphertext), bytes(request.additional_authenticated_data)
        _check_crc(request, "ciphertext_crc32c", blob)
        _check_crc(request, "additional_authenticated_data_crc32c", aad)
        head = len(b"\x01fake-kms")
        try:
            plaintext = AESGCM(key).decrypt(blob[head : head + 12], blob[head + 12 :], aad)
        except (InvalidTag, ValueError):
            raise HttpError(400, "Decryption failed: the ciphertext is invalid.") from None
        return 200, {
            "plaintext": base64.b64encode(plaintext).decode(),
            "plaintextCrc32c": str(crc32c(plaintext)),
            "usedPrimary": True,
            "protectionLevel": "SOFTWARE",
        }


def _check_crc(request: Any, field: str, data: bytes) -> None:
    if field in request and getattr(request, field) != crc32c(data):
        raise HttpError(400, f"The checksum in field {field} did not match the data.")
