"""Quotas as a Python user meets them: ``billow.Cluster`` over quota raises
``billow.QuotaExceeded`` naming the limit, and nothing is created."""

from __future__ import annotations

import uuid

import httpx
import pytest

import billow
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e]


def test_an_over_quota_cluster_raises_and_creates_nothing(
    embedded_server: EmbeddedServer,
) -> None:
    name = f"q-{uuid.uuid4().hex[:6]}"
    with httpx.Client(
        base_url=embedded_server.url,
        headers={"Authorization": f"Bearer {embedded_server.token}"},
        timeout=30,
    ) as admin:
        added = admin.post("/v1/admin/users", json={"name": name})
        assert added.status_code == 201, added.text
        token = added.json()["token"]
        with pytest.raises(billow.QuotaExceeded) as raised:
            billow.Cluster(
                n_workers=[100, 200],
                worker_cpu=2,
                server=embedded_server.url,
                token=token,
                show_progress=False,
                credentials=None,
            )
        assert raised.value.status == 403
        assert f"the cores limit of user {name} is 64; this request asks for 201" in str(
            raised.value
        )
        mine = httpx.get(
            f"{embedded_server.url}/v1/clusters",
            headers={"Authorization": f"Bearer {token}"},
            params={"active": "false"},
        )
        assert mine.json()["clusters"] == []
