"""The AWS adapters against a real moto_server: KMS secret box, EventBridge bus, Step
Functions orchestrator, S3 object store (the handlers are in test_aws_handlers.py).

moto 5.2 executes state machines only after ``/moto-api/config`` turns it on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag

from billow_control.adapters.aws.dynamodb.items import LoopItem, bind_models
from billow_control.adapters.aws.eventbridge_bus import EventBridgeBus
from billow_control.adapters.aws.kms_box import KmsSecretBox
from billow_control.adapters.aws.reconcile_leases import LoopLeases
from billow_control.adapters.aws.s3_object_store import S3ObjectStore
from billow_control.adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator
from billow_control.adapters.envelope import ENVELOPE
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    ReconcileResult,
    new_id,
)
from billow_control.runtimes.aws import step_output
from tests.support.aws import client, lifecycle_on_sqs
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(serial_moto_url: str) -> str:
    config = {"stepfunctions": {"execute_state_machine": True}}
    httpx.post(f"{serial_moto_url}/moto-api/config", json=config).raise_for_status()
    return serial_moto_url


def record(owner: str = "u-1", **fields: Any) -> ClusterRecord:
    return ClusterRecord(
        id=new_id("c"), owner=owner, name=f"n-{uuid.uuid4().hex[:6]}",
        request=ClusterRequest(), desired_workers=4, **fields,
    )  # fmt: skip


# -- KMS --------------------------------------------------------------------------------------


def test_kms_box_seals_under_the_deployment_context(url: str) -> None:
    kms = client(url, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    box = KmsSecretBox(kms, key, "prod")
    secret = b"-----BEGIN PRIVATE KEY-----\n..."
    blob = box.encrypt(secret)
    assert secret not in blob
    assert box.decrypt(blob) == secret
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        KmsSecretBox(kms, key, "staging").decrypt(blob)
    with pytest.raises(ValueError, match="at most 262144"):
        box.encrypt(b"x" * (256 * 1024 + 1))


def test_kms_box_seals_large_secrets_in_an_envelope_under_the_same_context(url: str) -> None:
    """Above KMS's 4 KiB a secret (a cluster's 64 KiB of ``secrets``) is sealed with a
    data key: still one KMS call each way, still bound to the deployment."""
    kms = client(url, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    box = KmsSecretBox(kms, key, "prod")
    secret = b"canary-" + uuid.uuid4().hex.encode() + b"x" * (64 * 1024)
    blob = box.encrypt(secret)
    assert blob.startswith(ENVELOPE) and b"canary-" not in blob
    assert box.decrypt(blob) == secret
    assert not box.encrypt(b"small").startswith(ENVELOPE)  # certificates: one Encrypt
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        KmsSecretBox(kms, key, "staging").decrypt(blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        box.decrypt(tampered)


# -- EventBridge ------------------------------------------------------------------------------


def test_events_reach_the_bus_with_the_documented_shape(url: str) -> None:
    events, sqs = client(url, "events"), client(url, "sqs")
    bus = f"bus-{uuid.uuid4().hex[:6]}"
    events.create_event_bus(Name=bus)
    queue = sqs.create_queue(QueueName=f"{bus}-q")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    events.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["billow"]}))
    events.put_targets(
        Rule="all",
        EventBusName=bus,
        Targets=[{"Id": "q", "Arn": queue_arn["Attributes"]["QueueArn"]}],
    )
    cluster = record(status=ClusterStatus.failed, error="scheduler exited", stop_reason="x")
    EventBridgeBus(events, bus, "prod").publish("failed", cluster, {"reason": "x"})

    (message,) = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    event = json.loads(message["Body"])
    assert event["source"] == "billow"
    assert event["detail-type"] == "billow.cluster.failed"
    detail = event["detail"]
    assert detail["schema_version"] == 1
    assert {k: detail[k] for k in ("deployment", "kind", "cluster_id", "status", "error")} == {
        "deployment": "prod",
        "kind": "failed",
        "cluster_id": cluster.id,
        "status": "failed",
        "error": "scheduler exited",
    }
    assert detail["detail"] == {"reason": "x"}
    # a usage event: no cluster, the month's totals by team
    totals = {"month": "2025-01", "teams": {"etl": {"cpu_hours": 4.0}}}
    EventBridgeBus(events, bus, "prod").publish_usage("usage.month-closed", totals)
    (message,) = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    event = json.loads(message["Body"])
    assert event["detail-type"] == "billow.usage.month-closed"
    assert event["detail"]["detail"] == totals and event["detail"]["deployment"] == "prod"


def test_a_missing_bus_never_fails_the_caller(url: str) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    bus_log = logging.getLogger("billow_control.adapters.aws.eventbridge_bus")
    bus_log.addHandler(handler)
    try:
        EventBridgeBus(client(url, "events"), "no-such-bus", "prod").publish("ready", record())
    finally:
        bus_log.removeHandler(handler)
    assert [r.levelname for r in records] in (["WARNING"], ["ERROR"])


# -- Step Functions ---------------------------------------------------------------------------


class Clock:
    """Unix time, which a test can move forward (as an execution killed at 5 minutes
    lets its lease lapse)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


