"""Forwarded credentials on a real cluster of ``billow server``: an STS-shaped canary in
the client's environment reaches every worker (one added later by scale too), as the
variables and the file boto3 reads; it is refreshed before it expires (the lifetime is
shortened to seconds here); real STS session credentials from moto are forwarded; and
the canary is nowhere in the server's data dir, its log, its events or its answers.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import httpx
import pytest
from dask.distributed import Client

import billow
from billow.credentials import obtain
from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what the test sets: no profile files, no metadata probes."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_STS", raising=False)


def _canary(monkeypatch: pytest.MonkeyPatch, label: str) -> str:
    token = f"canary-{label}-" + secrets.token_urlsafe(24)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIA" + secrets.token_hex(8).upper())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"canary-secret-{label}-" + secrets.token_hex(16))
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    return token


def test_sts_session_credentials_come_from_moto(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + "A" * 16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "long-term-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_url)
    forwarded, notes = obtain(900)
    assert notes == [] and forwarded.aws is not None
    assert forwarded.aws["AWS_SESSION_TOKEN"]  # moto's GetSessionToken answer
    assert forwarded.aws["AWS_ACCESS_KEY_ID"] != os.environ["AWS_ACCESS_KEY_ID"]
    assert 0 < forwarded.expires_at - time.time() <= 900
    assert "long-term" not in repr(forwarded)


def test_no_identity_obtains_nothing_and_no_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _isolate(monkeypatch, tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    forwarded, notes = obtain(900)
    assert forwarded.empty and notes == []


def test_forwarded_canary_reaches_every_worker_and_nothing_else(
    embedded_server: EmbeddedServer,
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _isolate(monkeypatch, tmp_path)
    first = _canary(monkeypatch, "first")
    canaries = [first, os.environ["AWS_SECRET_ACCESS_KEY"]]
    answers: list[str] = []

    def worker_view() -> dict[str, str]:
        """What a task sees: the variables, the credentials file, and boto3's own
        answer. (Nested, so cloudpickle sends it by value: workers lack ``tests``.)"""
        import os

        import boto3

        frozen = boto3.Session().get_credentials().get_frozen_credentials()
        with open(os.environ["AWS_SHARED_CREDENTIALS_FILE"]) as f:
            text = f.read()
        return {
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "token": os.environ["AWS_SESSION_TOKEN"],
            "boto3": frozen.token or "",
            "file": text,
        }

    with (
        billow.Cluster(
            n_workers=1,
            name=f"creds-{secrets.token_hex(3)}",
            credentials_duration_seconds=4,
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):

        def views() -> list[dict[str, str]]:
            return list(client.run(worker_view).values())

        seen = views()
        assert [v["token"] for v in seen] == [first]
        assert seen[0]["boto3"] == first and first in seen[0]["file"]
        # a worker added later gets them too
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        assert {v["token"] for v in views()} == {first}
        # refreshed before expiry: the client's identity changed, the workers follow
        second = _canary(monkeypatch, "second")
        canaries += [second, os.environ["AWS_SECRET_ACCESS_KEY"]]
        wait_until(lambda: {v["token"] for v in views()} == {second}, 30, "refreshed canary")
        # real STS session credentials (moto) from long-term keys
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + "B" * 16)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "long-term-secret")
        monkeypatch.delenv("AWS_SESSION_TOKEN")
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_url)
        issued = obtain(900)[0].aws  # what moto's STS issues for these keys
        assert issued is not None and issued["AWS_ACCESS_KEY_ID"] != "AKIA" + "B" * 16
        wait_until(
            lambda: (
                {(v["key"], v["token"]) for v in views()}
                == {(issued["AWS_ACCESS_KEY_ID"], issued["AWS_SESSION_TOKEN"])}
            ),
            30,
            "moto session credentials on the workers",
        )
        cid = cluster.cluster_id
        with httpx.Client(
            base_url=embedded_server.url,
            headers={"Authorization": f"Bearer {embedded_server.token}"},
            timeout=30,
        ) as api:
            for path in (f"/v1/clusters/{cid}", "/v1/clusters", f"/v1/clusters/{cid}/logs"):
                answers.append(api.get(path).text)
        answers += [repr(cluster), json.dumps(cluster.get_logs())]

    stored = b"".join(
        p.read_bytes() for p in sorted(embedded_server.data_dir.rglob("*")) if p.is_file()
    )
    assert cid is not None and cid.encode() in stored  # the search sees the cluster
    log = embedded_server.log_path.read_bytes()
    for canary in canaries:
        assert canary.encode() not in stored and canary.encode() not in log
        assert not [a for a in answers if canary in a]
