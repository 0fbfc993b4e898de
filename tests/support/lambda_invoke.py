"""A loopback stand-in for the Lambda service's Invoke API, for the functions the SDK and
CLI invoke directly (``billow admin bootstrap``).

moto serves Lambda but runs a function's code only in docker, which this machine lacks.
``LambdaInvoke`` answers ``POST /2015-03-31/functions/<name>/invocations`` (what boto3's
``lambda.invoke`` sends; point it here with ``AWS_ENDPOINT_URL_LAMBDA``) by calling the
handler registered under that name in this process, with a ``FakeLambdaContext``.

What it does not model: IAM (any signature is accepted: who may invoke is AWS's check,
not something a loopback test can show), qualifiers and aliases, asynchronous invocation
types, payload size limits. An unknown name answers ``ResourceNotFoundException`` and a
handler that raises answers ``X-Amz-Function-Error: Unhandled`` with the error's type and
message, as the Lambda service does.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from tests.support.aws import FakeLambdaContext
from tests.support.loopback_http import LoopbackHttpServer, QuietHandler

PREFIX = "/2015-03-31/functions/"
SUFFIX = "/invocations"


class LambdaInvoke:
    """Serves the Invoke API for ``handlers`` (function name -> handler) on 127.0.0.1."""

    def __init__(self, handlers: dict[str, Callable[[dict, Any], Any]]) -> None:
        self.handlers = handlers
        self.calls: list[str] = []
        outer = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.partition("?")[0]
                if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
                    return self._reply(404, {"message": "unknown path"}, "UnknownOperation")
                name = unquote(path[len(PREFIX) : -len(SUFFIX)]).rsplit(":", 1)[-1]
                handler = outer.handlers.get(name)
                if handler is None:
                    message = f"Function not found: {name}"
                    return self._reply(404, {"Message": message}, "ResourceNotFoundException")
                outer.calls.append(name)
                try:
                    event = json.loads(body or b"{}")
                    output = handler(event, FakeLambdaContext(name))
                except Exception as e:
                    error = {
                        "errorType": type(e).__name__,
                        "errorMessage": str(e),
                        "stackTrace": traceback.format_tb(e.__traceback__),
                    }
                    return self._reply(200, error, function_error="Unhandled")
                return self._reply(200, output)

            def _reply(
                self,
                status: int,
                payload: Any,
                error_type: str | None = None,
                function_error: str | None = None,
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Amz-Executed-Version", "$LATEST")
                if error_type:
                    self.send_header("x-amzn-ErrorType", error_type)
                if function_error:
                    self.send_header("X-Amz-Function-Error", function_error)
                self.end_headers()
                self.wfile.write(data)

        self.http = LoopbackHttpServer(Handler, "lambda-invoke")
        self.server, self.url = self.http.server, self.http.url

    def __enter__(self) -> LambdaInvoke:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.stop()