@pytest.fixture
def loop_machine(url: str) -> Iterator[tuple[str, str, type[LoopItem]]]:
    """The real lifecycle ASL as an EXPRESS machine whose tasks wait on an SQS queue (the
    test answers them), and a fresh ``reconcile-loops`` table: (ARN, queue, item class)."""
    name = f"loop-{uuid.uuid4().hex[:8]}"
    queue = client(url, "sqs").create_queue(QueueName=name)["QueueUrl"]
    arn = client(url, "stepfunctions").create_state_machine(
        name=name,
        definition=lifecycle_on_sqs(queue),
        roleArn="arn:aws:iam::123456789012:role/x",
        type="EXPRESS",
    )["stateMachineArn"]
    model = bind_models(f"{name}-", "us-east-1", url).loop
    model.create_table(wait=True, billing_mode="PAY_PER_REQUEST")
    try:
        yield arn, queue, model
    finally:
        model.delete_table()


def take_task(url: str, queue: str) -> tuple[dict[str, Any], str]:
    """The next Reconcile/MarkFailed task of the machine: (its payload, its token)."""
    sqs, found = client(url, "sqs"), []

    def receive() -> bool:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1)
        for m in messages.get("Messages", []):
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            found.append(json.loads(m["Body"]))
        return bool(found)

    wait_until(receive, 20, "a task of the loop")
    return found[0]["payload"], found[0]["token"]


def answer(url: str, token: str, result: ReconcileResult) -> None:
    client(url, "stepfunctions").send_task_success(
        taskToken=token, output=json.dumps(step_output(result))
    )


def result(done: bool, status: ClusterStatus = ClusterStatus.provisioning) -> ReconcileResult:
    """What a reconcile step reports (the lifecycle behind the loop is not under test)."""
    return ReconcileResult(done=done, wait=0, status=status)


def run_next_step(
    url: str, queue: str, orchestrator: StepFunctionsOrchestrator, cluster_id: str, done: bool
) -> ReconcileResult:
    """Take the loop's next task, run its step under the lease with a reconcile that
    reports ``done``, and answer the task with what the step reports (returned)."""
    payload, token = take_task(url, queue)
    step = orchestrator.step(cluster_id, payload["loop"], lambda: result(done))
    answer(url, token, step)
    return step


def loop_parts(
    url: str, machine: tuple[str, str, type[LoopItem]], tmp_path: Path, arn: str | None = None
) -> tuple[StepFunctionsOrchestrator, Clock, SqliteStore, ClusterRecord]:
    machine_arn, _, model = machine
    clock = Clock()
    store = SqliteStore(tmp_path / "billow.db")
    stored, _ = store.create_cluster(record(), None, "h")
    leases = LoopLeases(model, clock=clock)
    sfn = client(url, "stepfunctions")
    return (
        StepFunctionsOrchestrator(sfn, arn or machine_arn, store, leases, clock),
        clock,
        store,
        stored,
    )


def executions(url: str, machine_arn: str, status: str | None = None) -> list[dict[str, Any]]:
    kwargs = {"statusFilter": status} if status else {}
    sfn = client(url, "stepfunctions")
    return sfn.list_executions(stateMachineArn=machine_arn, **kwargs)["executions"]


def test_twenty_racing_submits_start_one_loop_that_ends_when_done(
    url: str, loop_machine: tuple[str, str, type[LoopItem]], tmp_path: Path
) -> None:
    machine_arn, queue, _ = loop_machine
    orchestrator, _, _, stored = loop_parts(url, loop_machine, tmp_path)
    barrier = threading.Barrier(20)

    def submit() -> None:
        barrier.wait()
        orchestrator.submit(stored.id)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (running,) = executions(url, machine_arn)
    lease = orchestrator.leases.get(stored.id)
    assert lease is not None and lease.loop == running["name"]
    assert running["name"].startswith(f"{stored.id}-")
    assert orchestrator.running_clusters() == {stored.id}

    payload, token = take_task(url, queue)
    assert payload == {"cluster_id": stored.id, "loop": lease.loop, "action": "reconcile"}
    # The racers came before the loop's first step, which reads what they wrote: no
    # extra step is owed, so "done" ends the execution and releases the lease.
    step = orchestrator.step(stored.id, payload["loop"], lambda: result(True, ClusterStatus.ready))
    assert step.done
    answer(url, token, step)
    wait_until(lambda: not executions(url, machine_arn, "RUNNING"), 10, "the loop to end")
    assert [e["status"] for e in executions(url, machine_arn)] == ["SUCCEEDED"]
    assert orchestrator.leases.get(stored.id) is None
    assert orchestrator.running_clusters() == set()

    orchestrator.submit("c-0000000000000000")  # unknown: nothing to drive
    assert len(executions(url, machine_arn)) == 1


