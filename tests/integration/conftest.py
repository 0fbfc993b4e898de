"""Fixtures of the AWS handler tests: a deployment on the one-request-at-a-time moto
server whose state machine succeeds at once (the tests call the handlers the way the
state machine and EventBridge would), and the Lambda functions' runtime built from it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from billow_control.runtimes.aws import AwsRuntime
from tests.support.aws import Deployment, functions_env


@pytest.fixture(scope="module")
def deployment(serial_moto_url: str) -> Iterator[Deployment]:
    config = {"stepfunctions": {"execute_state_machine": True}}
    httpx.post(f"{serial_moto_url}/moto-api/config", json=config).raise_for_status()
    created = Deployment.create(serial_moto_url, "http://127.0.0.1:9", machine="noop")
    try:
        yield created
    finally:
        created.delete()


@pytest.fixture
def rt(deployment: Deployment) -> Iterator[AwsRuntime]:
    with functions_env(deployment.env) as runtime:
        yield runtime
