"""The embedded deployment's object store: a folder of wheels, named by their sha256, and
HMAC-signed URLs the way S3 pre-signs them.

``billow server`` serves ``/objects/<sha256>`` beside the API (``ObjectStoreApp``), outside
the API's route table and its request lock: uploads stream to a temporary file, are
checked against their declared size and sha256, and only then renamed into place, so an
object that exists is always whole. A URL names the method, the object, its size (for
uploads) and an expiry, signed with a key kept in the data dir (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

SHA256 = re.compile(r"^[0-9a-f]{64}$")
URL_LIFETIME = 900.0  # seconds a signed URL stays valid
MAX_OBJECT_BYTES = 512 * 2**20
CHUNK = 1 << 20

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class LocalObjectStore:
    """Implements ``billow_control.core.ports.ObjectStore`` on a folder.

    Parameters
    ----------
    root
        The folder (created, mode 0700); objects are ``root/<sha256>``.
    base_url
        The server's URL; signed URLs are ``<base_url>/objects/<sha256>?...``.
    key_file
        The signing key, created (random, mode 0600) when missing.
    clock
        Unix time in seconds (injectable for expiry tests).
    """

    def __init__(
        self,
        root: Path,
        base_url: str,
        key_file: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        self._key = key_file.read_bytes()

    # -- the port ----------------------------------------------------------------------

    def upload_url(self, sha256: str, size: int) -> str:
        return self._url("PUT", sha256, size)

    def upload_headers(self, sha256: str, size: int) -> dict[str, str]:
        return {}  # the signed URL names size and sha256; the server checks the bytes

    def download_url(self, sha256: str) -> str:
        return self._url("GET", sha256, None)

    def exists(self, sha256: str) -> bool:
        return bool(SHA256.match(sha256)) and (self.root / sha256).is_file()

    # -- signing -----------------------------------------------------------------------

    def _signature(self, method: str, sha256: str, size: int | None, expires: int) -> str:
        message = f"{method}\n{sha256}\n{size if size is not None else ''}\n{expires}"
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def _url(self, method: str, sha256: str, size: int | None) -> str:
        if not SHA256.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        expires = int(self.clock() + URL_LIFETIME)
        query: dict[str, Any] = {"expires": expires}
        if size is not None:
            query["size"] = size
        query["signature"] = self._signature(method, sha256, size, expires)
        return f"{self.base_url}/objects/{sha256}?{urlencode(query)}"

    def verify(self, method: str, sha256: str, query: str) -> tuple[int | None, str]:
        """The signed size (uploads) if ``query`` signs ``method`` on ``sha256`` and has not
        expired; otherwise ``(None, why)``. Never says which part was wrong beyond that."""
        params = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            expires = int(params["expires"])
            size = int(params["size"]) if method == "PUT" else None
            given = params["signature"]
        except (KeyError, ValueError):
            return None, "missing or malformed signature"
        if not SHA256.match(sha256):
            return None, "not an object name"
        expected = self._signature(method, sha256, size, expires)
        # Bytes: compare_digest raises on a str with non-ASCII characters (a 500).
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
            return None, "bad signature"
        if self.clock() > expires:
            return None, "the URL has expired"
        return (size if size is not None else 0), ""


class ObjectStoreApp:
    """ASGI app serving signed ``PUT``/``GET`` of ``/objects/<sha256>``; every other path
    goes to ``inner`` (the API)."""

    PREFIX = "/objects/"

    def __init__(self, store: LocalObjectStore, inner: Any) -> None:
        self.store = store
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PREFIX):
            await self.inner(scope, receive, send)
            return
        sha256 = scope["path"][len(self.PREFIX) :]
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope["method"]
        if method not in ("PUT", "GET"):
            await _answer(send, 405, b"PUT or GET only\n", [(b"allow", b"GET, PUT")])
            return
        size, why = self.store.verify(method, sha256, query)
        if size is None:
            await _answer(send, 403, f"{why}\n".encode())
            return
        if method == "GET":
            await self._get(sha256, send)
        else:
            await self._put(sha256, size, receive, send)

    async def _get(self, sha256: str, send: Send) -> None:
        path = self.store.root / sha256
        if not path.is_file():
            await _answer(send, 404, b"no such object\n")
            return
        length = path.stat().st_size
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(length).encode()),
                ],
            }
        )
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _put(self, sha256: str, size: int, receive: Receive, send: Send) -> None:
        if size > MAX_OBJECT_BYTES:
            await _answer(send, 413, f"objects are at most {MAX_OBJECT_BYTES} bytes\n".encode())
            return
        digest, received = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.store.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                while True:
                    message = await receive()
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > size:
                        await _answer(send, 400, b"more bytes than the signed size\n")
                        return
                    digest.update(chunk)
                    f.write(chunk)
                    if not message.get("more_body"):
                        break
            if received != size or digest.hexdigest() != sha256:
                await _answer(send, 400, b"the bytes do not match the signed size and sha256\n")
                return
            os.replace(tmp, self.store.root / sha256)
            tmp = ""
        finally:
            if tmp:
                os.unlink(tmp)
        await _answer(send, 201, b"stored\n")


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