def test_a_submit_during_a_loop_buys_it_one_more_step(
    url: str, loop_machine: tuple[str, str, type[LoopItem]], tmp_path: Path
) -> None:
    machine_arn, queue, _ = loop_machine
    orchestrator, _, _, stored = loop_parts(url, loop_machine, tmp_path)
    orchestrator.submit(stored.id)
    run_next_step(url, queue, orchestrator, stored.id, done=False)

    orchestrator.submit(stored.id)  # e.g. a scale, written while the loop runs
    assert len(executions(url, machine_arn)) == 1  # no second loop...
    step = run_next_step(url, queue, orchestrator, stored.id, done=True)
    assert not step.done and step.wait == 0  # ...but one more step after "done"
    assert run_next_step(url, queue, orchestrator, stored.id, done=True).done
    wait_until(lambda: not executions(url, machine_arn, "RUNNING"), 10, "the loop to end")
    assert orchestrator.leases.get(stored.id) is None

    orchestrator.submit(stored.id)  # after the loop ended: a new one
    assert len(executions(url, machine_arn, "RUNNING")) == 1
    run_next_step(url, queue, orchestrator, stored.id, done=True)


def test_a_lapsed_lease_lets_a_new_loop_take_over_and_the_old_one_ends(
    url: str, loop_machine: tuple[str, str, type[LoopItem]], tmp_path: Path
) -> None:
    machine_arn, queue, _ = loop_machine
    orchestrator, clock, _, stored = loop_parts(url, loop_machine, tmp_path)
    orchestrator.submit(stored.id)
    old, old_token = take_task(url, queue)
    # The old execution is "killed at 5 minutes": nobody answers its task, and time
    # passes beyond its lease.
    clock.skew = orchestrator.leases.lease_seconds + 1
    assert orchestrator.running_clusters() == set()
    orchestrator.submit(stored.id)  # what the reaper's resync does for it
    assert len(executions(url, machine_arn, "RUNNING")) == 2
    new, new_token = take_task(url, queue)
    assert new["loop"] != old["loop"]
    assert orchestrator.running_clusters() == {stored.id}

    ran: list[str] = []
    stale = orchestrator.step(stored.id, old["loop"], lambda: ran.append("old") or result(False))
    assert stale.done and ran == []  # superseded: runs nothing and ends its execution
    answer(url, old_token, stale)
    fresh = orchestrator.step(stored.id, new["loop"], lambda: ran.append("new") or result(True))
    assert fresh.done and ran == ["new"]
    answer(url, new_token, fresh)
    wait_until(lambda: not executions(url, machine_arn, "RUNNING"), 10, "both loops to end")
    assert orchestrator.leases.get(stored.id) is None


def test_a_loop_near_five_minutes_hands_its_lease_to_a_successor(
    url: str, loop_machine: tuple[str, str, type[LoopItem]], tmp_path: Path
) -> None:
    machine_arn, queue, _ = loop_machine
    orchestrator, clock, _, stored = loop_parts(url, loop_machine, tmp_path)
    orchestrator.submit(stored.id)
    run_next_step(url, queue, orchestrator, stored.id, done=False)
    first, token = take_task(url, queue)
    clock.skew = orchestrator.hand_over_after  # the loop is 4 minutes old
    step = orchestrator.step(stored.id, first["loop"], lambda: result(False))
    assert step.done  # its execution ends before Express would stop it...
    answer(url, token, step)
    second, token = take_task(url, queue)  # ...and a successor goes on
    assert second["loop"] != first["loop"]
    assert orchestrator.leases.get(stored.id).loop == second["loop"]
    assert orchestrator.running_clusters() == {stored.id}
    step = orchestrator.step(stored.id, second["loop"], lambda: result(True))
    assert step.done
    answer(url, token, step)
    wait_until(lambda: not executions(url, machine_arn, "RUNNING"), 10, "both loops to end")
    assert [e["status"] for e in executions(url, machine_arn)] == ["SUCCEEDED", "SUCCEEDED"]
    assert orchestrator.leases.get(stored.id) is None


