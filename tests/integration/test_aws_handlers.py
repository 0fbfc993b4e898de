"""The Lambda handlers of ``functions/aws.py`` against a real moto_server: commands from
the bus, the state machine's "fail" action, the reaper's resync.

The deployment's state machine succeeds at once (no reconcile behind the tests' backs):
these tests call the handlers the way the state machine and EventBridge would.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import functions.aws as aws
import pytest

from billow_control.core.models import ClusterRequest
from billow_control.runtimes.aws import AwsRuntime
from tests.support.aws import Deployment, FakeLambdaContext, call_api, client
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def command(rt: AwsRuntime, **detail: Any) -> dict[str, Any]:
    event = {
        "id": str(uuid.uuid4()),
        "detail-type": "billow.command",
        "source": "ops.tests",
        "account": "123456789012",
        "detail": detail,
    }
    return aws.events_handler(event, FakeLambdaContext("billow-events"))


def test_commands_act_with_the_named_users_rights(rt: AwsRuntime) -> None:
    owner, _ = rt.plane.create_user("owner")
    other, _ = rt.plane.create_user("other")
    admin, _ = rt.plane.create_user("boss", is_admin=True)
    cluster, _ = rt.plane.create_cluster(owner, ClusterRequest(n_workers=1), None)

    refused = command(rt, action="stop", cluster_id=cluster["id"], user_id=other.id)
    assert refused == {"ok": False, "error": "not-found", "message": refused["message"]}
    assert command(rt, action="stop", cluster_id=cluster["id"], user_id="u-nobody")["error"] == (
        "unknown-user"
    )
    bad = command(rt, action="scale", cluster_id=cluster["id"], user_id=owner.id, n_workers=-1)
    assert bad["error"] == "invalid" and "n_workers" in bad["message"]
    scaled = command(rt, action="scale", cluster_id=cluster["id"], user_id=owner.id, n_workers=3)
    assert scaled["ok"] and scaled["cluster"]["desired_workers"] == 3
    stopped = command(
        rt, action="stop", cluster_id=cluster["id"], user_id=admin.id, reason="nightly"
    )
    assert stopped["ok"] and stopped["cluster"]["target"] == "stopped"
    stored = rt.ports.store.get_cluster(cluster["id"])
    assert stored is not None and stored.stop_reason == "nightly"


def test_fail_action_records_the_caught_error_and_starts_teardown(rt: AwsRuntime) -> None:
    user, _ = rt.plane.create_user("failing")
    cluster, _ = rt.plane.create_cluster(user, ClusterRequest(n_workers=1), None)
    cause = json.dumps({"errorType": "ClientError", "errorMessage": "RequestLimitExceeded"})
    step = {
        "cluster_id": cluster["id"],
        "action": "fail",
        "error": {"Error": "ClientError", "Cause": cause},
    }
    output = aws.reconcile_handler(step, FakeLambdaContext("billow-reconcile"))
    assert output == {"done": True, "wait": 0, "status": "failed"}  # nothing was running
    stored = rt.ports.store.get_cluster(cluster["id"])
    assert stored is not None
    assert stored.error == "the lifecycle workflow failed: ClientError: RequestLimitExceeded"
    assert stored.stop_reason == "orchestration-error"
    again = aws.reconcile_handler(step, FakeLambdaContext("billow-reconcile"))
    assert again["done"] is True  # a retried MarkFailed changes nothing


def test_the_reaper_restarts_a_dead_loop_once_its_lease_lapses_and_the_old_loop_ends(
    rt: AwsRuntime, deployment: Deployment
) -> None:
    """The no-op machine ends each execution without a step, as Express stops one at 5
    minutes: the loop is dead, its lease still live until it lapses."""
    user, _ = rt.plane.create_user("stuck")
    cluster, _ = rt.plane.create_cluster(user, ClusterRequest(n_workers=1), None)
    sfn = client(deployment.url, "stepfunctions")
    leases = rt.ports.orchestrator.leases  # type: ignore[attr-defined]

    def executions() -> list[str]:
        found = sfn.list_executions(stateMachineArn=deployment.state_machine_arn)["executions"]
        return [e["name"] for e in found if e["name"].startswith(cluster["id"])]

    wait_until(lambda: len(executions()) == 1, 10, "the create's execution")
    old_loop = leases.get(cluster["id"]).loop
    summary = aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
    assert summary["resubmitted"] == [] and len(executions()) == 1  # the lease is live

    real_clock = leases.clock
    leases.clock = lambda: real_clock() + leases.lease_seconds + 1  # ... and now it lapsed
    try:
        summary = aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
        assert cluster["id"] in summary["resubmitted"]
        assert len(executions()) == 2
        new_loop = leases.get(cluster["id"]).loop
        assert new_loop != old_loop
        # A late step of the old loop (a retry that outlived its execution) ends it.
        step = {"cluster_id": cluster["id"], "loop": old_loop, "action": "reconcile"}
        output = aws.reconcile_handler(step, FakeLambdaContext("billow-reconcile"))
        assert output["done"] is True and output["status"] == "pending"
        assert leases.get(cluster["id"]).loop == new_loop  # untouched
    finally:
        leases.clock = real_clock


def test_an_api_request_builds_only_the_adapters_it_needs(rt: AwsRuntime) -> None:
    """A Lambda container pays only for what its requests use: reading clusters builds
    the store alone; a create adds the secret box, orchestrator, bus and idempotency
    cache, and still no EC2 client: a create of default size needs no machine types
    (only reconcile chooses them, and launches instances)."""
    assert rt.ports.built() == [] and rt.clients.built() == []
    status, _ = call_api("GET", "/v1/health")
    assert status == 200 and rt.ports.built() == []
    _, token = rt.plane.create_user("lazy")
    status, listed = call_api("GET", "/v1/clusters", token)
    assert status == 200 and listed == {"clusters": []}
    assert rt.ports.built() == ["store"] and rt.clients.built() == []
    status, created = call_api("POST", "/v1/clusters", token, {"n_workers": 1})
    assert status == 201, created
    assert "provider" not in rt.ports.built() and "machines" not in rt.ports.built()
    assert rt.clients.built() == ["dynamodb", "events", "kms", "stepfunctions"]


def test_a_create_no_machine_fits_is_a_422_and_the_region_lists_its_types(
    rt: AwsRuntime,
) -> None:
    user, token = rt.plane.create_user("sizing")
    asks = [
        ({"worker_vm_types": ["zz9.huge"]}, "worker_vm_types", "does not exist in this region"),
        ({"worker_cpu": 4, "worker_vm_types": ["t3.medium"]}, "worker_vm_types", "2 vCPUs"),
        ({"worker_gpu": 16}, "worker_cpu", "no machine type"),
        ({"worker_vm_types": ["m5.large"], "spot_policy": "sometimes"}, "spot_policy", ""),
    ]
    for fields, field, words in asks:
        status, body = call_api("POST", "/v1/clusters", token, {"n_workers": 1, **fields})
        assert status == 422 and words in body["message"], body
        assert body.get("field", (body.get("detail") or [{}])[0].get("field")) == field
    assert rt.ports.store.list_clusters(user.id, active_only=False) == []
    status, listed = call_api("GET", "/v1/instance-types?cores=4&memory=16%20GiB&gpu=1", token)
    assert status == 200, listed
    found = listed["instance_types"]
    assert found and all(t["cores"] >= 4 and t["memory_gib"] >= 16 for t in found)
    assert all(t["gpus"] >= 1 for t in found) and found[0]["name"] == "g4dn.xlarge"
    status, bad = call_api("GET", "/v1/instance-types?memory=lots", token)
    assert status == 422 and bad["field"] == "memory"
