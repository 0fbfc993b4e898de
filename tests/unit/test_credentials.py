"""What a worker does with forwarded credentials, and the one notice of a client with
none (``billow.credentials``; the whole path runs in tests/e2e/test_credential_forwarding)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from billow.credentials import CredentialsPlugin, Forwarded, Forwarder, refresh_delay

pytestmark = pytest.mark.unit

AWS = {
    "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "secret-canary",
    "AWS_SESSION_TOKEN": "token-canary",
}


def test_a_worker_sets_the_variables_and_files_boto3_and_gcloud_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [*AWS, "AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_OAUTH_ACCESS_TOKEN"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the plugin writes os.environ
    plugin = CredentialsPlugin(Forwarded(aws=dict(AWS), gcp_token="ya29.canary"))
    plugin.setup(SimpleNamespace(local_directory=str(tmp_path)))
    for name, value in AWS.items():
        assert os.environ[name] == value
    assert os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"] == os.environ["GOOGLE_OAUTH_ACCESS_TOKEN"]
    aws_file = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
    assert "aws_session_token = token-canary" in aws_file.read_text()
    gcp_file = Path(os.environ["BILLOW_GCP_TOKEN_FILE"])
    assert gcp_file.read_text().strip() == "ya29.canary"
    for path in (aws_file, gcp_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(aws_file.parent.stat().st_mode) == 0o700
    shown = repr(plugin) + repr(plugin.forwarded)
    assert "canary" not in shown and "aws=True gcp=True" in shown


def test_a_client_without_identity_gets_one_notice_and_sends_nothing() -> None:
    sent: list[Any] = []

    class Scheduler:
        async def register_worker_plugin(self, **kw: Any) -> dict:
            sent.append(kw)
            return {}

    async def nothing() -> tuple[Forwarded, list[str]]:
        return Forwarded(), []

    notes = asyncio.run(Forwarder(Scheduler(), 60).start(nothing()))
    assert len(notes) == 1 and "no AWS or Google credentials" in notes[0]
    assert "credentials=None" in notes[0] and sent == []


def test_refresh_at_half_the_lifetime() -> None:
    assert refresh_delay(Forwarded(expires_at=1000.0), now=900.0) == 50.0
    assert refresh_delay(Forwarded(expires_at=1000.0), now=1000.5) == 1.0
