"""Async HTTP client of the control plane API (``/v1``), raising typed errors."""

from __future__ import annotations

import functools
import re
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
from dask.utils import parse_timedelta

from . import config
from .errors import (
    AuthenticationError,
    BillowAPIError,
    ClusterNotFound,
    PermissionDenied,
    QuotaExceeded,
    SoftwareEnvironmentNotFound,
    ValidationError,
)

CLUSTER_ID = re.compile(r"^c-[0-9a-f]{16}$")
_ERRORS = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: ClusterNotFound,
    422: ValidationError,
}


@functools.cache
def trusted_cas() -> ssl.SSLContext:
    """httpx's default verification (certifi's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``),
    built once per process: loading the CAs costs every new client 30-50 ms."""
    return httpx.create_ssl_context()


def tls_for(url: str) -> ssl.SSLContext:
    """The TLS context of a client of ``url``: the trusted CAs for ``https``; for plain
    ``http`` (the embedded server on this machine) one that trusts nothing, so that no
    CA is loaded for a client that never does TLS, and any TLS it did would fail closed."""
    if url.startswith("https:"):
        return trusted_cas()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and names


class ControlPlaneClient:
    """One async session with the control plane. Use as ``async with`` or call ``aclose``."""

    def __init__(
        self, server: str | None = None, token: str | None = None, timeout: float | None = None
    ) -> None:
        self.server, token = config.credentials(server, token)
        seconds = timeout or float(parse_timedelta(config.get("request-timeout", "30s")))
        self._http = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "billow-sdk"},
            timeout=seconds,
            verify=tls_for(self.server),
        )

    async def __aenter__(self) -> ControlPlaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    # -- clusters ------------------------------------------------------------------------

    async def create_cluster(
        self, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        key = idempotency_key or str(uuid.uuid4())
        return await self.request(
            "POST", "/v1/clusters", json=spec, headers={"Idempotency-Key": key}
        )

    async def find_cluster(self, name: str, active: bool = True) -> dict[str, Any] | None:
        """The newest cluster of yours with this name (active ones only by default)."""
        found = await self.request(
            "GET", "/v1/clusters", params={"name": name, "active": str(active).lower()}
        )
        return found["clusters"][0] if found["clusters"] else None

    async def resolve(self, name_or_id: str) -> dict[str, Any]:
        """A cluster by id, or the newest of yours with that name (active ones first)."""
        if CLUSTER_ID.match(name_or_id):
            return await self.get_cluster(name_or_id)
        found = await self.find_cluster(name_or_id) or await self.find_cluster(
            name_or_id, active=False
        )
        if found is None:
            raise ClusterNotFound(404, "not-found", f"no cluster named {name_or_id!r}")
        return found

    async def get_cluster(self, cluster_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/clusters/{cluster_id}")

    async def list_clusters(self, active: bool = False) -> list[dict[str, Any]]:
        found = await self.request("GET", "/v1/clusters", params={"active": str(active).lower()})
        return found["clusters"]

    async def scale(
        self, cluster_id: str, n_workers: int, remove: list[str] | None = None
    ) -> dict[str, Any]:
        return await self.request(
            "POST",
            f"/v1/clusters/{cluster_id}/scale",
            json={"n_workers": n_workers, "remove": remove or []},
        )

    async def stop(self, cluster_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/v1/clusters/{cluster_id}/stop")

    async def credentials(self, cluster_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/clusters/{cluster_id}/credentials")

    # -- software ------------------------------------------------------------------------

    async def upload_wheels(self, wheels: list[tuple[Path, str]]) -> tuple[int, int]:
        """Upload ``(path, sha256)`` wheels the deployment's object store lacks, straight
        to the pre-signed URLs the control plane issues (their bytes never pass through
        the API). Returns ``(uploaded, already_present)``."""
        if not wheels:
            return 0, 0
        files = [
            {"sha256": sha, "size": path.stat().st_size, "filename": path.name}
            for path, sha in wheels
        ]
        answer = await self.request("POST", "/v1/software/uploads", json={"files": files})
        paths = {sha: path for path, sha in wheels}
        uploaded = 0
        async with httpx.AsyncClient(timeout=self._http.timeout, verify=trusted_cas()) as store:
            for item in answer["uploads"]:
                if item["present"]:
                    continue
                response = await store.put(
                    item["url"],
                    content=paths[item["sha256"]].read_bytes(),
                    headers=item.get("headers") or None,  # S3: the checksum it verifies
                )
                if response.status_code >= 400:
                    raise BillowAPIError(
                        response.status_code,
                        "upload-failed",
                        f"uploading {paths[item['sha256']].name} failed: {response.text.strip()}",
                    )
                uploaded += 1
        return uploaded, len(wheels) - uploaded

    async def logs(self, cluster_id: str, lines: int = 200) -> dict[str, Any]:
        return await self.request("GET", f"/v1/clusters/{cluster_id}/logs", params={"lines": lines})

    # -- software environments -----------------------------------------------------------

    async def _environment_request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request``, with a 404 raised as ``SoftwareEnvironmentNotFound``."""
        try:
            return await self.request(method, path, **kwargs)
        except ClusterNotFound as e:
            raise SoftwareEnvironmentNotFound(e.status, e.code, e.message, e.field) from None

    async def create_environment(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Store ``spec`` as the next revision of ``name`` (or get the latest revision
        back when its spec is the same)."""
        return await self._environment_request(
            "POST", f"/v1/environments/{name}", json={"spec": spec}
        )

    async def get_environment(self, name: str, revision: int | None = None) -> dict[str, Any]:
        params = {"revision": revision} if revision is not None else None
        return await self._environment_request("GET", f"/v1/environments/{name}", params=params)

    async def list_environments(self) -> list[dict[str, Any]]:
        found = await self.request("GET", "/v1/environments")
        return found["environments"]

    async def delete_environment(self, name: str) -> dict[str, Any]:
        return await self._environment_request("DELETE", f"/v1/environments/{name}")


def error_from_response(response: httpx.Response) -> BillowAPIError:
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:500] or response.reason_phrase}
    cls = _ERRORS.get(response.status_code, BillowAPIError)
    if body.get("error") == "quota-exceeded":
        cls = QuotaExceeded
    return cls(
        response.status_code,
        body.get("error", "error"),
        body.get("message", response.reason_phrase),
        body.get("field"),
        body.get("detail"),
    )
