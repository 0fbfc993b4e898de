"""E2E helpers: an authenticated HTTP client on the embedded server, and the instance kit
of the clouds' bare instances."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.instances import InstanceKit
from tests.support.processes import EmbeddedServer


@pytest.fixture
def api(embedded_server: EmbeddedServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=embedded_server.url,
        headers={"Authorization": f"Bearer {embedded_server.token}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def instance_kit(tmp_path_factory: pytest.TempPathFactory) -> InstanceKit:
    """uv and a billow wheel built from this checkout; a uv cache warmed once (shared by
    the EC2 and Compute Engine end-to-end tests)."""
    return InstanceKit.build(tmp_path_factory.mktemp("instance-kit"))
