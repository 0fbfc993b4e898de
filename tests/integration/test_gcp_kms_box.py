"""``CloudKmsSecretBox`` through the real ``google-cloud-kms`` client (REST) against the
loopback KMS fake (real AES-GCM with the AAD): round trips, direct and enveloped, and
refusals of another deployment's AAD, another key and a tampered blob."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidTag
from google.api_core import exceptions as gexc

from billow_control.adapters.envelope import ENVELOPE
from billow_control.adapters.gcp.kms_box import (
    KMS_MAX_PLAINTEXT,
    MAX_PLAINTEXT,
    CloudKmsSecretBox,
    crc32c,
    kms_box_from_env,
)
from tests.support.gcp_fakes.kms import KmsFake

pytestmark = pytest.mark.integration

KEY = "projects/billow-test/locations/global/keyRings/billow/cryptoKeys/secrets"


@pytest.fixture(scope="module")
def kms() -> Iterator[KmsFake]:
    fake = KmsFake().start()
    fake.create_key(KEY)
    fake.create_key(KEY + "-other")
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server.errors, fake.server.errors


def box(kms: KmsFake, deployment: str = "prod", key: str = KEY) -> CloudKmsSecretBox:
    env = {
        "BILLOW_GCP_KMS_KEY": key,
        "BILLOW_DEPLOYMENT": deployment,
        "BILLOW_GCP_KMS_ENDPOINT": kms.url,
    }
    return kms_box_from_env(env)


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


@pytest.mark.parametrize("size", [0, 100, KMS_MAX_PLAINTEXT, KMS_MAX_PLAINTEXT + 1, MAX_PLAINTEXT])
def test_round_trip(kms: KmsFake, size: int) -> None:
    secret = os.urandom(size)
    sealed = box(kms).encrypt(secret)
    assert secret not in sealed or size == 0
    assert sealed.startswith(ENVELOPE) == (size > KMS_MAX_PLAINTEXT)
    assert box(kms).decrypt(sealed) == secret


@pytest.mark.parametrize("size", [100, KMS_MAX_PLAINTEXT + 1])
def test_another_deployment_cannot_open_it(kms: KmsFake, size: int) -> None:
    sealed = box(kms, "prod").encrypt(os.urandom(size))
    with pytest.raises(gexc.BadRequest, match="Decryption failed"):
        box(kms, "staging").decrypt(sealed)  # same key, another AAD
    with pytest.raises(gexc.BadRequest, match="Decryption failed"):
        box(kms, "prod", KEY + "-other").decrypt(sealed)


def test_a_tampered_blob_is_refused(kms: KmsFake) -> None:
    direct = bytearray(box(kms).encrypt(b"tls private key"))
    direct[-1] ^= 1
    with pytest.raises(gexc.BadRequest):
        box(kms).decrypt(bytes(direct))
    envelope = bytearray(box(kms).encrypt(os.urandom(KMS_MAX_PLAINTEXT + 10)))
    envelope[-1] ^= 1
    with pytest.raises(InvalidTag):
        box(kms).decrypt(bytes(envelope))


def test_bad_input_and_configuration_are_named(kms: KmsFake) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_PLAINTEXT}"):
        box(kms).encrypt(b"x" * (MAX_PLAINTEXT + 1))
    with pytest.raises(ValueError, match="BILLOW_GCP_KMS_KEY"):
        kms_box_from_env({"BILLOW_DEPLOYMENT": "prod"})
    with pytest.raises(ValueError, match="cryptoKeys"):
        CloudKmsSecretBox(object(), "projects/p/keyRings/r", "prod")
    with pytest.raises(gexc.NotFound):
        box(kms, key=KEY + "-missing").encrypt(b"x")
