"""The AWS control plane end to end on moto_server: the Lambda handlers of
``functions/aws.py``, the real lifecycle state machine, DynamoDB, EC2, KMS, EventBridge,
S3, and real Dask processes on instances booted by running their user data: bare
"instances" that fetch uv and the billow wheel through pre-signed S3 URLs.

The harnesses standing in for what moto does not run (Lambda tasks, API Gateway, booting
instances) are described in ``tests/support/aws.py``.

moto runs here one request at a time (``serial_moto_url``): the threaded server applies a
DynamoDB transaction as a series of writes, so concurrent creates could interleave in ways
DynamoDB never allows (see ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import functions.aws as aws
import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from dask.distributed import Client

import billow
from billow_control.core.tls import make_cluster_pki
from billow_control.runtimes import aws as aws_runtime
from billow_control.runtimes.http_proxy import http_api_event
from tests.support.aws import (
    ApiGateway,
    Deployment,
    FakeLambdaContext,
    InstanceKit,
    InstanceRunner,
    TaskPoller,
    call_api,
    client,
    exported_env,
    functions_env,
    moto_user_data_quirk,
    tagged_instances,
    user_data_of,
)
from tests.support.imds import ImdsServer, NatForwarder
from tests.support.processes import ROOT, stop_process, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TAG_CLUSTER = "billow:cluster-id"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_url(serial_moto_url: str) -> str:
    """moto with Step Functions executing state machines."""
    config = {"stepfunctions": {"execute_state_machine": True}}
    httpx.post(f"{serial_moto_url}/moto-api/config", json=config).raise_for_status()
    return serial_moto_url


@pytest.fixture(scope="module")
def gateway() -> Iterator[ApiGateway]:
    gw = ApiGateway(aws.api_handler).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def live_deployment(
    aws_url: str, gateway: ApiGateway, instance_kit: InstanceKit
) -> Iterator[Deployment]:
    deployment = Deployment.create(aws_url, gateway.url, machine="lifecycle", kit=instance_kit)
    try:
        yield deployment
    finally:
        deployment.delete()


@pytest.fixture(scope="module")
def crash_deployment(aws_url: str, gateway: ApiGateway) -> Iterator[Deployment]:
    """Executions succeed at once: the crash tests drive reconcile_handler themselves."""
    deployment = Deployment.create(aws_url, gateway.url, machine="noop")
    try:
        yield deployment
    finally:
        deployment.delete()


@dataclass
class Live:
    deployment: Deployment
    runtime: aws_runtime.AwsRuntime
    poller: TaskPoller
    token: str

    @property
    def ec2(self) -> Any:
        return client(self.deployment.url, "ec2")

    def executions(self, cluster_id: str, status: str | None = None) -> list[dict[str, Any]]:
        sfn = client(self.deployment.url, "stepfunctions")
        kwargs = {"statusFilter": status} if status else {}
        found = sfn.list_executions(stateMachineArn=self.deployment.state_machine_arn, **kwargs)
        return [e for e in found["executions"] if e["name"].startswith(f"{cluster_id}-")]


@pytest.fixture
def live(live_deployment: Deployment) -> Iterator[Live]:
    """The live deployment's functions, with the state machine's tasks delivered."""
    with functions_env(live_deployment.env) as rt:
        _, token = rt.plane.create_user(f"admin-{uuid.uuid4().hex[:6]}", is_admin=True)
        poller = TaskPoller(live_deployment.url, live_deployment.queue_url, aws.reconcile_handler)
        poller.start()
        try:
            yield Live(live_deployment, rt, poller, token)
        finally:
            poller.stop()
    assert not poller.errors, poller.errors


@pytest.fixture
def runner(live: Live, tmp_path: Path, instance_kit: InstanceKit) -> Iterator[InstanceRunner]:
    """Instances booted from their user data, each with an IMDSv2 endpoint (private
    address 127.0.0.1) and, for schedulers, a public address 127.0.0.2 NAT'd to it."""
    nat = NatForwarder()
    with ImdsServer() as imds:
        instances = InstanceRunner(
            live.deployment.url,
            live.deployment.name,
            tmp_path / "instances",
            instance_kit,
            imds=imds,
            nat=nat,
        )
        instances.start()
        try:
            yield instances
        finally:
            instances.stop()
            nat.close()
    assert not instances.errors, instances.errors


