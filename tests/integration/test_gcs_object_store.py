"""``GcsObjectStore`` through the real ``google-cloud-storage`` client against the loopback
GCS fake, which checks V4 signatures (RSA, a service-account key file made here), the
signed payload hash and length range: checked uploads land and are counted, other bytes,
another size, missing or altered headers and tampered URLs are refused, and objects that
got in unchecked read as absent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from billow_control.adapters.gcp.gcs_object_store import GcsObjectStore, gcs_object_store_from_env
from tests.support.gcp_fakes.gcs import GcsFake, service_account_key

pytestmark = pytest.mark.integration

EMAIL = "billow-control@billow-test.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("gcs") / "key.json"
    return path, service_account_key(path, EMAIL)


@pytest.fixture(scope="module")
def gcs(key_file: tuple[Path, object]) -> Iterator[GcsFake]:
    fake = GcsFake("billow-env", {EMAIL: key_file[1]}).start()  # type: ignore[dict-item]
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def store(gcs: GcsFake, key_file: tuple[Path, object]) -> GcsObjectStore:
    env = {
        "BILLOW_GCS_BUCKET": gcs.bucket,
        "BILLOW_GCS_ENDPOINT": gcs.url,
        "BILLOW_GCS_SIGNING_KEY_FILE": str(key_file[0]),
    }
    built = gcs_object_store_from_env("billow-test", env)
    assert built is not None
    return built


def test_no_bucket_means_no_store() -> None:
    assert gcs_object_store_from_env("p", {}) is None
    with pytest.raises(ValueError, match="BILLOW_GCS_SIGNING_KEY_FILE"):
        gcs_object_store_from_env(
            "p", {"BILLOW_GCS_BUCKET": "b", "BILLOW_GCS_SIGNING_KEY_FILE": "/nonexistent.json"}
        )


def test_checked_upload_then_signed_download(store: GcsObjectStore, gcs: GcsFake) -> None:
    data = b"wheel bytes " * 100
    sha = hashlib.sha256(data).hexdigest()
    assert not store.exists(sha)
    url, headers = store.upload_url(sha, len(data)), store.upload_headers(sha, len(data))
    assert url.startswith(f"{gcs.url}/{gcs.bucket}/objects/{sha}?")
    assert httpx.put(url, content=data, headers=headers).status_code == 200
    assert store.exists(sha)
    got = httpx.get(store.download_url(sha))
    assert got.status_code == 200 and got.content == data


def test_other_bytes_sizes_and_headers_are_refused(store: GcsObjectStore, gcs: GcsFake) -> None:
    data = b"the declared bytes"
    sha = hashlib.sha256(data).hexdigest()
    url, headers = store.upload_url(sha, len(data)), store.upload_headers(sha, len(data))
    other = b"other bytes, same size!"[: len(data)]
    assert httpx.put(url, content=other, headers=headers).status_code == 400
    assert httpx.put(url, content=data + b"!", headers=headers).status_code == 400
    assert httpx.put(url, content=data).status_code == 403  # headers not sent
    lying = {**headers, "x-goog-content-sha256": hashlib.sha256(other).hexdigest()}
    assert httpx.put(url, content=other, headers=lying).status_code == 403
    extra = {**headers, "x-goog-meta-owner": "me"}
    assert httpx.put(url, content=data, headers=extra).status_code == 400  # unsigned header
    tampered = url.replace(sha, hashlib.sha256(b"x").hexdigest())
    assert httpx.put(tampered, content=data, headers=headers).status_code == 403
    assert not store.exists(sha)
    assert len(gcs.refused) >= 6
    with pytest.raises(ValueError, match="sha256"):
        store.upload_url("../../etc/passwd", 5)
    with pytest.raises(ValueError, match="size"):
        store.upload_url(sha, 0)


def test_objects_that_got_in_unchecked_read_as_absent(store: GcsObjectStore, gcs: GcsFake) -> None:
    data = b"copied in some other way"
    sha = hashlib.sha256(data).hexdigest()
    gcs.put(f"objects/{sha}", data)
    assert not store.exists(sha)
    gcs.put(f"objects/{sha}", data, {"billow-sha256": hashlib.sha256(b"y").hexdigest()})
    assert not store.exists(sha)
    gcs.put(f"objects/{sha}", data, {"billow-sha256": sha})  # gcloud storage cp, README
    assert store.exists(sha)
    assert not store.exists("not-a-sha")


def test_a_url_signed_by_another_key_is_refused(gcs: GcsFake, tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    service_account_key(path, EMAIL)  # same account name, another key
    other = gcs_object_store_from_env(
        "p",
        {
            "BILLOW_GCS_BUCKET": gcs.bucket,
            "BILLOW_GCS_ENDPOINT": gcs.url,
            "BILLOW_GCS_SIGNING_KEY_FILE": str(path),
        },
    )
    assert other is not None
    sha = hashlib.sha256(b"z").hexdigest()
    gcs.put(f"objects/{sha}", b"z", {"billow-sha256": sha})
    assert httpx.get(other.download_url(sha)).status_code == 403
