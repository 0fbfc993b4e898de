"""Envelope encryption for the KMS secret boxes (AWS KMS, Cloud KMS): a secret too large
for one KMS call is sealed with AES-256-GCM under a fresh data key, and the blob keeps
that data key as KMS sealed it.

Layout: ``ENVELOPE``, the sealed data key's length (2 bytes, big-endian) and bytes, a
12-byte nonce, then the AES-GCM ciphertext, authenticated with everything before it. No
KMS ciphertext starts with ``ENVELOPE`` (its first byte is 0x00).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

ENVELOPE = b"\x00billow-envelope-1\x00"
_NONCE_BYTES = 12


def is_envelope(blob: bytes) -> bool:
    return blob.startswith(ENVELOPE)


def seal(data_key: bytes, sealed_key: bytes, plaintext: bytes) -> bytes:
    """The envelope of ``plaintext`` under ``data_key``, which KMS sealed as ``sealed_key``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = ENVELOPE + struct.pack(">H", len(sealed_key)) + sealed_key
    nonce = os.urandom(_NONCE_BYTES)
    return header + nonce + AESGCM(data_key).encrypt(nonce, plaintext, header)


def open_envelope(blob: bytes, unseal_key: Callable[[bytes], bytes]) -> bytes:
    """The plaintext of an envelope; ``unseal_key`` is the KMS decrypt of its data key.
    Raises ``cryptography``'s ``InvalidTag`` for a tampered envelope."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    at = len(ENVELOPE)
    (size,) = struct.unpack(">H", blob[at : at + 2])
    header_end = at + 2 + size
    header, nonce = blob[:header_end], blob[header_end : header_end + _NONCE_BYTES]
    data_key = unseal_key(blob[at + 2 : header_end])
    return AESGCM(data_key).decrypt(nonce, blob[header_end + _NONCE_BYTES :], header)