def test_a_start_that_fails_releases_the_lease(
    url: str, loop_machine: tuple[str, str, type[LoopItem]], tmp_path: Path
) -> None:
    machine_arn, queue, model = loop_machine
    missing = machine_arn.rsplit(":", 1)[0] + ":no-such-machine"
    broken, _, store, stored = loop_parts(url, loop_machine, tmp_path, arn=missing)
    with pytest.raises(ClientError):
        broken.submit(stored.id)
    assert broken.leases.get(stored.id) is None  # not left blocking the next submit
    working = StepFunctionsOrchestrator(
        client(url, "stepfunctions"), machine_arn, store, LoopLeases(model)
    )
    working.submit(stored.id)
    assert len(executions(url, machine_arn, "RUNNING")) == 1
    run_next_step(url, queue, working, stored.id, done=True)


# -- S3 object store --------------------------------------------------------------------------


def s3v4(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", config=Config(signature_version="s3v4")
    )


@pytest.fixture
def s3_store(url: str) -> S3ObjectStore:
    bucket = f"billow-envs-{uuid.uuid4().hex[:8]}"
    client(url, "s3").create_bucket(Bucket=bucket)
    return S3ObjectStore(s3v4(url), bucket)


def test_s3_store_urls_sign_the_size_and_the_sha256(s3_store: S3ObjectStore) -> None:
    data = b"PK\x03\x04 a wheel" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert not s3_store.exists(sha)

    put = s3_store.upload_url(sha, len(data))
    query = parse_qs(urlsplit(put).query)
    # Real S3 refuses a PUT whose Content-Length or checksum differs from the signed ones
    # (signature mismatch, BadDigest); moto checks neither, so these are asserted here.
    signed = query["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "x-amz-checksum-sha256", "x-amz-tagging"} <= set(signed)
    assert query["X-Amz-Expires"] == ["900"]
    headers = s3_store.upload_headers(sha, len(data))
    assert headers["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(sha)).decode()
    assert set(headers) | {"content-length", "host"} == set(signed)  # all the client sends

    assert httpx.put(put, content=data, headers=headers).status_code == 200
    assert s3_store.exists(sha)
    # Client uploads carry the tag the bucket's lifecycle rule expires (the kit does not).
    tags = s3_store.s3.get_object_tagging(Bucket=s3_store.bucket, Key=s3_store.key(sha))
    assert tags["TagSet"] == [{"Key": "billow-upload", "Value": "client"}]
    got = httpx.get(s3_store.download_url(sha))
    assert got.status_code == 200 and got.content == data
    with pytest.raises(ValueError, match="not a sha256"):
        s3_store.upload_url("../../etc/passwd", 5)


def test_s3_store_counts_only_objects_whose_checksum_is_their_name(
    s3_store: S3ObjectStore,
) -> None:
    """Bytes that reached the key without S3 checking them against its name never count:
    a plain PUT (no checksum), or one whose checksum names other bytes."""
    data = b"the right bytes"
    sha = hashlib.sha256(data).hexdigest()
    s3 = s3_store.s3
    s3.put_object(Bucket=s3_store.bucket, Key=s3_store.key(sha), Body=b"other bytes")
    assert not s3_store.exists(sha)
    s3.put_object(
        Bucket=s3_store.bucket,
        Key=s3_store.key(sha),
        Body=b"other bytes",
        ChecksumAlgorithm="SHA256",
    )
    assert not s3_store.exists(sha)  # S3 recorded the checksum of what it got
    url = s3_store.upload_url(sha, len(data))
    assert httpx.put(url, content=data).status_code == 200  # moto: unsigned headers pass
    assert not s3_store.exists(sha)  # ...but no checksum was recorded
    assert httpx.put(url, content=data, headers=s3_store.upload_headers(sha, len(data))).is_success
    assert s3_store.exists(sha)
    assert not s3_store.exists("not-a-sha")


def test_s3_store_needs_a_bucket_and_sigv4(url: str) -> None:
    store = S3ObjectStore(s3v4(url), f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    assert not store.exists("0" * 64)  # a missing bucket answers 404 to HEAD as well
    with pytest.raises(ValueError, match="BILLOW_ENV_BUCKET"):
        S3ObjectStore(s3v4(url), "")
    with pytest.raises(ValueError, match="s3v4"):
        S3ObjectStore(client(url, "s3"), "bucket")  # SigV2 URLs would not sign the size
