"""Loopback stand-ins for what EC2 gives an instance besides its user data: the instance
metadata service (IMDSv2) and the one-to-one NAT of its public IP.

``ImdsServer`` serves IMDSv2 for many instances at once, each under its own prefix
(``<url>/<instance-id>``, the ``BILLOW_IMDS_ENDPOINT`` the ``InstanceRunner`` gives it):
``PUT /latest/api/token`` answers a session token, and ``GET /latest/meta-data/<path>``
answers the instance's value only with that token (401 without, as IMDSv2 does; 404 for
a path the instance has no value for). Tests set values with ``set(instance_id, path,
value)``, for example ``spot/instance-action``.

``NatForwarder`` stands for the public IP: a TCP listener on another loopback address
(``127.0.0.2``) relaying every connection to the instance's own address, bytes unchanged
(TLS passes through), counting the connections it relayed.

Not modelled: token TTLs and hop limits, IMDSv1, the rest of the metadata tree.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading

from tests.support.loopback_http import LoopbackHttpServer, QuietHandler

TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"


class ImdsServer:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path)
        outer = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, text: str = "") -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _split(self) -> tuple[str, str]:
                instance, _, rest = self.path.lstrip("/").partition("/")
                return instance, "/" + rest

            def do_PUT(self) -> None:
                instance, path = self._split()
                outer.requests.append(("PUT", path))
                if path != "/latest/api/token" or not self.headers.get(TTL_HEADER):
                    return self._reply(400, "bad token request")
                token = secrets.token_urlsafe(24)
                outer.tokens.add(token)
                self._reply(200, token)

            def do_GET(self) -> None:
                instance, path = self._split()
                outer.requests.append(("GET", path))
                if self.headers.get(TOKEN_HEADER) not in outer.tokens:
                    return self._reply(401, "")
                prefix = "/latest/meta-data/"
                value = outer.values.get(instance, {}).get(path[len(prefix) :])
                if not path.startswith(prefix) or value is None:
                    return self._reply(404, "Not Found")
                self._reply(200, value)

        self.http = LoopbackHttpServer(Handler, "imds")
        self.server, self.url = self.http.server, self.http.url

    def set(self, instance_id: str, path: str, value: str | None) -> None:
        if value is None:
            self.values.get(instance_id, {}).pop(path, None)
        else:
            self.values.setdefault(instance_id, {})[path] = value

    def endpoint(self, instance_id: str) -> str:
        return f"{self.url}/{instance_id}"

    def __enter__(self) -> ImdsServer:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.stop()


class NatForwarder:
    """Relays ``public_host:port`` to ``private_host:port`` for each added port."""

    def __init__(self, public_host: str = "127.0.0.2", private_host: str = "127.0.0.1") -> None:
        self.public_host = public_host
        self.private_host = private_host
        self.connections: dict[int, int] = {}
        self._listeners: list[socket.socket] = []
        self._stop = threading.Event()

    def add(self, port: int) -> None:
        listener = socket.create_server((self.public_host, port))
        listener.settimeout(0.2)
        self._listeners.append(listener)
        self.connections[port] = 0
        threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                outside, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                inside = socket.create_connection((self.private_host, port), timeout=5)
            except OSError:
                outside.close()
                continue
            self.connections[port] += 1
            done = threading.Semaphore(0)
            for a, b in ((outside, inside), (inside, outside)):
                threading.Thread(target=self._pipe, args=(a, b, done), daemon=True).start()
            threading.Thread(target=self._close, args=(outside, inside, done), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, done: threading.Semaphore) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            done.release()

    @staticmethod
    def _close(a: socket.socket, b: socket.socket, done: threading.Semaphore) -> None:
        done.acquire()
        done.acquire()
        a.close()
        b.close()

    def close(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()
