"""A Google access token from application default credentials, as ``obtain`` gets it on
a client: google-auth reads a real ADC file (a service account key, whose ``token_uri``
it honours) and trades a signed JWT for a token at a loopback stand-in of Google's
OAuth token endpoint.

The stand-in answers any POST with a fixed token: it does not check the refresh token,
client id or secret, nor model errors or scopes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from billow.credentials import obtain
from tests.support.gcp_fakes.gcs import service_account_key

pytestmark = pytest.mark.integration

TOKEN = "ya29.loopback-" + "x" * 20


class _TokenEndpoint(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"access_token": TOKEN, "expires_in": 600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_uri() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_google_token_from_application_default_credentials(
    token_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adc = tmp_path / "adc.json"
    service_account_key(adc, "billow-test@test-project.iam.gserviceaccount.com", token_uri)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    forwarded, notes = obtain(3600)
    assert notes == [] and forwarded.gcp_token == TOKEN and forwarded.aws is None
    assert 500 < forwarded.expires_at - time.time() <= 600  # the token's own expiry
