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

from billow_control.adapters.aws.eventbridge_bus import EventBridgeBus
from billow_control.adapters.aws.kms_box import KmsSecretBox
from billow_control.adapters.aws.s3_object_store import S3ObjectStore
from billow_control.adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator
from billow_control.adapters.envelope import ENVELOPE
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.models import ClusterRecord, ClusterRequest, ClusterStatus, new_id
from tests.support.aws import SQS_TASK, client
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


@pytest.fixture
def callback_machine(url: str) -> Iterator[tuple[str, str]]:
    """A state machine whose one task waits for an answer on SQS: RUNNING until answered."""
    name = f"hold-{uuid.uuid4().hex[:6]}"
    queue = client(url, "sqs").create_queue(QueueName=name)["QueueUrl"]
    definition = {
        "StartAt": "Hold",
        "States": {
            "Hold": {
                "Type": "Task",
                "Resource": SQS_TASK,
                "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
                "End": True,
            }
        },
    }
    arn = client(url, "stepfunctions").create_state_machine(
        name=name,
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]
    yield arn, queue


def release_all(url: str, queue: str, expected: int) -> None:
    sqs, sfn = client(url, "sqs"), client(url, "stepfunctions")
    released = 0

    def release() -> bool:
        nonlocal released
        for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            sfn.send_task_success(taskToken=json.loads(m["Body"])["token"], output="{}")
            released += 1
        return released >= expected

    wait_until(release, 20, f"{expected} task(s) to release")


def test_one_execution_per_cluster_and_one_per_change(
    url: str, callback_machine: tuple[str, str], tmp_path: Path
) -> None:
    machine, queue = callback_machine
    sfn = client(url, "stepfunctions")
    store = SqliteStore(tmp_path / "billow.db")
    stored, _ = store.create_cluster(record(), None, "h")
    orchestrator = StepFunctionsOrchestrator(sfn, machine, store)

    def executions(status: str | None = None) -> list[tuple[str, str]]:
        kwargs = {"statusFilter": status} if status else {}
        found = sfn.list_executions(stateMachineArn=machine, **kwargs)["executions"]
        return sorted((e["name"], e["status"]) for e in found)

    threads = [threading.Thread(target=orchestrator.submit, args=(stored.id,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    orchestrator.submit(stored.id)
    assert executions() == [(f"{stored.id}-v0", "RUNNING")]
    assert orchestrator.running_clusters() == {stored.id}

    release_all(url, queue, 1)
    wait_until(lambda: not executions("RUNNING"), 10, "execution done")
    orchestrator.submit(stored.id)  # no change since, but asked again: a follow-up runs
    (follow_up,) = [n for n, s in executions() if s == "RUNNING"]
    assert follow_up.startswith(f"{stored.id}-v0-r")

    release_all(url, queue, 1)
    wait_until(lambda: not executions("RUNNING"), 10, "follow-up done")
    stored.desired_workers = 2
    store.update_cluster(stored)
    orchestrator.submit(stored.id)
    assert (f"{stored.id}-v1", "RUNNING") in executions()
    release_all(url, queue, 1)

    orchestrator.submit("c-0000000000000000")  # unknown: nothing to drive
    assert len(executions()) == 3


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
