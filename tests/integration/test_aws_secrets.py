"""A cluster's secrets on the AWS runtime against a real moto_server: through the Lambda
API handler they are sealed by KMS (an envelope above 4 KiB), come back in the
bootstrap exchange, and are in no DynamoDB item (the powertools idempotency table
included), no EventBridge event, no API answer and no log line.

The deployment's state machine succeeds at once (as in test_aws_handlers.py): nothing
launches instances, so the test stands in for one with an instance credential.
"""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any

import pytest

from billow_control.core.auth import INSTANCE_TOKEN_PREFIX, hash_token, new_token
from billow_control.core.models import InstanceCredential, InstanceRole
from billow_control.runtimes.aws import AwsRuntime
from tests.support.aws import Deployment, call_api, client

pytestmark = pytest.mark.integration


def events_queue(deployment: Deployment) -> str:
    """An SQS queue receiving every event of the deployment's bus."""
    events, sqs = client(deployment.url, "events"), client(deployment.url, "sqs")
    queue = sqs.create_queue(QueueName=f"{deployment.name}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    rule = {"source": ["billow"]}
    events.put_rule(Name="all", EventBusName=deployment.name, EventPattern=json.dumps(rule))
    events.put_targets(
        Rule="all",
        EventBusName=deployment.name,
        Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}],
    )
    return str(queue)


def received(deployment: Deployment, queue: str) -> list[str]:
    sqs = client(deployment.url, "sqs")
    bodies: list[str] = []
    while messages := sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages"):
        bodies += [m["Body"] for m in messages]
    return bodies


def every_item(deployment: Deployment) -> bytes:
    """Every attribute of every item of the deployment's tables, as bytes."""
    dynamodb = client(deployment.url, "dynamodb")
    prefix = deployment.env["BILLOW_TABLE"]
    out: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, bytes | bytearray):
            out.append(bytes(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                out.append(str(k).encode())
                walk(v)
        elif isinstance(value, list | set):
            for v in value:
                walk(v)
        else:
            out.append(str(value).encode())

    tables = [t for t in dynamodb.list_tables()["TableNames"] if t.startswith(prefix)]
    assert f"{prefix}clusters" in tables and f"{prefix}idempotency" in tables
    for table in tables:
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            walk(page["Items"])
    return b"\n".join(out)


def test_secrets_are_sealed_by_kms_and_reach_only_the_bootstrap_exchange(
    rt: AwsRuntime, deployment: Deployment, capfd: pytest.CaptureFixture[str]
) -> None:
    queue = events_queue(deployment)
    canary = "canary-" + secrets.token_urlsafe(24)
    large = "large-" + secrets.token_urlsafe(8000)  # the blob is a KMS envelope (> 4 KiB)
    plain = "plain-" + secrets.token_urlsafe(24)
    user, token = rt.plane.create_user("holder")
    body = {
        "n_workers": 0,
        "environ": {"PLAIN_VAR": plain},
        "secrets": {"CANARY_SECRET": canary, "LARGE_SECRET": large},
    }
    answers: list[Any] = []
    status, cluster = call_api("POST", "/v1/clusters", token, body, idempotency_key="k1")
    assert status == 201, cluster
    assert cluster["secrets"] == ["CANARY_SECRET", "LARGE_SECRET"]
    assert cluster["request"]["environ"] == {"PLAIN_VAR": plain}
    cid = cluster["id"]
    answers.append(cluster)
    status, again = call_api("POST", "/v1/clusters", token, body, idempotency_key="k1")
    assert (status, again["id"]) == (200, cid)
    other = {**body, "secrets": {"CANARY_SECRET": canary + "-other", "LARGE_SECRET": large}}
    status, refused = call_api("POST", "/v1/clusters", token, other, idempotency_key="k1")
    assert status == 409 and refused["field"] == "Idempotency-Key"
    status, invalid = call_api(
        "POST", "/v1/clusters", token, {**body, "environ": {"CANARY_SECRET": "x"}}
    )
    assert status == 422 and invalid["detail"][0]["field"] == "secrets"
    answers += [again, refused, invalid]
    for path in (f"/v1/clusters/{cid}", "/v1/clusters", "/v1/clusters?active=true", "/v1/whoami"):
        status, answer = call_api("GET", path, token)
        assert status == 200, answer
        answers.append(answer)

    instance_token = new_token(INSTANCE_TOKEN_PREFIX)
    now = rt.ports.clock.now()
    rt.ports.store.put_instance_credential(
        InstanceCredential(
            token_hash=hash_token(instance_token),
            cluster_id=cid,
            instance_name="scheduler",
            role=InstanceRole.scheduler,
            expires_at=now + timedelta(hours=1),
        )
    )
    status, config = call_api("POST", "/v1/agent/bootstrap", instance_token)
    assert status == 200, config
    assert config["environ"] == {"PLAIN_VAR": plain, "CANARY_SECRET": canary, "LARGE_SECRET": large}
    rt.plane.lifecycle.fail(cid, "test", "a failure event carries the record's metadata")
    status, stopped = call_api("POST", f"/v1/clusters/{cid}/stop", token)
    answers.append(stopped)

    logged = capfd.readouterr()
    events = received(deployment, queue)
    assert any(cid in e and "billow.cluster.requested" in e for e in events)
    assert any("billow.cluster.failed" in e for e in events)
    items = every_item(deployment)
    assert plain.encode() in items  # the record's environ: the search sees stored values
    for value in (canary, large[:64]):
        assert value not in json.dumps(answers)
        assert value.encode() not in items
        assert not [e for e in events if value in e]
        assert value not in logged.out + logged.err
    stored = rt.ports.store.get_cluster(cid)
    assert stored is not None and stored.secrets == ["CANARY_SECRET", "LARGE_SECRET"]
    assert user.id == stored.owner
