"""The one small JSON-over-HTTP server the fakes share: a thread server on 127.0.0.1 with
a table of ``(method, path regex, handler)`` routes, started and stopped by its owner.

A handler gets the path's named groups, the query and the parsed JSON body, and returns
``(status, JSON body)``; ``HttpError`` answers Google's error shape. A body that the
client libraries' proto types refuse is a 400, so a malformed request fails the test.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback_http import LoopbackHttpServer, QuietHandler

Handler = Callable[[dict[str, str], dict[str, str], Any], tuple[int, Any]]

_REASONS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or _REASONS.get(status, "FAILED_PRECONDITION")


def parse(proto_type: Any, body: Any) -> Any:
    """``body`` as ``proto_type`` (a proto-plus message class), unknown fields refused;
    raises ``HttpError(400)`` naming what the proto parser disliked."""
    try:
        return proto_type.from_json(json.dumps(body), ignore_unknown_fields=False)
    except Exception as e:
        raise HttpError(400, f"invalid {proto_type.__name__}: {e}") from None


def to_dict(message: Any) -> dict[str, Any]:
    """A proto-plus message as its JSON object (camelCase names, unset fields left out)."""
    return json.loads(
        type(message).to_json(
            message, use_integers_for_enums=False, always_print_fields_with_no_presence=False
        )
    )


class FakeServer:
    """Serves ``routes`` on a free loopback port until ``stop``; ``errors`` collects the
    tracebacks of handlers that crashed (tests assert it stays empty)."""

    def __init__(self, routes: list[tuple[str, str, Handler]]) -> None:
        compiled = [(m, re.compile(f"^{p}$"), h) for m, p, h in routes]
        self.errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        fake = self

        class RequestHandler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, url.path))
                status, answer = 404, _error(404, f"no route for {self.command} {url.path}")
                for method, pattern, handler in compiled:
                    match = pattern.match(url.path)
                    if method != self.command or match is None:
                        continue
                    try:
                        body = json.loads(raw) if raw else None
                        status, answer = handler(match.groupdict(), query, body)
                    except HttpError as e:
                        status, answer = e.status, _error(e.status, str(e), e.reason)
                    except Exception:
                        fake.errors.append(traceback.format_exc())
                        status, answer = 500, _error(500, "the fake crashed", "INTERNAL")
                    break
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        self.http = LoopbackHttpServer(RequestHandler)
        self.server, self.url = self.http.server, self.http.url

    def start(self) -> FakeServer:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()


def _error(status: int, message: str, reason: str = "") -> dict[str, Any]:
    reason = reason or _REASONS.get(status, "")
    return {
        "error": {
            "code": status,
            "message": message,
            "status": reason,
            "errors": [{"reason": reason, "message": message}],
        }
    }
