"""The embedded HTTP server: uvicorn in front of the same powertools resolver Lambda uses.

Each HTTP request is translated into an API Gateway HTTP API (v2) proxy event, resolved,
and the proxy response is written back. The powertools resolver keeps the current event in
class state, so resolutions must not overlap: they run one at a time on the event loop
(every handler is short: SQLite reads and writes, certificate generation on create).
Handing each one to a thread cost ~20% of a heartbeat and bought no parallelism.

What API Gateway does before Lambda sees a request, ``LimitedHttpToolsProtocol`` does
here: request line and headers of at most ``ServerLimits.max_header_bytes`` (431), a
whole request read within ``ServerLimits.read_timeout`` (408, so a slow client cannot
hold a connection), and a JSON error for anything the HTTP parser cannot read (400).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote_plus

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..api.app import MAX_BODY_BYTES

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class LambdaContextStub:
    """What powertools reads from a Lambda context, for the embedded server."""

    function_name = "billow-embedded"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:billow-embedded"
    memory_limit_in_mb = 0
    log_group_name = "embedded"
    log_stream_name = "embedded"

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def http_api_event(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict[str, Any]:
    """An API Gateway HTTP API v2 proxy event for one request (headers lower-cased)."""
    params: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        key, value = unquote_plus(key), unquote_plus(value)
        params[key] = f"{params[key]},{value}" if key in params else value
    try:
        text, is_b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(body).decode(), True
    request_id = str(uuid.uuid4())
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": params or None,
        "requestContext": {
            "accountId": "embedded",
            "apiId": "embedded",
            "domainName": headers.get("host", "localhost"),
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": int(time.time() * 1000),
        },
        "body": text if body else None,
        "isBase64Encoded": is_b64,
    }


@dataclass(frozen=True)
class ServerLimits:
    """What the embedded server accepts of one request before the API sees it.

    A request must arrive within ``read_timeout`` seconds, plus one second for each
    ``min_body_rate`` bytes its Content-Length declares (wheel uploads to ``/objects/``
    may be large; API bodies are at most 1 MiB).
    """

    max_header_bytes: int = 64 * 1024
    read_timeout: float = 30.0
    min_body_rate: int = 1 << 20


def error_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the API's JSON error body; it closes the connection."""
    body = json.dumps({"error": code, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a size limit on the request head, a deadline on
    reading each request, and JSON instead of uvicorn's plain-text 400.

    ``limits`` is a class attribute (uvicorn builds one protocol per connection with
    arguments of its own): ``with_limits`` makes a subclass bound to other limits.
    """

    limits = ServerLimits()

    @classmethod
    def with_limits(cls, limits: ServerLimits) -> type[LimitedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # reading a request line and headers
        self._head_bytes = 0  # read while in the head (bounds what httptools buffers)
        self._head_size = 0  # request line and headers as parsed (the exact limit)
        self._progress = 0  # heads and requests completed on this connection
        self._deadline: asyncio.TimerHandle | None = None
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        progress = self._progress
        super().data_received(data)
        if self._in_head and self._progress == progress and not self.transport.is_closing():
            # A read that completed no head and no request is head bytes only. Counted
            # after httptools saw it: memory stays within the limit plus one read,
            # however long the header a client sends.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(*self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._head_size = 0
        self._arm_deadline()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress += 1
        if self._head_size > self.limits.max_header_bytes:
            # Before uvicorn starts the app; the parse error it raises is answered 431.
            self._refuse(*self._head_too_large())
            raise ValueError("request head too large")
        super().on_headers_complete()
        length = dict(self.headers).get(b"content-length", b"")
        if length.isdigit():
            self._arm_deadline(int(length) / self.limits.min_body_rate)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm_deadline()
        self._in_head = True  # what comes next is the next request
        self._progress += 1

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers when httptools cannot parse the request."""
        self._refuse(400, "bad-request", "invalid HTTP request")

    def _head_too_large(self) -> tuple[int, str, str]:
        limit = self.limits.max_header_bytes
        return 431, "headers-too-large", f"request line and headers exceed {limit} bytes"

    def _refuse(self, status: int, code: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(error_response(status, code, message))
            self.transport.close()

    def _arm_deadline(self, extra: float = 0.0) -> None:
        self._disarm_deadline()
        seconds = self.limits.read_timeout + extra
        self._deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        """The request was not read in time: answer 408 unless a response has begun (the
        API may answer early, e.g. 413, while a client still sends), and close."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.scope is self.scope and cycle.response_started
        began = self.scope is not None
        if began and not answered:
            self._refuse(
                408,
                "request-timeout",
                f"the request was not received within {self.limits.read_timeout:g} seconds",
            )
        else:
            self.transport.close()


class ProxyASGIApp:
    """ASGI app that serves an ``APIGatewayHttpResolver``."""

    def __init__(self, resolver: APIGatewayHttpResolver) -> None:
        self.resolver = resolver
        self._lock = threading.Lock()

    def _resolve(self, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            context = LambdaContextStub(event["requestContext"]["requestId"])
            return self.resolver.resolve(event, cast(Any, context))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":  # the API has none: refuse the handshake (403)
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left (or was timed out): a partial body is no request
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        client = scope.get("client") or ("127.0.0.1", 0)
        event = http_api_event(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            b"".join(chunks),
            client[0],
        )
        response = self._resolve(event)
        body = response.get("body") or ""
        payload = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        out_headers = [
            (k.encode(), str(v).encode()) for k, v in response.get("headers", {}).items()
        ]
        out_headers += [(b"set-cookie", c.encode()) for c in response.get("cookies", [])]
        await send(
            {
                "type": "http.response.start",
                "status": response["statusCode"],
                "headers": out_headers,
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": "payload-too-large",
                "message": f"request body exceeds {MAX_BODY_BYTES} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
