"""``/v1/usage`` and ``/v1/invoices/{month}`` through the route table: metered use seen
as far as the caller may (members: their own; team admins: their team's; deployment
admins: all), invoices for team admins and deployment admins, bad months refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_teams_and_tokens import Api

pytestmark = pytest.mark.unit


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def _setup(api: Api) -> dict[str, str]:
    """Teams etl (erin admin, alice and bob members) and ml (mo member); alice and mo each
    run one cluster of two 1-vCPU instances for 3 hours, metered by the watchdog."""
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    tokens = {"admin": admin}
    for team in ("etl", "ml"):
        assert api.ask("POST", "/v1/admin/teams", admin, {"name": team})[0] == 201
    for name, team, role in [
        ("erin", "etl", "admin"),
        ("alice", "etl", "member"),
        ("bob", "etl", "member"),
        ("mo", "ml", "member"),
    ]:
        body = {"name": name, "team": team, "role": role}
        tokens[name] = api.ask("POST", "/v1/admin/users", admin, body)[1]["token"]
    for name in ("alice", "mo"):
        status, c = api.ask("POST", "/v1/clusters", tokens[name], {"n_workers": 1, "name": "c"})
        assert status == 201
        api.plane.lifecycle.reconcile(c["id"])
    assert len(api.plane.ports.provider.instances) == 4  # type: ignore[attr-defined]
    api.plane.watchdog.run_once()
    api.clock.advance(3 * 3600)
    return tokens


def test_each_caller_sees_the_usage_they_may(api: Api) -> None:
    t = _setup(api)
    status, alice = api.ask("GET", "/v1/usage", t["alice"])
    assert status == 200
    assert alice["metered"]["total"]["cpu_hours"] == 6.0
    assert list(alice["metered"]["by_user"]) == ["alice"]
    assert alice["user"]["use"]["cpu_hours"] == 6.0  # the quota figure is the metered one
    erin = api.ask("GET", "/v1/usage", t["erin"])[1]["metered"]
    assert erin["by_team"] == {"etl": erin["total"]} and erin["total"]["cpu_hours"] == 6.0
    everyone = api.ask("GET", "/v1/usage", t["admin"])[1]["metered"]
    assert {k: v["cpu_hours"] for k, v in everyone["by_team"].items()} == {"etl": 6.0, "ml": 6.0}
    assert set(everyone["by_user"]) == {"alice", "mo"}
    # the dashboard's series: per team and user per day, and each team's price so far
    assert {t: sum(d.values()) for t, d in everyone["daily_by_team"].items()} == {
        "etl": 6.0,
        "ml": 6.0,
    }
    assert set(everyone["daily_by_user"]) == {"alice", "mo"}
    assert all(set(d.values()) == {"0.00"} for d in everyone["spend_by_day"].values())
    assert alice["metered"]["spend_by_day"] is None  # a member's price is the team's
    only_ml = api.ask("GET", "/v1/usage?team=ml", t["admin"])[1]["metered"]
    assert only_ml["total"]["cpu_hours"] == 6.0 and list(only_ml["by_team"]) == ["ml"]
    # another team is not found, as a missing one; a member cannot read their team's
    assert api.ask("GET", "/v1/usage?team=ml", t["erin"])[0] == 404
    status, error = api.ask("GET", "/v1/usage?team=etl", t["alice"])
    assert status == 403 and "only their own usage" in error["message"]


def test_months_are_checked(api: Api) -> None:
    t = _setup(api)
    for bad in ("2026-13", "26-01", "january", "0000-01"):
        status, error = api.ask("GET", f"/v1/usage?month={bad}", t["alice"])
        assert status in (400, 422) and "month" in str(error), (bad, error)
    for future in ("2999-01", "9999-12"):
        status, error = api.ask("GET", f"/v1/usage?month={future}", t["alice"])
        assert status == 400 and error["field"] == "month" and "not started" in error["message"]
    earlier = api.ask("GET", "/v1/usage?month=2025-12", t["alice"])[1]["metered"]
    assert earlier["total"]["cpu_hours"] == 0.0


def test_invoices_for_team_admins_and_deployment_admins(api: Api) -> None:
    t = _setup(api)
    month = api.clock.now().strftime("%Y-%m")
    status, mine = api.ask("GET", f"/v1/invoices/{month}", t["erin"])
    assert status == 200
    (bill,) = mine["invoices"]
    assert bill["team"] == "etl" and bill["cpu_hours"] == "6.000000" and bill["total"] == "0.00"
    assert bill["lines"][0]["description"] == "CPU-hours 0-10,000 (free)"
    assert bill["cloud_estimate"]["unpriced_instances"] == 2  # local processes: no list price
    status, error = api.ask("GET", f"/v1/invoices/{month}", t["alice"])
    assert status == 403 and "invoices are for team admins" in error["message"]
    every = api.ask("GET", f"/v1/invoices/{month}", t["admin"])[1]["invoices"]
    assert [b["team"] for b in every] == ["etl", "ml"]
    assert api.ask("GET", f"/v1/invoices/{month}?team=ml", t["erin"])[0] == 404
    assert api.ask("GET", "/v1/invoices/2026-1", t["erin"])[0] in (400, 422)
