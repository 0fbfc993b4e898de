"""The embedded HTTP server: uvicorn in front of the same powertools resolver Lambda uses.

Each HTTP request is translated into an API Gateway HTTP API (v2) proxy event, resolved,
and the proxy response is written back. The powertools resolver keeps the current event in
class state, so resolutions must not overlap: they run one at a time on the event loop
(every handler is short: SQLite reads and writes, certificate generation on create).
Handing each one to a thread cost ~20% of a heartbeat and bought no parallelism.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import unquote_plus

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

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
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
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
