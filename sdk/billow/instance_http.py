"""HTTP for the instance side (the agent's bootstrap, the scheduler plugin's heartbeats,
IMDS) on the standard library.

Not httpx: every agent process of a starting cluster would import it (with rich and
pygments, which it loads when installed) for a few requests, about 0.1 s of CPU each, on
the critical path of a cold start.
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    """A server's answer, whatever its status."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The body as JSON; raises ``ValueError`` when it is not."""
        return json.loads(self.body or b"null")


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # the system's CAs, loaded once per process


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = 10.0,
) -> Answer:
    """Send one request. Any HTTP status is an ``Answer``; raises ``OSError``
    (``urllib.error.URLError`` among them) when the server cannot be reached or the
    connection fails, ``TimeoutError`` after ``timeout`` seconds."""
    data = None if json_body is None else json.dumps(json_body).encode()
    sent = dict(headers or {})
    if data is not None:
        sent["Content-Type"] = "application/json"
    elif method in ("POST", "PUT"):
        data = b""
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    context = _tls() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as e:
        with e:
            return Answer(e.code, e.read())
