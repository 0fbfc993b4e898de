"""The isolation table: every route of the API, tried with every credential but the right one.

The routes come from the API's own ``/v1/openapi.json``, so a route added later is in the
table or this test fails until it is classified. The credentials:

* ``none``: no Authorization header;
* ``tampered``: the other tenant's API token with its last character changed;
* ``other tenant``: Bob's valid API token, against Alice's cluster and environment;
* ``cluster token``: Alice's scheduler's heartbeat token (``bwc_``), from a real bootstrap,
  against Bob's cluster on the heartbeat route (on Alice's it is the right credential);
* ``instance token``: an unused one-time token of one of Alice's instances (``bwi_``),
  on every route but the agent's own (where it is the right credential).

Outcomes: 401 for a credential that is not this kind of route's (an API token on agent
routes, a cluster or instance token on user routes); 403 for a user route that needs the
deployment admin; 404 for Alice's resources asked by Bob, byte for byte the answer he gets
for one that does not exist (after swapping in the id he asked for, which it echoes); and
routes that address no one's resource answer Bob with his own data only, no trace of
Alice's. Each request goes through ``build_app`` as Lambda and the embedded server send it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billow_control.adapters.local.object_store import LocalObjectStore
from billow_control.core.models import Heartbeat, InstanceRole
from billow_control.core.software import PackagePin, SoftwareSpec
from billow_control.runtimes.http_proxy import LambdaContextStub, http_api_event
from tests.unit.test_api_guard import JSON, Api

pytestmark = pytest.mark.unit

MISSING_CLUSTER = "c-0123456789abcdef"
MISSING_ENV = "nobody-has-this"
MISSING_TOKEN = "t-0123456789abcdef"
PUBLIC = {("GET", "/v1/health")}
USER = {
    ("GET", "/v1/whoami"),
    ("POST", "/v1/clusters"),
    ("GET", "/v1/clusters"),
    ("GET", "/v1/clusters/{cluster_id}"),
    ("POST", "/v1/clusters/{cluster_id}/scale"),
    ("POST", "/v1/clusters/{cluster_id}/stop"),
    ("GET", "/v1/clusters/{cluster_id}/credentials"),
    ("GET", "/v1/clusters/{cluster_id}/logs"),
    ("POST", "/v1/software/uploads"),
    ("GET", "/v1/environments"),
    ("POST", "/v1/environments/{name}"),
    ("GET", "/v1/environments/{name}"),
    ("DELETE", "/v1/environments/{name}"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{token_id}"),
    ("GET", "/v1/usage"),
}
# About the deployment, not any tenant: any answer but a 5xx, with nothing of Alice's (the
# embedded deployment has no machine catalog: 409).
DEPLOYMENT_WIDE = {("GET", "/v1/instance-types")}
# Team admins, viewers and deployment admins: a member (Bob) is refused, 403.
TEAM_READERS = {("GET", "/v1/invoices/{month}")}
AGENT = {("POST", "/v1/agent/kit"), ("POST", "/v1/agent/bootstrap")}
HEARTBEAT = ("POST", "/v1/clusters/{cluster_id}/heartbeat")
ADMIN_ONLY = {
    ("POST", "/v1/users"),
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/users"),
    ("POST", "/v1/admin/users/{name}/disable"),
    ("POST", "/v1/admin/users/{name}/enable"),
    ("POST", "/v1/admin/users/{name}/tokens"),
    ("PUT", "/v1/admin/users/{name}/limits"),
    ("GET", "/v1/admin/teams"),
    ("POST", "/v1/admin/teams"),
    ("GET", "/v1/admin/teams/{name}/members"),
    ("PUT", "/v1/admin/teams/{name}/limits"),
}
# A valid body for each route that takes one, so that Bob's requests are judged on whose
# resource they name, not refused for their shape.
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/v1/users"): {"name": "mallory"},
    ("POST", "/v1/admin/users"): {"name": "mallory"},
    ("PUT", "/v1/admin/users/{name}/limits"): {"cores": 1000},
    ("POST", "/v1/admin/teams"): {"name": "mallorys"},
    ("PUT", "/v1/admin/teams/{name}/limits"): {"cores": 1000},
    ("POST", "/v1/tokens"): {"name": "bobs"},
    ("POST", "/v1/clusters"): {"n_workers": 1},
    ("POST", "/v1/clusters/{cluster_id}/scale"): {"n_workers": 2},
    ("POST", "/v1/software/uploads"): {
        "files": [{"sha256": "ab" * 32, "size": 10, "filename": "bobs-1.0-py3-none-any.whl"}]
    },
    ("POST", "/v1/environments/{name}"): {"spec": {}},  # filled in by the fixture
    HEARTBEAT: Heartbeat(scheduler_address="tls://127.0.0.1:1").model_dump(mode="json"),
}


def spec() -> SoftwareSpec:
    return SoftwareSpec(
        python="3.11",
        packages=[
            PackagePin(name="billow", version="0.1.0"),
            PackagePin(name="distributed", version="2024.8.0"),
        ],
    )


class World:
    """Alice owns a cluster (its scheduler bootstrapped) and an environment; Bob owns a
    cluster of his own; both are ordinary users of one multi-tenant deployment."""

    def __init__(self, tmp: Path) -> None:
        self.api = Api(tmp)
        self.api.plane.ports.objects = LocalObjectStore(
            tmp / "objects", "http://127.0.0.1:9", tmp / "objects.key"
        )
        self.alice = self.user("alice")
        self.bob = self.user("bob")
        alices = {"name": "alices", "n_workers": 1}
        self.cluster = self.call(self.alice, "POST", "/v1/clusters", alices, 201)["id"]
        self.api.plane.lifecycle.reconcile(self.cluster)  # launches scheduler and worker
        launched = self.api.plane.ports.provider.specs.values()  # type: ignore[attr-defined]
        tokens = {s.role: s.environment["BILLOW_INSTANCE_TOKEN"] for s in launched}
        config = self.call(tokens[InstanceRole.scheduler], "POST", "/v1/agent/bootstrap", None, 200)
        self.cluster_token = config["cluster_token"]
        self.instance_token = tokens[InstanceRole.worker]  # unused: no scheduler address yet
        self.env_body = {"spec": spec().model_dump(mode="json")}
        self.call(self.alice, "POST", "/v1/environments/etl", self.env_body, 201)
        self.bobs_cluster = self.call(self.bob, "POST", "/v1/clusters", {"name": "bobs"}, 201)["id"]
        alice_id = self.call(self.alice, "GET", "/v1/whoami", None, 200)["id"]
        self.token_id = self.call(self.alice, "GET", "/v1/tokens", None, 200)["tokens"][0]["id"]
        self.secrets = [
            self.cluster, "alices", alice_id, self.alice, self.cluster_token, self.token_id
        ]  # fmt: skip

    def user(self, name: str) -> str:
        status, _, body = self.api.call("POST", "/v1/users", {"name": name})
        assert status == 201, body
        return body["token"]

    def call(self, token: str | None, method: str, path: str, body: dict | None, want: int):
        status, _, answer = self.request(token, method, path, body)
        assert status == want, (method, path, answer)
        return json.loads(answer) if answer else None

    def request(
        self, token: str | None, method: str, path: str, body: dict | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request as API Gateway sends it; the answer's status, headers and bytes."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        raw = b""
        if body is not None:
            raw = json.dumps(body).encode()
            headers.update(JSON)
        event = http_api_event(method, path, "", headers, raw, "127.0.0.1")
        out = self.api.app.resolve(event, LambdaContextStub("t"))  # type: ignore[arg-type]
        return out["statusCode"], out.get("headers", {}), (out.get("body") or "").encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("isolation"))


def routes(world: World) -> list[tuple[str, str]]:
    """Every (method, path template) of the API's OpenAPI document."""
    status, _, raw = world.request(None, "GET", "/v1/openapi.json", None)
    assert status == 200
    return sorted(
        (method.upper(), path)
        for path, item in json.loads(raw)["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


def fill(template: str, cluster: str, env: str, token_id: str) -> str:
    return (
        template.replace("{cluster_id}", cluster)
        .replace("{name}", env)
        .replace("{token_id}", token_id)
        .replace("{month}", "2026-01")
    )


def body_for(world: World, route: tuple[str, str]) -> dict | None:
    if route == ("POST", "/v1/environments/{name}"):
        return world.env_body
    if route[0] in {"POST", "PUT", "PATCH"}:
        return BODIES.get(route, {})
    return None


CREDENTIALS = ["none", "tampered", "other tenant", "cluster token", "instance token"]


def credential(world: World, kind: str) -> str | None:
    return {
        "none": None,
        "tampered": world.bob[:-1] + ("A" if world.bob[-1] != "A" else "B"),
        "other tenant": world.bob,
        "cluster token": world.cluster_token,
        "instance token": world.instance_token,
    }[kind]


def expected(route: tuple[str, str], kind: str) -> int | str:
    """The documented outcome: a status, ``"absent"`` (Bob's 404 for a resource that does
    not exist) or ``"own data"`` (a 2xx holding nothing of Alice's)."""
    if route in AGENT:
        return 401  # only an instance token opens them (its own use is not in this table)
    if route == HEARTBEAT:
        return 401  # only the cluster's own token (its own use is not in this table)
    if kind != "other tenant":
        return 401
    if route in ADMIN_ONLY or route in TEAM_READERS:
        return 403
    if route in DEPLOYMENT_WIDE:
        return "deployment-wide"
    if "{cluster_id}" in route[1] or "{token_id}" in route[1]:
        return "absent"
    if "{name}" in route[1] and route[0] != "POST":
        return "absent"
    return "own data"


def test_every_route_is_in_the_table(world: World) -> None:
    """A route added to the API must be classified here before this test passes."""
    table = PUBLIC | USER | DEPLOYMENT_WIDE | ADMIN_ONLY | TEAM_READERS | AGENT | {HEARTBEAT}
    assert set(routes(world)) <= table, set(routes(world)) - table
    assert set(routes(world)) >= table - PUBLIC, table - PUBLIC - set(routes(world))


@pytest.mark.parametrize("kind", CREDENTIALS)
def test_isolation_table(world: World, kind: str) -> None:
    """Every route with one wrong credential: the documented outcome, and nothing of
    Alice's in any answer."""
    token = credential(world, kind)
    seen: list[str] = []
    for route in routes(world):
        if route in PUBLIC or (kind == "instance token" and route in AGENT):
            continue
        method, template = route
        target = world.bobs_cluster if kind == "cluster token" else world.cluster
        path = fill(template, target, "etl", world.token_id)
        status, headers, raw = world.request(token, method, path, body_for(world, route))
        want = expected(route, kind)
        seen.append(f"{method} {template}: {status}")
        if want == "absent":
            missing = fill(template, MISSING_CLUSTER, MISSING_ENV, MISSING_TOKEN)
            body = body_for(world, route)
            m_status, m_headers, m_raw = world.request(token, method, missing, body)
            swapped = (
                raw.replace(world.cluster.encode(), MISSING_CLUSTER.encode())
                .replace(b"'etl'", f"'{MISSING_ENV}'".encode())
                .replace(world.token_id.encode(), MISSING_TOKEN.encode())
            )
            assert (status, headers, swapped) == (404, m_headers, m_raw), (route, raw, m_raw)
            assert m_status == 404
        elif want == "deployment-wide":
            assert status < 500 and status not in (401, 403, 404), (route, status, raw)
        elif want == "own data":
            assert 200 <= status < 300, (route, status, raw)
            if route == ("POST", "/v1/environments/{name}"):  # Bob's own "etl"
                assert json.loads(raw)["revision"] == 1, raw
        else:
            assert status == want, (route, status, raw)
        for secret in world.secrets:
            if want != "absent":
                assert secret.encode() not in raw, (route, secret, raw)
    # Alice's cluster and environment are as she left them.
    alice = world.call(world.alice, "GET", f"/v1/clusters/{world.cluster}", None, 200)
    assert alice["target"] == "running" and alice["desired_workers"] == 1
    assert world.call(world.alice, "GET", "/v1/environments/etl", None, 200)["revision"] == 1
