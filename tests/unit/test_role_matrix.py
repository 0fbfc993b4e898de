"""The role matrix: every route of the table that takes an API token, tried as each kind
of caller, gets exactly the outcome the README's "Teams and roles" table documents.

The callers: a deployment admin; in team ``etl`` its admin, a member (``alice``, who owns
the cluster and the environment the routes name) and a viewer; ``bi``'s admin and a
member of ``bi``; a disabled user; an expired, a revoked and a read-only token (alice's).
Each case runs against its own copy of one SQLite world, through ``build_app`` as Lambda
and the embedded server call it. Every 404 is compared with the 404 of a resource that
does not exist: byte-identical once the id is swapped, so a 404 reveals nothing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.object_store import LocalObjectStore
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.api.app import build_app
from billow_control.api.guard import needs_api_token, registered_routes
from billow_control.core.accounts import ApiToken, Role, Team, TokenScope
from billow_control.core.auth import hash_token
from billow_control.core.models import ClusterRequest
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.core.software import SoftwareSpec
from billow_control.runtimes.http_proxy import LambdaContextStub, http_api_event
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit

CALLERS = [
    "admin",
    "etl-admin",
    "member",
    "viewer",
    "bi-admin",
    "other",
    "disabled",
    "expired",
    "revoked",
    "read-only",
]
SHA = "ab" * 32
SPEC = {
    "python": "3.12.1",
    "packages": [
        {"name": "distributed", "version": "2025.1.0"},
        {"name": "billow", "version": "0.1.0"},
    ],
}


class World:
    """A control plane over ``root`` (its SQLite file, key and object folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = ManualClock()
        self.store = SqliteStore(root / "billow.db")
        self.plane = ControlPlane(
            Ports(
                store=self.store,
                provider=MemoryProvider(self.clock),
                orchestrator=RecordingOrchestrator(),
                secrets=FernetSecretBox.from_key_file(root / "secret.key"),
                clock=self.clock,
                events=MemoryBus(),
                settings=ControlSettings(),
                objects=LocalObjectStore(root / "objects", "http://127.0.0.1:9", root / "o.key"),
            )
        )
        self.app = build_app(lambda: self.plane)

    def call(
        self,
        method: str,
        path: str,
        token: str | None,
        body: Any = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        headers.update(extra or {})
        raw = b""
        if body is not None:
            raw = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        path, _, query = path.partition("?")
        event = http_api_event(method, path, query, headers, raw, "127.0.0.1")
        out = self.app.resolve(event, LambdaContextStub("test"))  # type: ignore[arg-type]
        return out["statusCode"], out.get("headers", {}), (out.get("body") or "").encode()


@dataclass
class Fixture:
    """What a case's world holds: tokens by caller, and the ids the routes name."""

    tokens: dict[str, str]
    cluster: str
    spare_token: str  # the id of alice's token that DELETE /v1/tokens/{id} revokes


def build(root: Path) -> Fixture:
    world = World(root)
    plane, store = world.plane, world.store
    admin = plane.bootstrap_admin()
    assert admin is not None
    for team in ("etl", "bi"):
        store.put_team(Team(name=team, created_at=world.clock.now()))
    accounts = plane.accounts
    users = {
        "etl-admin": accounts.create_user("etl-admin", team="etl", role=Role.admin),
        "member": accounts.create_user("alice", team="etl"),
        "viewer": accounts.create_user("victor", team="etl", role=Role.viewer),
        "bi-admin": accounts.create_user("bi-admin", team="bi", role=Role.admin),
        "other": accounts.create_user("olga", team="bi"),
        "disabled": accounts.create_user("dave", team="etl"),
    }
    accounts.create_user("bob", team="etl")  # the user the admin routes name
    tokens = {"admin": admin, **{k: token for k, (_, token) in users.items()}}
    alice = users["member"][0]
    super_admin = plane.authenticate(admin)
    accounts.set_disabled(super_admin, "dave")
    tokens["read-only"] = accounts.issue_token(alice, "ro", TokenScope.read_only)[1]
    revoked_token, tokens["revoked"] = accounts.issue_token(alice, "gone")
    store.delete_api_token(revoked_token.token_hash)
    tokens["expired"] = "bw_expired-token-of-alice"
    store.put_api_token(
        ApiToken(
            id="t-00000000000000ee",
            token_hash=hash_token(tokens["expired"]),
            user_id=alice.id,
            created_at=world.clock.now() - timedelta(days=91),
            expires_at=world.clock.now() - timedelta(days=1),
        )
    )
    spare = accounts.issue_token(alice, "spare")[0]
    cluster, _ = plane.create_cluster(alice, ClusterRequest(name="c1", n_workers=1), None)
    store.put_environment_revision(
        alice.id, "etl-env", SoftwareSpec.model_validate(SPEC), world.clock.now()
    )
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Fixture(tokens, cluster["id"], spare.id)


# Each row: method, path, body, and the status of each caller in CALLERS' order up to
# "other"; disabled users, expired and revoked tokens always get 401, and a read-only
# token gets the member's answer to a GET (but credentials) and 403 otherwise. {C}: alice's cluster,
# {T}: alice's spare token, {MISSING}: ids that exist nowhere (see MISSING).
#                                                admin etl-a member viewer bi-a other
ROWS: list[tuple[str, str, Any, tuple[int, ...]]] = [
    ("GET", "/v1/whoami", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/tokens", None, (200, 200, 200, 200, 200, 200)),
    ("POST", "/v1/tokens", {"name": "x"}, (201, 201, 201, 201, 201, 201)),
    ("DELETE", "/v1/tokens/{T}", None, (404, 404, 200, 404, 404, 404)),
    ("POST", "/v1/clusters", {"n_workers": 0}, (201, 201, 201, 403, 201, 201)),
    ("GET", "/v1/clusters", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/clusters/{C}", None, (200, 200, 200, 200, 404, 404)),
    ("POST", "/v1/clusters/{C}/scale", {"n_workers": 2}, (200, 403, 200, 403, 404, 404)),
    ("POST", "/v1/clusters/{C}/stop", None, (200, 200, 200, 403, 404, 404)),
    ("GET", "/v1/clusters/{C}/credentials", None, (404, 404, 200, 403, 404, 404)),
    ("GET", "/v1/clusters/{C}/logs", None, (200, 200, 200, 200, 404, 404)),
    (
        "POST",
        "/v1/software/uploads",
        {"files": [{"sha256": SHA, "size": 1, "filename": "a-1-py3-none-any.whl"}]},
        (200, 200, 200, 403, 200, 200),
    ),
    ("GET", "/v1/environments", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/environments/etl-env", None, (404, 404, 200, 404, 404, 404)),
    ("POST", "/v1/environments/etl-env", {"spec": SPEC}, (201, 201, 200, 403, 201, 201)),
    ("DELETE", "/v1/environments/etl-env", None, (404, 404, 200, 403, 404, 404)),
    ("POST", "/v1/users", {"name": "newbie"}, (201, 201, 403, 403, 201, 403)),
    ("POST", "/v1/admin/users", {"name": "n2", "team": "etl"}, (201, 201, 403, 403, 403, 403)),
    ("GET", "/v1/admin/users", None, (200, 200, 403, 403, 200, 403)),
    ("POST", "/v1/admin/users/bob/disable", None, (200, 200, 403, 403, 404, 403)),
    ("POST", "/v1/admin/users/bob/enable", None, (200, 200, 403, 403, 404, 403)),
    ("POST", "/v1/admin/users/bob/tokens", None, (201, 201, 403, 403, 404, 403)),
    ("GET", "/v1/admin/teams", None, (200, 200, 403, 403, 200, 403)),
    ("POST", "/v1/admin/teams", {"name": "new-team"}, (201, 403, 403, 403, 403, 403)),
    ("GET", "/v1/admin/teams/etl/members", None, (200, 200, 403, 403, 404, 403)),
    ("PUT", "/v1/admin/users/bob/limits", {"cores": 128}, (200, 403, 403, 403, 403, 403)),
    ("PUT", "/v1/admin/teams/etl/limits", {"cores": 512}, (200, 403, 403, 403, 403, 403)),
    ("GET", "/v1/usage", None, (200, 200, 200, 200, 200, 200)),
    # The deployment's machine catalog: local processes have none (409), for everyone.
    ("GET", "/v1/instance-types", None, (409, 409, 409, 409, 409, 409)),
    ("GET", "/v1/invoices/2025-12", None, (200, 200, 403, 200, 200, 403)),
]
# What a 404 is compared with: the same route naming something that does not exist.
MISSING = {
    "{C}": "c-0000000000000000",
    "{T}": "t-0000000000000000",
    "etl-env": "no-such-env",
    "/bob/": "/nobody/",
    "/etl/": "/no-such-team/",
}


def expected(row: tuple[int, ...], caller: str, method: str, path: str) -> int:
    if caller in ("disabled", "expired", "revoked"):
        return 401
    if caller == "read-only":  # the TLS bundle runs code on the cluster: not a read
        reads = method == "GET" and not path.endswith("/credentials")
        return row[CALLERS.index("member")] if reads else 403
    return row[CALLERS.index(caller)]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Fixture]:
    root = tmp_path_factory.mktemp("world")
    return root, build(root)


def fresh(template: tuple[Path, Fixture], tmp_path: Path) -> tuple[World, Fixture]:
    root, fixture = template
    copy = tmp_path / "world"
    shutil.copytree(root, copy)
    return World(copy), fixture


def test_the_matrix_covers_every_route_that_takes_an_api_token() -> None:
    app = build_app(lambda: None)  # type: ignore[arg-type, return-value]
    routes = {(r.method, r.path) for r in registered_routes(app) if needs_api_token(r)}
    covered = {
        (m, p.replace("{C}", "<cluster_id>").replace("{T}", "<token_id>")) for m, p, _, _ in ROWS
    }
    named = {
        "/v1/environments/etl-env": "/v1/environments/<name>",
        "/v1/invoices/2025-12": "/v1/invoices/<month>",
    }
    covered = {
        (m, named.get(p, p.replace("/bob/", "/<name>/").replace("/etl/", "/<name>/")))
        for m, p in covered
    }
    assert covered == routes


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "body", "row"), ROWS, ids=[f"{m} {p}" for m, p, _, _ in ROWS]
)
def test_each_caller_gets_the_documented_outcome(
    template: tuple[Path, Fixture],
    tmp_path: Path,
    method: str,
    path: str,
    body: Any,
    row: tuple[int, ...],
    caller: str,
) -> None:
    world, fx = fresh(template, tmp_path)
    real = path.replace("{C}", fx.cluster).replace("{T}", fx.spare_token)
    before = world.store.list_clusters(None, active_only=False)
    status, headers, raw = world.call(method, real, fx.tokens[caller], body)
    want = expected(row, caller, method, path)
    assert status == want, (caller, method, path, raw)
    if status >= 400:
        assert (
            json.loads(raw)["error"]
            in {
                401: ["unauthorized"],
                403: ["forbidden"],
                404: ["not-found"],
                409: ["conflict"],
            }[status]
        )
        if method != "GET":  # a refusal changes nothing
            after = world.store.list_clusters(None, active_only=False)
            assert [(c.id, c.target, c.desired_workers) for c in after] == [
                (c.id, c.target, c.desired_workers) for c in before
            ]
    if status == 404:
        missing = path
        for placeholder, other in MISSING.items():
            missing = missing.replace(placeholder, other)
        assert missing != path
        status2, headers2, raw2 = world.call(method, missing, fx.tokens[caller], body)
        assert (status2, headers2) == (404, headers)
        swapped = raw.replace(fx.cluster.encode(), MISSING["{C}"].encode())
        swapped = swapped.replace(fx.spare_token.encode(), MISSING["{T}"].encode())
        swapped = swapped.replace(b"'etl-env'", b"'no-such-env'")
        swapped = swapped.replace(b"'bob'", b"'nobody'").replace(b"'etl'", b"'no-such-team'")
        assert swapped == raw2, (raw, raw2)


def test_old_user_rows_keep_working_as_default_team_members(tmp_path: Path) -> None:
    world = World(tmp_path)
    token = world.plane.bootstrap_admin()
    with sqlite3.connect(tmp_path / "billow.db") as db:
        db.execute("""INSERT INTO users VALUES ('u-old', '{"id":"u-old","name":"old"}')""")
        db.execute("INSERT INTO api_tokens VALUES (?, 'u-old', NULL)", (hash_token("bw_old"),))
    status, _, raw = world.call("GET", "/v1/whoami", "bw_old")
    me = json.loads(raw)
    assert status == 200 and (me["team"], me["role"]) == ("default", "member")
    assert me["token"]["expires_at"] is None
    assert world.call("GET", "/v1/admin/teams", token)[0] == 200
