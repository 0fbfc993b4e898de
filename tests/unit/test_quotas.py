"""Quotas through the route table: refused creates and scales name the limit, the request
and the use, and leave nothing behind; admins raise limits; ``/v1/usage`` shows them; a
1,000-worker cluster within quota is launched in bounded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billow_control.core.accounts import Role
from tests.unit.fakes import MemoryProvider, RecordingOrchestrator
from tests.unit.test_teams_and_tokens import Api

pytestmark = pytest.mark.unit


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def _people(api: Api) -> tuple[str, str, str]:
    """The deployment admin's token, and two members of team etl (alice, bob)."""
    admin = api.plane.bootstrap_admin()
    assert admin is not None
    assert api.ask("POST", "/v1/admin/teams", admin, {"name": "etl"})[0] == 201
    alice = api.ask("POST", "/v1/admin/users", admin, {"name": "alice", "team": "etl"})[1]
    bob = api.ask("POST", "/v1/admin/users", admin, {"name": "bob", "team": "etl"})[1]
    return admin, alice["token"], bob["token"]


def _nothing_made(api: Api) -> None:
    assert api.store.list_clusters(None, active_only=False) == []
    provider = api.plane.ports.provider
    assert isinstance(provider, MemoryProvider) and provider.instances == {}
    orchestrator = api.plane.ports.orchestrator
    assert isinstance(orchestrator, RecordingOrchestrator) and orchestrator.submitted == []


def test_a_new_user_cannot_start_more_than_64_cores(api: Api) -> None:
    admin, alice, _ = _people(api)
    big: dict[str, Any] = {"n_workers": 1000, "worker_cpu": 64, "worker_memory": "1 TiB"}
    status, error = api.ask("POST", "/v1/clusters", alice, big)
    assert status == 403 and error["error"] == "quota-exceeded" and error["field"] == "n_workers"
    assert error["message"].startswith(
        "quota exceeded: the cores limit of user alice is 64; this request asks for 64001 "
        "and 0 are in use."
    )
    status, error = api.ask("POST", "/v1/clusters", alice, {"n_workers": 64})
    assert status == 403 and "asks for 65 and 0 are in use" in error["message"]
    _nothing_made(api)
    # an admin raises the limit: the same request passes
    status, user = api.ask("PUT", "/v1/admin/users/alice/limits", admin, {"cores": 100})
    assert status == 200 and user["limits"]["cores"] == 100
    status, error = api.ask("POST", "/v1/clusters", alice, {"n_workers": 64})
    assert status == 403 and "instances limit of user alice is 64" in error["message"]
    api.ask("PUT", "/v1/admin/users/alice/limits", admin, {"cores": 100, "instances": 65})
    assert api.ask("POST", "/v1/clusters", alice, {"n_workers": 64})[0] == 201


def test_scaling_over_quota_is_refused_and_changes_nothing(api: Api) -> None:
    _, alice, _ = _people(api)
    status, cluster = api.ask("POST", "/v1/clusters", alice, {"n_workers": 10, "name": "a"})
    assert status == 201
    path = f"/v1/clusters/{cluster['id']}/scale"
    status, error = api.ask("POST", path, alice, {"n_workers": 100})
    assert status == 403 and error["error"] == "quota-exceeded"
    assert "cores limit of user alice is 64; this request asks for 101 and 0" in error["message"]
    record = api.store.get_cluster(cluster["id"])
    assert record is not None and record.desired_workers == 10
    # a second cluster counts the first
    status, error = api.ask("POST", "/v1/clusters", alice, {"n_workers": 60})
    assert status == 403 and "asks for 61 and 11 are in use" in error["message"]
    assert api.ask("POST", path, alice, {"n_workers": 63})[0] == 200  # 64 cores: within
    assert api.ask("POST", path, alice, {"n_workers": 2})[0] == 200  # down: always


def test_team_limits_count_every_member(api: Api) -> None:
    admin, alice, bob = _people(api)
    status, team = api.ask("PUT", "/v1/admin/teams/etl/limits", admin, {"clusters": 1})
    assert status == 200 and team["limits"]["clusters"] == 1
    assert api.ask("POST", "/v1/clusters", alice, {"n_workers": 0})[0] == 201
    status, error = api.ask("POST", "/v1/clusters", bob, {"n_workers": 0})
    assert status == 403
    assert "the clusters limit of team etl is 1; this request asks for 1 and 1" in error["message"]