def cluster_resources(ec2: Any, cluster_id: str) -> tuple[list, list]:
    by_cluster = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]}]
    templates = ec2.describe_launch_templates(Filters=by_cluster)["LaunchTemplates"]
    groups = ec2.describe_security_groups(Filters=by_cluster)["SecurityGroups"]
    return templates, groups


# -- the seed computation -------------------------------------------------------------------


def spot_events(deployment: Deployment) -> Callable[[], list[dict[str, Any]]]:
    """The deployment bus's ``billow.cluster.spot-interrupted`` events, through an SQS
    queue (an EventBridge rule's target)."""
    events, sqs = client(deployment.url, "events"), client(deployment.url, "sqs")
    queue = sqs.create_queue(QueueName=f"{deployment.name}-spot-{uuid.uuid4().hex[:6]}")
    arn = sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=["QueueArn"])
    rule = f"spot-{uuid.uuid4().hex[:6]}"
    pattern = {"detail-type": ["billow.cluster.spot-interrupted"]}
    events.put_rule(Name=rule, EventBusName=deployment.name, EventPattern=json.dumps(pattern))
    target = {"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}
    events.put_targets(Rule=rule, EventBusName=deployment.name, Targets=[target])
    received: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        found = sqs.receive_message(QueueUrl=queue["QueueUrl"], MaxNumberOfMessages=10)
        received.extend(json.loads(m["Body"]) for m in found.get("Messages", []))
        return received

    return read


def test_seed_computation_on_the_aws_control_plane(
    live: Live, runner: InstanceRunner, gateway: ApiGateway, capfd: pytest.CaptureFixture[str]
) -> None:
    spot_published = spot_events(live.deployment)
    with (
        billow.Cluster(
            n_workers=2,
            name="aws-seed",
            server=gateway.url,
            token=live.token,
            show_progress=False,
            timeout=120,
            spot_policy="spot_with_fallback",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        # The client connects to the public address the scheduler learnt from IMDSv2,
        # through the NAT; workers use the private one. The security group opens the
        # scheduler and dashboard ports to the requester's address alone ("me").
        record = cluster.record
        assert cluster.scheduler_address.startswith("tls://127.0.0.2:")
        assert record["scheduler_public_address"] == cluster.scheduler_address
        port = cluster.scheduler_address.rsplit(":", 1)[1]
        assert record["scheduler_address"] == f"tls://127.0.0.1:{port}"
        assert runner.nat is not None and runner.nat.connections[int(port)] >= 1
        assert cluster.dashboard_link.startswith("https://127.0.0.2:")
        assert record["request"]["allow_ingress_from"] == ["127.0.0.1/32"]
        _, (group,) = cluster_resources(live.ec2, cluster.cluster_id)
        opened = {
            (p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]
        }
        assert opened == {(8786, "127.0.0.1/32"), (8787, "127.0.0.1/32")}
        assert len(dask_client.scheduler_info()["workers"]) == 2
        result = da.random.random((10000, 10000)).sum().compute()
        cluster_id = cluster.cluster_id

        # EC2 posts a spot interruption notice to one worker: its agent retires it (the
        # scheduler moves its data and tasks), its tasks finish on the other worker, the
        # event is published, the record counts it, and reconcile starts a replacement,
        # on demand (spot_with_fallback after an interruption).
        def slow(x: int) -> int:
            import time

            time.sleep(0.2)
            return x + 1

        futures = dask_client.map(slow, range(40))
        workers = tagged_instances(live.ec2, **{TAG_CLUSTER: cluster_id, "billow:role": "worker"})
        victim = workers[0]
        victim_name = {t["Key"]: t["Value"] for t in victim["Tags"]}["billow:instance-name"]
        notice = {"action": "terminate", "time": "2026-01-01T00:02:00Z"}
        runner.imds.set(victim["InstanceId"], "spot/instance-action", json.dumps(notice))
        assert dask_client.gather(futures) == list(range(1, 41))
        names = lambda: {w["name"] for w in dask_client.scheduler_info()["workers"].values()}  # noqa: E731
        wait_until(lambda: victim_name not in names(), 60, "the noticed worker retired")
        wait_until(lambda: len(names()) == 2, 120, "a replacement worker joined")
        assert victim_name not in names()
        wait_until(lambda: spot_published(), 30, "the spot-interrupted event")
        (event,) = spot_published()
        assert event["detail"]["cluster_id"] == cluster_id
        assert event["detail"]["detail"] == {"workers": [victim_name], "count": 1}
        record = live.runtime.ports.store.get_cluster(cluster_id)
        assert record is not None and record.spot_interruptions == 1
        fleets = [  # moto ignores DescribeFleets' Filters: every fleet of the server
            f
            for f in live.ec2.describe_fleets()["Fleets"]
            if {t["Key"]: t["Value"] for t in f.get("Tags", [])}.get(TAG_CLUSTER) == cluster_id
        ]
        capacity = [f["TargetCapacitySpecification"]["DefaultTargetCapacityType"] for f in fleets]
        assert sorted(capacity) == ["on-demand", "spot", "spot", "spot"]  # the replacement
        assert "spot interruption notice" in runner.log_of(victim["InstanceId"])
        logs = cluster.get_logs()
    assert abs(result - 5e7) < 1e5  # mean 0.5 of 1e8 uniforms; std ~2.9e3
    assert cluster.record["status"] == "stopped"
    # Logs came back through CloudWatch Logs, shipped from each instance's agent output.
    assert "scheduler listening at tls://" in logs["scheduler"]

    instances = tagged_instances(live.ec2, **{TAG_CLUSTER: cluster_id})
    assert len(instances) == 4  # scheduler, two workers, the replacement
    assert {i["State"]["Name"] for i in instances} == {"terminated"}
    assert cluster_resources(live.ec2, cluster_id) == ([], [])
    assert len(runner.pids()) == 4
    wait_until(lambda: not runner.live_pids(), 30, "agent processes gone")
    # Each instance ran its real user data on a bare python3: it fetched uv and the wheel
    # through pre-signed S3 URLs (checked by sha256) and ran the agent from the venv it
    # built under its own $BILLOW_ROOT.
    for instance in instances:
        root = runner.instances[instance["InstanceId"]].root
        log = runner.log_of(instance["InstanceId"])
        home = f"{root}/opt/billow"
        assert f"billow bootstrap: kit: {home}/uv (" in log, log
        assert f"billow bootstrap: kit: {home}/billow-0.1.0-py3-none-any.whl (" in log, log
        assert f"running on {home}/agent/bin/python" in log, log
    assert not live.executions(cluster_id, "RUNNING")
    statuses = [e["status"] for e in live.executions(cluster_id)]
    assert statuses and set(statuses) == {"SUCCEEDED"}  # bring-up, then teardown

    emitted = capfd.readouterr().out
    assert '"StartLatency"' in emitted and '"ClustersCreated"' in emitted


# -- twenty concurrent creates with one Idempotency-Key ------------------------------------

_CONTAINER = """
import json, sys
import functions.aws as aws

class Context:
    function_name = "billow-api"; memory_limit_in_mb = 512; function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:billow-api"
    aws_request_id = "r"; log_group_name = "g"; log_stream_name = "s"
    def get_remaining_time_in_millis(self): return 29000

event = json.loads(sys.argv[1])
aws.runtime(), aws.resolver()  # the cold start, before the starting gun
print("READY", flush=True)
sys.stdin.readline()
response = aws.api_handler(event, Context())
dask = sorted(m for m in sys.modules if m.split(".")[0] == "dask")
out = {"status": response["statusCode"], "body": json.loads(response["body"]), "dask": dask}
print("RESULT " + json.dumps(out), flush=True)
"""


def test_concurrent_creates_with_one_idempotency_key_make_one_cluster(live: Live) -> None:
    body = json.dumps({"n_workers": 2, "name": "twenty-at-once"}).encode()
    headers = {
        "authorization": f"Bearer {live.token}",
        "content-type": "application/json",
        "idempotency-key": f"key-{uuid.uuid4().hex}",
    }
    event = http_api_event("POST", "/v1/clusters", "", headers, body, "127.0.0.1")
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    containers = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTAINER, json.dumps(event)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        for _ in range(20)
    ]
    outputs = []
    try:
        for proc in containers:  # every container warm, then all requests at once
            assert proc.stdout is not None
            while (line := proc.stdout.readline()) and line.strip() != "READY":
                pass
            assert line, "a container exited before it was ready"
        for proc in containers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in containers:
            outputs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in containers:
            stop_process(proc)

    results = [
        json.loads(line.removeprefix("RESULT "))
        for out in outputs
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(results) == 20, outputs
    assert sorted(r["status"] for r in results) == [200] * 19 + [201], results
    (cluster_id,) = {r["body"]["id"] for r in results}
    assert all(r["dask"] == [] for r in results)  # the API's whole request path is dask-free
    created = [line for out in outputs for line in out.splitlines() if '"ClustersCreated"' in line]
    assert len(created) == 1, created  # the metric is emitted once, where the cluster is made

    clusters = live.runtime.ports.store.list_clusters(
        None, active_only=False, name="twenty-at-once"
    )
    assert [c.id for c in clusters] == [cluster_id]

    def instances() -> list[dict[str, Any]]:
        return tagged_instances(live.ec2, **{TAG_CLUSTER: cluster_id})

    wait_until(lambda: len(instances()) >= 3, 30, "scheduler and two workers launched")
    time.sleep(3)  # three more reconcile steps: none may launch anything again
    names = sorted(
        {t["Key"]: t["Value"] for t in i["Tags"]}["billow:instance-name"] for i in instances()
    )
    assert names == ["scheduler", "worker-0", "worker-1"]
    fleets = [
        f
        for f in live.ec2.describe_fleets()["Fleets"]
        if {t["Key"]: t["Value"] for t in f.get("Tags", [])}.get(TAG_CLUSTER) == cluster_id
    ]
    assert len(fleets) == 3
    assert len(live.executions(cluster_id)) == 1

    status, _ = call_api("POST", f"/v1/clusters/{cluster_id}/stop", live.token)
    assert status == 200

    def stopped() -> bool:
        record = live.runtime.ports.store.get_cluster(cluster_id)
        return record is not None and record.status.value == "stopped"

    wait_until(stopped, 60, "cluster stopped")
    assert {i["State"]["Name"] for i in instances()} == {"terminated"}
    wait_until(lambda: not live.executions(cluster_id, "RUNNING"), 30, "executions finished")


# -- a step that keeps failing ------------------------------------------------------------


def test_a_step_that_keeps_failing_is_retried_caught_and_torn_down(
    live: Live, capfd: pytest.CaptureFixture[str]
) -> None:
    """The state machine's Retry, Catch -> MarkFailed -> teardown loop -> Fail, for real."""
    ec2 = live.runtime.clients.ec2

    def refuse(**_: Any) -> None:
        raise InjectedCrash("EC2 refuses every fleet")

    ec2.meta.events.register("before-call.ec2.CreateFleet", refuse)
    try:
        status, cluster = call_api("POST", "/v1/clusters", live.token, {"n_workers": 1})
        assert status == 201, cluster
        cluster_id = cluster["id"]

        def failed() -> bool:
            record = live.runtime.ports.store.get_cluster(cluster_id)
            return record is not None and record.status.value == "failed"

        wait_until(failed, 60, "cluster failed")
    finally:
        ec2.meta.events.unregister("before-call.ec2.CreateFleet", refuse)
    record = live.runtime.ports.store.get_cluster(cluster_id)
    assert record is not None and record.stop_reason == "orchestration-error"
    # moto 5.2's SendTaskFailure drops the cause, so only the error name arrives here; the
    # Lambda-shaped cause (errorType, errorMessage) is read in tests/unit/test_aws_handlers.py.
    assert record.error == "the lifecycle workflow failed: InjectedCrash"
    wait_until(lambda: not live.executions(cluster_id, "RUNNING"), 30, "execution ended")
    assert [e["status"] for e in live.executions(cluster_id)] == ["FAILED"]
    # The first attempt and the three retries of States.TaskFailed, then the Catch.
    assert live.poller.errors == ["InjectedCrash: EC2 refuses every fleet"] * 4
    live.poller.errors.clear()
    assert '"Failures"' in capfd.readouterr().out
    # No instance ever started, so teardown had nothing to terminate; it released the
    # security group and launch template the first step created before the cluster ended
    # (the reaper's sweep, which would do it otherwise, finds nothing left).
    assert tagged_instances(live.ec2, **{TAG_CLUSTER: cluster_id}) == []
    assert cluster_resources(live.ec2, cluster_id) == ([], [])
    aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
    assert cluster_resources(live.ec2, cluster_id) == ([], [])


# -- crash injection ---------------------------------------------------------------------------

# Every EC2 call that changes something, in the order a first cluster of a deployment makes
# them: the shared network, the cluster's group and template, a fleet per instance, volume
# tags; then teardown. test_crash_points_are_every_changing_ec2_call keeps this complete.
CRASH_POINTS = [
    "CreateVpc",
    "CreateInternetGateway",
    "AttachInternetGateway",
    "CreateRoute",
    "CreateSubnet",
    "ModifySubnetAttribute",
    "CreateSecurityGroup",
    "AuthorizeSecurityGroupIngress",
    "CreateLaunchTemplate",
    "CreateFleet",
    "CreateTags",
    "TerminateInstances",
    "DeleteLaunchTemplate",
    "DeleteSecurityGroup",
]


class InjectedCrash(Exception):
    """The reconcile function dies right after an EC2 call succeeded."""


def crash_once_after(ec2: Any, operation: str) -> list[str]:
    fired: list[str] = []

    def crash(**_: Any) -> None:
        if not fired:
            fired.append(operation)
            raise InjectedCrash(f"crashed right after {operation}")

    ec2.meta.events.register(f"after-call.ec2.{operation}", crash)
    return fired


class FakeAgents:
    """Plays a cluster's agents without Dask: trades each instance's one-time token (read
    from its user data) for its config, and heartbeats as the scheduler would."""

    def __init__(self, ec2: Any, cluster_id: str) -> None:
        self.ec2 = ec2
        self.cluster_id = cluster_id
        self.configs: dict[str, dict[str, Any]] = {}
        self.cluster_token: str | None = None

    def step(self) -> None:
        live = [
            i
            for i in tagged_instances(self.ec2, **{TAG_CLUSTER: self.cluster_id})
            if i["State"]["Name"] in ("pending", "running")
        ]
        live.sort(key=lambda i: "scheduler" not in json.dumps(i["Tags"]))
        for instance in live:
            if instance["InstanceId"] in self.configs:
                continue
            env = exported_env(user_data_of(self.ec2, instance["InstanceId"]))
            status, config = call_api("POST", "/v1/agent/bootstrap", env["BILLOW_INSTANCE_TOKEN"])
            if status == 409 and config["error"] == "not-ready":
                continue
            assert status == 200, config
            self.configs[instance["InstanceId"]] = config
            if config["role"] == "scheduler":
                self.cluster_token = config["cluster_token"]
            self.heartbeat()

    def heartbeat(self) -> None:
        if self.cluster_token is None:
            return
        workers = [c["name"] for c in self.configs.values() if c["role"] == "worker"]
        beat = {"scheduler_address": "tls://127.0.0.1:1", "workers": workers}
        path = f"/v1/clusters/{self.cluster_id}/heartbeat"
        status, answer = call_api("POST", path, self.cluster_token, beat)
        assert status == 200, answer


def drive(
    cluster_id: str, until: Callable[[dict], bool], agents: FakeAgents | None = None
) -> list[InjectedCrash]:
    """Call reconcile_handler as the state machine would, until ``until(output)``."""
    crashes = []
    step = {"cluster_id": cluster_id, "action": "reconcile"}
    for _ in range(40):
        try:
            output = aws.reconcile_handler(step, FakeLambdaContext("billow-reconcile"))
        except InjectedCrash as e:
            crashes.append(e)
            continue
        assert set(output) == {"done", "wait", "status"} and isinstance(output["wait"], int)
        if agents is not None:
            agents.step()
        if until(output):
            return crashes
    raise AssertionError(f"cluster {cluster_id} did not converge")


def create_and_stop(token: str, ec2: Any) -> tuple[str, list[InjectedCrash]]:
    status, cluster = call_api(
        "POST", "/v1/clusters", token, {"n_workers": 1}, idempotency_key=uuid.uuid4().hex
    )
    assert status == 201, cluster
    cluster_id = cluster["id"]
    agents = FakeAgents(ec2, cluster_id)
    crashes = drive(cluster_id, lambda o: o["done"] and o["status"] == "ready", agents)
    assert call_api("POST", f"/v1/clusters/{cluster_id}/stop", token)[0] == 200
    crashes += drive(cluster_id, lambda o: o["done"])
    return cluster_id, crashes


@pytest.fixture
def crash_env(crash_deployment: Deployment) -> Iterator[tuple[aws_runtime.AwsRuntime, str]]:
    """A fresh deployment name each time, so the first cluster builds the network."""
    env = {**crash_deployment.env, "BILLOW_DEPLOYMENT": f"crash-{uuid.uuid4().hex[:8]}"}
    with functions_env(env) as rt:
        _, token = rt.plane.create_user(f"admin-{uuid.uuid4().hex[:6]}", is_admin=True)
        yield rt, token


def test_crash_points_are_every_changing_ec2_call(
    crash_env: tuple[aws_runtime.AwsRuntime, str],
) -> None:
    rt, token = crash_env
    ec2 = rt.clients.ec2
    calls: list[str] = []
    ec2.meta.events.register("after-call.ec2", lambda event_name, **_: calls.append(event_name))
    cluster_id, crashes = create_and_stop(token, ec2)
    assert not crashes
    changing = [c.rsplit(".", 1)[1] for c in calls if not c.rsplit(".", 1)[1].startswith("Desc")]
    assert list(dict.fromkeys(changing)) == CRASH_POINTS


@pytest.mark.parametrize("operation", CRASH_POINTS)
def test_crash_right_after_a_provider_call_converges_without_leaks(
    crash_env: tuple[aws_runtime.AwsRuntime, str], operation: str
) -> None:
    rt, token = crash_env
    ec2 = rt.clients.ec2
    fired = crash_once_after(ec2, operation)
    cluster_id, crashes = create_and_stop(token, ec2)

    assert fired == [operation] and len(crashes) == 1, "the crash did not happen once"
    record = rt.ports.store.get_cluster(cluster_id)
    assert record is not None and record.status.value == "stopped"
    instances = tagged_instances(ec2, **{TAG_CLUSTER: cluster_id})
    names = sorted(
        {t["Key"]: t["Value"] for t in i["Tags"]}["billow:instance-name"] for i in instances
    )
    assert names == ["scheduler", "worker-0"]  # nothing launched twice
    assert {i["State"]["Name"] for i in instances} == {"terminated"}
    # A crash inside teardown can leave the template or group: the reaper deletes them.
    aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
    assert cluster_resources(ec2, cluster_id) == ([], [])


# -- clusters in another account: billow setup aws, then the control plane assumes the role --

CUSTOMER_ACCOUNT = "111111111111"


def customer_credentials(url: str) -> dict[str, str]:
    """Credentials of an admin of another account (moto maps assumed-role credentials to
    the role's account)."""
    found = client(url, "sts").assume_role(
        RoleArn=f"arn:aws:iam::{CUSTOMER_ACCOUNT}:role/admin", RoleSessionName="customer-admin"
    )["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": found["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": found["SecretAccessKey"],
        "AWS_SESSION_TOKEN": found["SessionToken"],
    }


def setup_aws(url: str, creds: dict[str, str], *args: str, stdin: str = "") -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BILLOW_"))}
    env.update(creds, AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "billow.cli", "setup", "aws", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=120,
    )


def test_setup_aws_then_a_cluster_lives_only_through_the_assumed_role(
    aws_url: str, gateway: ApiGateway
) -> None:
    creds = customer_credentials(aws_url)
    kw = {
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": creds["AWS_SESSION_TOKEN"],
        "region_name": "us-east-1",
        "endpoint_url": aws_url,
    }
    import boto3

    iam_b, ec2_b = boto3.client("iam", **kw), boto3.client("ec2", **kw)
    deployment = Deployment.create(aws_url, gateway.url, machine="noop")
    name = deployment.name
    path = f"/billow-setup/{name}/"
    principal = "arn:aws:iam::123456789012:root"
    common = ("--deployment", name, "--control-plane", principal)
    try:
        # --dry-run prints every step and policy and changes nothing; without --yes each
        # step is asked for, and a "no" stops before it.
        dry = setup_aws(aws_url, creds, *common, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "ec2:RunInstances" in dry.stdout and "sts:ExternalId" in dry.stdout
        assert "step 6" in dry.stdout and "nothing was changed" in dry.stdout
        declined = setup_aws(aws_url, creds, *common, stdin="n\n")
        assert declined.returncode == 1 and "stopped before step 1" in declined.stdout
        assert iam_b.list_roles(PathPrefix=path)["Roles"] == []

        done = setup_aws(aws_url, creds, *common, stdin="y\n" * 6)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs = dict(
            line.strip().split("=", 1) for line in done.stdout.splitlines() if "=" in line
        )
        role_arn = outputs["BILLOW_ASSUME_ROLE_ARN"]
        assert role_arn == f"arn:aws:iam::{CUSTOMER_ACCOUNT}:role{path}billow-{name}-control"
        (role,) = [r for r in iam_b.list_roles(PathPrefix=path)["Roles"] if "control" in r["Arn"]]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        condition = trust["Statement"][0]["Condition"]["StringEquals"]
        assert condition == {"sts:ExternalId": outputs["BILLOW_EXTERNAL_ID"]}

        env = {**deployment.env, **outputs}
        with functions_env(env) as rt:
            # The control plane's EC2 identity is the assumed role in the other account.
            frozen = rt.clients.ec2._request_signer._credentials.get_frozen_credentials()
            caller = boto3.client(
                "sts",
                endpoint_url=aws_url,
                region_name="us-east-1",
                aws_access_key_id=frozen.access_key,
                aws_secret_access_key=frozen.secret_key,
                aws_session_token=frozen.token,
            ).get_caller_identity()
            assert caller["Arn"].startswith(
                f"arn:aws:sts::{CUSTOMER_ACCOUNT}:assumed-role/billow-{name}-control/"
            )
            _, token = rt.plane.create_user(f"x-{uuid.uuid4().hex[:6]}", is_admin=True)
            status, cluster = call_api("POST", "/v1/clusters", token, {"n_workers": 1})
            assert status == 201, cluster
            cluster_id = cluster["id"]
            agents = FakeAgents(ec2_b, cluster_id)
            drive(cluster_id, lambda out: out["status"] == "ready" and out["done"], agents)
            status, _ = call_api("POST", f"/v1/clusters/{cluster_id}/stop", token)
            assert status == 200
            drive(cluster_id, lambda out: out["done"])
        in_customer = tagged_instances(ec2_b, **{TAG_CLUSTER: cluster_id})
        assert len(in_customer) == 2  # scheduler and worker, in the customer's account
        assert {i["State"]["Name"] for i in in_customer} == {"terminated"}
        profile = in_customer[0].get("IamInstanceProfile", {}).get("Arn")
        assert profile in (None, outputs["BILLOW_INSTANCE_PROFILE_ARN"])
        assert tagged_instances(client(aws_url, "ec2"), **{TAG_CLUSTER: cluster_id}) == []
        assert cluster_resources(ec2_b, cluster_id) == ([], [])

        # --remove deletes exactly what setup created: nothing tagged with it is left.
        removed = setup_aws(aws_url, creds, "--deployment", name, "--remove", "--yes")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "deleted role billow-" in removed.stdout
        assert iam_b.list_roles(PathPrefix=path)["Roles"] == []
        assert iam_b.list_instance_profiles(PathPrefix=path)["InstanceProfiles"] == []
        for r in iam_b.list_roles()["Roles"]:
            tags = {
                t["Key"]: t["Value"] for t in iam_b.list_role_tags(RoleName=r["RoleName"])["Tags"]
            }
            assert tags.get("billow:deployment") != name, r["RoleName"]
        logs_b = boto3.client("logs", **kw)
        groups = logs_b.describe_log_groups(logGroupNamePrefix=f"/billow/{name}/")["logGroups"]
        assert groups == []
    finally:
        deployment.delete()


# -- the warm pool -------------------------------------------------------------------------


def test_a_cluster_starts_on_a_pooled_instance_with_its_own_certificates(
    aws_url: str, gateway: ApiGateway, instance_kit: InstanceKit, tmp_path: Path
) -> None:
    """A deployment with ``BILLOW_WARM_POOL_SIZE=1``: the scheduled reaper pass launches a
    pool instance; it is stopped here (what its own script does on EC2); the cluster's
    scheduler then starts on it, boots from the bootstrap that replaced its user data, and
    serves the cluster under the cluster's own CA. The worker starts cold (pool of one)."""
    deployment = Deployment.create(aws_url, gateway.url, machine="lifecycle", kit=instance_kit)
    env = {**deployment.env, "BILLOW_WARM_POOL_SIZE": "1"}
    nat = NatForwarder()
    try:
        with functions_env(env) as rt, ImdsServer() as imds:
            moto_user_data_quirk(rt.clients.ec2)
            ec2 = client(aws_url, "ec2")
            summary = aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
            (pooled,) = summary["pool_launched"]
            pool_script = user_data_of(ec2, pooled)
            assert "bit_" not in pool_script and "billow.agent" not in pool_script
            ec2.stop_instances(InstanceIds=[pooled])
            _, token = rt.plane.create_user(f"pool-{uuid.uuid4().hex[:6]}", is_admin=True)
            poller = TaskPoller(aws_url, deployment.queue_url, aws.reconcile_handler).start()
            runner = InstanceRunner(
                aws_url, deployment.name, tmp_path / "instances", instance_kit, imds=imds, nat=nat
            ).start()
            try:
                with (
                    billow.Cluster(
                        n_workers=1,
                        name="pooled",
                        server=gateway.url,
                        token=token,
                        show_progress=False,
                        timeout=120,
                    ) as cluster,
                    Client(cluster) as dask_client,
                ):
                    assert dask_client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
                    cluster_id = cluster.cluster_id
                    ca = cluster.security.tls_ca_file
                    scheduler = tagged_instances(
                        ec2, **{TAG_CLUSTER: cluster_id, "billow:role": "scheduler"}
                    )
                    assert [i["InstanceId"] for i in scheduler] == [pooled]
                    # The scheduler on the pooled instance presents a certificate issued
                    # by this cluster's CA (Dask's mutual TLS above relied on it), not by
                    # another cluster's.
                    host, port = cluster.scheduler_address.removeprefix("tls://").split(":")
                    cert = scheduler_certificate(host, int(port))
                    own_ca = x509.load_pem_x509_certificate(ca.encode())
                    cert.verify_directly_issued_by(own_ca)
                    other = make_cluster_pki("c-other", datetime.now(UTC)).ca_cert_pem
                    other_ca = x509.load_pem_x509_certificate(other.encode())
                    assert own_ca.subject != other_ca.subject
                    with pytest.raises((ValueError, InvalidSignature)):
                        cert.verify_directly_issued_by(other_ca)
                log = runner.log_of(pooled)
                assert "billow bootstrap: kit:" in log and "scheduler listening at tls://" in log
                (worker,) = tagged_instances(
                    ec2, **{TAG_CLUSTER: cluster_id, "billow:role": "worker"}
                )
                assert worker["InstanceId"] != pooled  # the pool held one: the worker ran cold
                wait_until(
                    lambda: describe_state(ec2, pooled) == "terminated", 30, "pooled one ended"
                )
                # It served one cluster: the next pass replaces it, never reuses it.
                summary = aws.reaper_handler({}, FakeLambdaContext("billow-reaper"))
                assert len(summary["pool_launched"]) == 1 and pooled not in summary["pool_launched"]
            finally:
                runner.stop()
                poller.stop()
            assert not runner.errors and not poller.errors, runner.errors + poller.errors
            pool = tagged_instances(ec2, **{"billow:deployment": deployment.name})
            ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in pool])
    finally:
        nat.close()
        deployment.delete()


def describe_state(ec2: Any, instance_id: str) -> str:
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    return str(found[0]["State"]["Name"])


def scheduler_certificate(host: str, port: int) -> Any:
    """The certificate the TLS server at ``host:port`` presents (read without verifying
    it, and without a client certificate: the handshake's first half is enough)."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
