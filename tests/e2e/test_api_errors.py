"""Bad input gets a 4xx JSON error naming the problem, and creates nothing."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e]


def count_clusters(api: httpx.Client) -> int:
    return len(api.get("/v1/clusters").json()["clusters"])


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"n_workers": -1}, "n_workers", "greater than or equal to 0"),
        ({"n_workers": "ten"}, "n_workers", "integer"),
        ({"n_workers": [5, 2]}, "n_workers", "minimum <= maximum"),
        ({"n_wokers": 2}, "n_wokers", "Extra inputs are not permitted"),
        ({"worker_memory": "lots"}, "worker_memory", "memory size"),
        ({"name": "Bad Name!"}, "name", "pattern"),
        ({"idle_timeout": "soon"}, "idle_timeout", "duration"),
        ({"tags": {"billow:owner": "x"}}, "tags", "reserved prefix"),
    ],
)
def test_invalid_request_names_the_field_and_creates_nothing(
    api: httpx.Client, body: dict, field: str, fragment: str
) -> None:
    before = count_clusters(api)
    response = api.post("/v1/clusters", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid"
    assert field in error["message"] and fragment in error["message"], error["message"]
    assert any(d["field"].startswith(field) for d in error["detail"])
    assert count_clusters(api) == before


def test_ten_megabyte_body_is_refused(api: httpx.Client) -> None:
    before = count_clusters(api)
    big = json.dumps({"n_workers": 1, "tags": {"x": "y" * (10 * 2**20)}})
    response = api.post("/v1/clusters", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload-too-large"
    assert count_clusters(api) == before


def test_malformed_json_is_400_and_creates_nothing(api: httpx.Client) -> None:
    before = count_clusters(api)
    response = api.post(
        "/v1/clusters", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad-request"
    assert count_clusters(api) == before


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer bw_wrong"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_wrong_token_is_unauthorized(
    embedded_server: EmbeddedServer, api: httpx.Client, headers: dict
) -> None:
    before = count_clusters(api)
    response = httpx.post(
        f"{embedded_server.url}/v1/clusters", json={"n_workers": 1}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert count_clusters(api) == before


def test_other_users_cluster_is_invisible(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    created = api.post("/v1/users", json={"name": "alice"})
    if not embedded_server.multi_tenant:  # not root: refused, see test_single_tenant.py
        assert created.status_code == 409 and "single-tenant" in created.json()["message"]
        pytest.skip("a second user needs a server that isolates tenants (run as root)")
    assert created.status_code == 201
    alice = httpx.Client(
        base_url=embedded_server.url,
        timeout=30,
        headers={"Authorization": f"Bearer {created.json()['token']}"},
    )
    cluster = alice.post("/v1/clusters", json={"n_workers": 0, "name": "alices"}).json()
    try:
        mallory_token = api.post("/v1/users", json={"name": "mallory"}).json()["token"]
        mallory = httpx.Client(
            base_url=embedded_server.url,
            timeout=30,
            headers={"Authorization": f"Bearer {mallory_token}"},
        )
        for method, path in [
            ("GET", ""),
            ("GET", "/credentials"),
            ("GET", "/logs"),
            ("POST", "/stop"),
        ]:
            r = mallory.request(method, f"/v1/clusters/{cluster['id']}{path}")
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"] == "not-found"
        r = mallory.post(f"/v1/clusters/{cluster['id']}/scale", json={"n_workers": 3})
        assert r.status_code == 404
        assert mallory.get("/v1/clusters").json()["clusters"] == []
        assert mallory.post("/v1/users", json={"name": "eve"}).status_code == 403
        assert alice.get(f"/v1/clusters/{cluster['id']}").json()["target"] == "running"
    finally:
        alice.post(f"/v1/clusters/{cluster['id']}/stop")


def test_concurrent_creates_with_one_idempotency_key_make_one_cluster(
    api: httpx.Client, embedded_server: EmbeddedServer
) -> None:
    body = {"n_workers": 0, "name": "idem"}
    headers = {"Authorization": f"Bearer {embedded_server.token}", "Idempotency-Key": "k-20"}

    def create(_: int) -> httpx.Response:
        return httpx.post(
            f"{embedded_server.url}/v1/clusters", json=body, headers=headers, timeout=60
        )

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(create, range(20)))
    try:
        assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
        assert len({r.json()["id"] for r in responses}) == 1
        named = api.get("/v1/clusters", params={"name": "idem"}).json()["clusters"]
        assert len(named) == 1
        reused = httpx.post(
            f"{embedded_server.url}/v1/clusters", json={"n_workers": 1}, headers=headers
        )
        assert reused.status_code == 409 and reused.json()["field"] == "Idempotency-Key"
    finally:
        api.post(f"/v1/clusters/{responses[0].json()['id']}/stop")


def test_openapi_schema_is_served(embedded_server: EmbeddedServer) -> None:
    schema = httpx.get(f"{embedded_server.url}/v1/openapi.json").json()
    assert "/v1/clusters" in schema["paths"]
    assert "ClusterRequest" in json.dumps(schema["components"])


def test_unknown_route_is_a_json_404(embedded_server: EmbeddedServer) -> None:
    r = httpx.get(f"{embedded_server.url}/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "not-found"