def test_monthly_cpu_hours_stop_new_clusters(api: Api) -> None:
    admin, alice, _ = _people(api)
    api.ask("PUT", "/v1/admin/users/alice/limits", admin, {"cpu_hours": 5.0})
    _, cluster = api.ask("POST", "/v1/clusters", alice, {"n_workers": 1})  # 2 cores asked
    api.plane.lifecycle.reconcile(cluster["id"])  # its two 1-vCPU instances are launched
    provider = api.plane.ports.provider
    assert isinstance(provider, MemoryProvider)
    worker = next(i.id for i in provider.instances.values() if i.role.value == "worker")
    api.plane.watchdog.run_once()  # and metered
    api.clock.advance(3600)
    provider.exit(worker, 1)  # the worker dies after an hour
    api.clock.advance(5 * 3600)  # 7 metered CPU-hours, not the 12 asked for
    api.plane.watchdog.run_once()  # the pass closes the worker's record at its exit
    status, error = api.ask("POST", "/v1/clusters", alice, {"n_workers": 0})
    assert status == 403 and "CPU-hours this month limit of user alice is 5" in error["message"]
    assert "and 7 are in use" in error["message"]
    _, usage = api.ask("GET", "/v1/usage", alice)
    assert usage["user"]["use"]["cpu_hours"] == pytest.approx(7.0)
    assert usage["user"]["limits"] == {
        "cores": 64,
        "gpus": 8,
        "instances": 64,
        "clusters": 16,
        "cpu_hours": 5.0,
    }
    assert (usage["user"]["use"]["cores"], usage["user"]["use"]["clusters"]) == (2, 1)
    assert cluster["status"] == "pending"


def test_deployment_admins_have_only_the_limits_set_on_them(api: Api) -> None:
    admin, _, _ = _people(api)
    assert api.ask("POST", "/v1/clusters", admin, {"n_workers": 200, "name": "big"})[0] == 201
    api.ask("PUT", "/v1/admin/users/admin/limits", admin, {"clusters": 1})
    status, error = api.ask("POST", "/v1/clusters", admin, {"n_workers": 0})
    assert status == 403 and "clusters limit of user admin is 1" in error["message"]


def test_a_thousand_workers_launch_in_bounded_batches(api: Api) -> None:
    admin, _, _ = _people(api)
    api.plane.ports.settings = api.plane.ports.settings.model_copy(update={"launch_batch": 100})
    user, token = api.plane.accounts.create_user("carol", team="etl", role=Role.member)
    api.ask("PUT", "/v1/admin/users/carol/limits", admin, {"cores": 1001, "instances": 1001})
    status, cluster = api.ask("POST", "/v1/clusters", token, {"n_workers": 1000})
    assert status == 201
    provider = api.plane.ports.provider
    assert isinstance(provider, MemoryProvider)
    launched = []
    for _ in range(20):  # bounded: 11 steps are enough
        before = provider.launches
        api.plane.lifecycle.reconcile(cluster["id"])
        launched.append(provider.launches - before)
        if provider.launches == 1001:
            break
    assert launched == [100] * 10 + [1]
    assert len(provider.live(cluster["id"])) == 1001
    assert user.team == "etl"


def test_a_repeated_create_at_the_limit_gets_the_first_answer(api: Api) -> None:
    """The create that reached the limit, sent again with its Idempotency-Key (a retry),
    answers the cluster it made; a new create is refused."""
    _, alice, _ = _people(api)
    body = {"n_workers": 63, "name": "full"}

    headers = {"idempotency-key": "retry-1"}
    first = api.call_with("POST", "/v1/clusters", alice, body, headers)
    assert first[0] == 201
    again = api.call_with("POST", "/v1/clusters", alice, body, headers)
    assert again[0] == 200 and again[1]["id"] == first[1]["id"]
    other = api.call_with("POST", "/v1/clusters", alice, body, {"idempotency-key": "retry-2"})
    assert other[0] == 403 and other[1]["error"] == "quota-exceeded"
