"""Signed URLs of the embedded object store: what they allow, and for how long."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from billow_control.adapters.local.object_store import URL_LIFETIME, LocalObjectStore

pytestmark = pytest.mark.unit
SHA = hashlib.sha256(b"wheel").hexdigest()


def query(url: str) -> str:
    return url.split("?", 1)[1]


def test_urls_sign_method_object_size_and_expiry(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = LocalObjectStore(
        tmp_path / "objects", "http://127.0.0.1:1", tmp_path / "k", lambda: now[0]
    )
    put, get = store.upload_url(SHA, 5), store.download_url(SHA)
    assert store.verify("PUT", SHA, query(put)) == (5, "")
    assert store.verify("GET", SHA, query(get))[1] == ""
    assert store.verify("GET", SHA, query(put)) == (None, "bad signature")
    other = hashlib.sha256(b"other").hexdigest()
    assert store.verify("PUT", other, query(put)) == (None, "bad signature")
    now[0] += URL_LIFETIME + 1
    assert store.verify("PUT", SHA, query(put)) == (None, "the URL has expired")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    again = LocalObjectStore(tmp_path / "objects", "http://127.0.0.1:1", tmp_path / "k")
    assert again._key == store._key  # the key survives a restart: issued URLs stay valid
    with pytest.raises(ValueError, match="not a sha256"):
        store.upload_url("../secret.key", 5)
