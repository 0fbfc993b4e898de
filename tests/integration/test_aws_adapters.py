"""The AWS adapters against a real moto_server: KMS secret box, EventBridge bus, Step
Functions orchestrator (the handlers are in test_aws_handlers.py).

moto 5.2 executes state machines only after ``/moto-api/config`` turns it on.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from billow_control.adapters.aws.eventbridge_bus import EventBridgeBus
from billow_control.adapters.aws.kms_box import KmsSecretBox
from billow_control.adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator
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
    with pytest.raises(ValueError, match="at most 4096"):
        box.encrypt(b"x" * 4097)


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
