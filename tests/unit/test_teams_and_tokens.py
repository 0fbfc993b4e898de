"""Teams and tokens as their users see them through the route table: who sees which
clusters, who stopped one, token expiry, revocation, scopes and ``last_used_at``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from billow_control.core.accounts import Role, Team
from billow_control.core.models import ClusterRequest
from billow_control.core.settings import ControlSettings
from tests.unit.test_role_matrix import World

pytestmark = pytest.mark.unit

DAY = 86400.0


class Api(World):
    def ask(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        return self.call_with(method, path, token, body, {})

    def call_with(
        self, method: str, path: str, token: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        status, _, raw = self.call(method, path, token, body, headers)
        return status, json.loads(raw) if raw else None


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def _team(api: Api, admin: str) -> dict[str, str]:
    """Team etl with an admin, two members and a viewer; their tokens by name."""
    assert api.ask("POST", "/v1/admin/teams", admin, {"name": "etl"})[0] == 201
    tokens = {}
    for name, role in [("erin", "admin"), ("alice", "member"), ("bob", "member"), ("vi", "viewer")]:
        status, user = api.ask(
            "POST", "/v1/admin/users", admin, {"name": name, "team": "etl", "role": role}
        )
        assert status == 201 and user["team"] == "etl" and user["role"] == role
        tokens[name] = user["token"]
    return tokens


def test_who_sees_and_stops_which_clusters(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    t = _team(api, admin)
    ids = {}
    for name in ("alice", "bob"):
        status, c = api.ask("POST", "/v1/clusters", t[name], {"name": f"{name}-c", "n_workers": 0})
        assert status == 201 and c["team"] == "etl"
        ids[name] = c["id"]

    def visible(token: str) -> set[str]:
        return {c["name"] for c in api.ask("GET", "/v1/clusters", token)[1]["clusters"]}

    assert visible(t["alice"]) == {"alice-c"}
    assert visible(t["erin"]) == visible(t["vi"]) == visible(admin) == {"alice-c", "bob-c"}
    # a member cannot stop a teammate's cluster, a team admin can, and it is recorded
    assert api.ask("POST", f"/v1/clusters/{ids['bob']}/stop", t["alice"])[0] == 404
    status, stopped = api.ask("POST", f"/v1/clusters/{ids['bob']}/stop", t["erin"])
    assert status == 200 and stopped["stop_reason"] == "admin:erin"
    _, stopped = api.ask("POST", f"/v1/clusters/{ids['alice']}/stop", t["alice"])
    assert stopped["stop_reason"] == "user"


def test_disabling_a_user_revokes_every_token_at_once(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    t = _team(api, admin)
    _, second = api.ask("POST", "/v1/tokens", t["alice"], {"name": "ci"})
    assert api.ask("GET", "/v1/whoami", second["token"])[0] == 200
    # a team admin disables a member of their team
    status, user = api.ask("POST", "/v1/admin/users/alice/disable", t["erin"])
    assert status == 200 and user["disabled"] is True
    for token in (t["alice"], second["token"]):
        status, error = api.ask("GET", "/v1/whoami", token)
        assert status == 401 and error["error"] == "unauthorized"
    assert api.ask("POST", "/v1/admin/users/alice/enable", t["erin"])[0] == 200
    assert api.ask("GET", "/v1/whoami", t["alice"])[0] == 401  # old tokens stay revoked
    status, fresh = api.ask("POST", "/v1/admin/users/alice/tokens", t["erin"])
    assert status == 201 and api.ask("GET", "/v1/whoami", fresh["token"])[0] == 200


def test_tokens_expire_are_listed_without_secrets_and_revoked(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    status, made = api.ask("POST", "/v1/tokens", admin, {"name": "short", "lifetime": "2d"})
    assert status == 201 and made["token"].startswith("bw_") and made["name"] == "short"
    _, me = api.ask("GET", "/v1/whoami", made["token"])
    assert me["token"]["id"] == made["id"] and me["token"]["expires_at"] == made["expires_at"]
    listed = api.ask("GET", "/v1/tokens", admin)[1]["tokens"]
    assert [t["name"] for t in listed] == ["first", "short"]
    text = json.dumps(listed)
    assert made["token"] not in text and "token_hash" not in text
    api.clock.advance(2 * DAY)
    status, error = api.ask("GET", "/v1/whoami", made["token"])
    assert status == 401 and "expired" in error["message"]
    # the bootstrap token lives the default 90 days
    assert api.ask("GET", "/v1/whoami", admin)[0] == 200
    api.clock.advance(88 * DAY)
    assert api.ask("GET", "/v1/whoami", admin)[0] == 401


def test_revoked_token_stops_working_at_once(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    _, made = api.ask("POST", "/v1/tokens", admin, {})
    assert api.ask("GET", "/v1/clusters", made["token"])[0] == 200
    status, revoked = api.ask("DELETE", f"/v1/tokens/{made['id']}", admin)
    assert status == 200 and revoked["revoked"] is True
    assert api.ask("GET", "/v1/clusters", made["token"])[0] == 401
    assert api.ask("DELETE", f"/v1/tokens/{made['id']}", admin)[0] == 404


def test_scoped_tokens_cannot_make_tokens_or_exceed_their_scope(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    _, ro = api.ask("POST", "/v1/tokens", admin, {"scope": "read-only"})
    _, cl = api.ask("POST", "/v1/tokens", admin, {"scope": "clusters"})
    assert ro["scope"] == "read-only" and cl["scope"] == "clusters"
    for scoped in (ro["token"], cl["token"]):
        status, error = api.ask("POST", "/v1/tokens", scoped, {})
        assert status == 403 and "token cannot" in error["message"]
        assert api.ask("POST", "/v1/admin/teams", scoped, {"name": "x"})[0] == 403
    assert api.ask("POST", "/v1/clusters", ro["token"], {"n_workers": 0})[0] == 403
    assert api.ask("POST", "/v1/clusters", cl["token"], {"n_workers": 0})[0] == 201
    assert api.ask("GET", "/v1/clusters", ro["token"])[0] == 200


def test_last_used_at_is_written_at_most_once_a_minute(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None

    def last_used() -> str | None:
        return api.ask("GET", "/v1/tokens", admin)[1]["tokens"][0]["last_used_at"]

    first = last_used()
    assert first is not None
    api.clock.advance(30)
    assert last_used() == first  # within the minute: no write
    api.clock.advance(31)
    assert last_used() != first


def test_token_lifetime_is_configurable_and_bounded(tmp_path: Path) -> None:
    settings = ControlSettings.from_values({"tokens": {"lifetime": "7d"}})
    assert settings.tokens_lifetime == 7 * DAY
    api = Api(tmp_path)
    api.plane.ports.settings = settings
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    status, error = api.ask("POST", "/v1/tokens", admin, {"lifetime": "8d"})
    assert status == 422 and error["field"] == "lifetime" and "7 days" in error["message"]
    status, error = api.ask("POST", "/v1/tokens", admin, {"lifetime": "1s"})
    assert status == 422 and "lifetime" in error["message"]
    api.clock.advance(7 * DAY)
    assert api.ask("GET", "/v1/whoami", admin)[0] == 401


def test_bad_admin_requests_name_the_field_and_create_nothing(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    status, error = api.ask("POST", "/v1/admin/users", admin, {"name": "x", "team": "nope"})
    assert status == 422 and error["field"] == "team" and "no team 'nope'" in error["message"]
    status, error = api.ask("POST", "/v1/admin/users", admin, {"name": "x", "role": "boss"})
    assert status == 422 and "role" in error["message"]
    assert api.ask("POST", "/v1/admin/teams", admin, {"name": "Bad Name"})[0] == 422
    assert api.ask("POST", "/v1/admin/teams", admin, {"name": "default"})[0] == 409
    assert [u["name"] for u in api.ask("GET", "/v1/admin/users", admin)[1]["users"]] == ["admin"]
    status, error = api.ask("POST", "/v1/admin/users/admin/disable", admin)
    assert status == 409 and "yourself" in error["message"]


def test_clusters_created_before_teams_belong_to_the_default_team(api: Api) -> None:
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    api.store.put_team(Team(name="etl", created_at=api.clock.now()))
    viewer, token = api.plane.accounts.create_user("vi", role=Role.viewer)
    cluster, _ = api.plane.create_cluster(
        api.plane.authenticate(admin), ClusterRequest(n_workers=0), None
    )
    record = api.store.get_cluster(cluster["id"])
    assert record is not None and record.team == "default"
    assert viewer.team == "default"
    assert [c["id"] for c in api.ask("GET", "/v1/clusters", token)[1]["clusters"]] == [
        cluster["id"]
    ]
