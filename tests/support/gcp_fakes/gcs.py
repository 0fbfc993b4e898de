"""A loopback fake of the few Cloud Storage calls ``adapters/gcp/gcs_object_store`` makes:

* JSON API ``GET /storage/v1/b/<bucket>/o/<object>`` (object metadata; what
  ``Bucket.get_blob`` reads), with anonymous credentials;
* XML API ``PUT`` and ``GET /<bucket>/<object>`` through **V4 signed URLs only**
  (``GOOG4-RSA-SHA256``): the fake rebuilds the canonical request from what it received
  (method, path, query without the signature, the signed headers' received values, the
  payload ``x-goog-content-sha256`` or ``UNSIGNED-PAYLOAD``) and checks the RSA signature
  with the public key of the credential's service account (``service_account_key``
  writes a key file and returns its public key), the expiry, and that every
  ``x-goog-*`` header sent is signed. A ``PUT`` is refused (400) when the body's sha256
  is not its signed ``x-goog-content-sha256`` or its size is outside a signed
  ``x-goog-content-length-range``; its ``x-goog-meta-*`` headers become the object's
  metadata.

``put`` stores an object directly, as an admin's ``gcloud storage cp`` does.

Not modelled: IAM and OAuth (the JSON API is anonymous), buckets other than the one,
generations and preconditions, resumable and multipart uploads, ``HEAD``, ranges, CORS,
V2 and HMAC signatures, ``Content-MD5`` and ``x-goog-hash`` checks, listings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.loopback_http import LoopbackHttpServer, QuietHandler


def service_account_key(
    path: Path, email: str, token_uri: str = "http://127.0.0.1:9/token"
) -> rsa.RSAPublicKey:
    """Write a service-account key file for ``email`` (a new RSA key) to ``path``; return
    the public key the fake verifies signatures with. ``token_uri``: where the key is
    traded for access tokens (by default nowhere: signing is local)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": hashlib.sha1(pem.encode()).hexdigest(),
        "private_key": pem,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return key.public_key()


class SignatureError(Exception):
    pass


class GcsFake:
    """One bucket; see the module docstring. ``refused`` lists why requests were
    refused (tests assert on it)."""

    def __init__(self, bucket: str, keys: dict[str, rsa.RSAPublicKey]) -> None:
        self.bucket, self.keys = bucket, keys
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.refused: list[str] = []
        self.downloads: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload, kind = fake._handle(self, body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = _serve

        self.http = LoopbackHttpServer(Handler)
        self.server, self.url = self.http.server, self.http.url

    def start(self) -> GcsFake:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()

    def put(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        with self._lock:
            self.objects[name] = (data, dict(metadata or {}))

    # -- requests ----------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes, str]:
        url = urlsplit(request.path)
        json_prefix = f"/storage/v1/b/{self.bucket}/o/"
        if request.command == "GET" and url.path.startswith(json_prefix):
            return self._metadata(unquote(url.path[len(json_prefix) :]))
        prefix = f"/{self.bucket}/"
        if request.command not in ("GET", "PUT") or not url.path.startswith(prefix):
            return _error(404, f"no route for {request.command} {url.path}")
        name = unquote(url.path[len(prefix) :])
        try:
            signed = self._verify(request, url.path, url.query)
            if request.command == "PUT":
                return self._upload(name, body, signed)
        except SignatureError as e:
            self.refused.append(str(e))
            return _error(403 if "signature" in str(e).lower() else 400, str(e))
        with self._lock:
            found = self.objects.get(name)
        if found is None:
            return _error(404, f"No such object: {self.bucket}/{name}")
        self.downloads.append(name)
        return 200, found[0], "application/octet-stream"

    def _metadata(self, name: str) -> tuple[int, bytes, str]:
        with self._lock:
            found = self.objects.get(name)
        if found is None:
            return _error(404, f"No such object: {self.bucket}/{name}")
        data, metadata = found
        resource: dict[str, Any] = {
            "kind": "storage#object",
            "bucket": self.bucket,
            "name": name,
            "size": str(len(data)),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
        }
        if metadata:
            resource["metadata"] = metadata
        return 200, json.dumps(resource).encode(), "application/json"

    def _verify(self, request: BaseHTTPRequestHandler, path: str, query: str) -> dict[str, str]:
        """The signed headers (lower-case name: received value) of a valid V4 signed URL;
        raises ``SignatureError`` saying what is wrong."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        signature = params.pop("X-Goog-Signature", "")
        if params.get("X-Goog-Algorithm") != "GOOG4-RSA-SHA256" or not signature:
            raise SignatureError("not a V4 signed URL (GOOG4-RSA-SHA256)")
        email, _, scope = params.get("X-Goog-Credential", "").partition("/")
        stamp = params.get("X-Goog-Date", "")
        try:
            issued = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires = int(params.get("X-Goog-Expires", ""))
        except ValueError:
            raise SignatureError("malformed X-Goog-Date or X-Goog-Expires") from None
        if time.time() > issued.timestamp() + expires:
            raise SignatureError("the signed URL expired")
        names = params.get("X-Goog-SignedHeaders", "").split(";")
        received = {k.lower(): " ".join(v.split()) for k, v in request.headers.items()}
        unsigned = [k for k in received if k.startswith("x-goog-") and k not in names]
        if unsigned:
            raise SignatureError(f"headers sent but not signed: {unsigned}")
        signed = {n: received.get(n, "") for n in names}
        canonical = "\n".join(
            [
                request.command,
                path,
                "&".join(sorted(f"{_q(k)}={_q(v)}" for k, v in params.items())),
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                signed.get("x-goog-content-sha256", "UNSIGNED-PAYLOAD"),
            ]
        )
        to_sign = "\n".join(
            ["GOOG4-RSA-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = self.keys.get(email)
        if key is None:
            raise SignatureError(f"signature by unknown account {email!r}")
        try:
            key.verify(
                bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            raise SignatureError("the request signature does not match") from None
        return signed

    def _upload(self, name: str, body: bytes, signed: dict[str, str]) -> tuple[int, bytes, str]:
        claimed = signed.get("x-goog-content-sha256")
        if claimed is not None and hashlib.sha256(body).hexdigest() != claimed:
            raise SignatureError("x-goog-content-sha256 does not match the body")
        if "x-goog-content-length-range" in signed:
            low, _, high = signed["x-goog-content-length-range"].partition(",")
            if not int(low) <= len(body) <= int(high):
                raise SignatureError(f"body of {len(body)} bytes outside the length range")
        prefix = "x-goog-meta-"
        self.put(
            name, body, {k[len(prefix) :]: v for k, v in signed.items() if k.startswith(prefix)}
        )
        return 200, b"", "text/plain"


def _q(value: str) -> str:
    return quote(value, safe="~")


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Message>{message}</Message></Error>"
    if status == 404:
        body = {"error": {"code": 404, "message": message, "errors": [{"reason": "notFound"}]}}
        return status, json.dumps(body).encode(), "application/json"
    return status, xml.encode(), "application/xml"
