"""One loopback HTTP server in a daemon thread: what every HTTP stand-in of the tests
(API Gateway, Lambda Invoke, IMDS, the Google fakes) is served by."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log)."""

    def log_message(self, *args: Any) -> None:
        pass


class LoopbackHttpServer:
    """``handler`` served on 127.0.0.1 at a free port (``url``), a thread per request.
    ``start``/``stop`` (or a ``with`` block); ``stop`` waits for the serving thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str = "loopback-http") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> LoopbackHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def __enter__(self) -> LoopbackHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
