"""E2E helpers: an authenticated HTTP client on the embedded server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import EmbeddedServer


@pytest.fixture
def api(embedded_server: EmbeddedServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=embedded_server.url,
        headers={"Authorization": f"Bearer {embedded_server.token}"},
        timeout=30,
    ) as client:
        yield client
