"""``billow admin bootstrap``: a freshly deployed AWS stack gets its first admin through
the deployer's own AWS credentials, once.

The real ``billow`` command runs as a subprocess with only AWS configuration: it reads the
stack's outputs from CloudFormation (moto_server) and invokes the function they name
through boto3's Lambda client, pointed (``AWS_ENDPOINT_URL_LAMBDA``) at ``LambdaInvoke``,
which runs ``functions.aws.bootstrap_handler`` in this process against the deployment's
DynamoDB tables on moto. The login it writes is then used against the deployment's API
(``functions.aws.api_handler`` behind the loopback ``ApiGateway``).

What a loopback test cannot show: that IAM lets only the account's administrators invoke
the function (the harness accepts any signature), and that the real stack's output names
the real function (``tests/integration/test_deploy_artifacts.py`` checks the template).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import functions.aws as aws
import httpx
import pytest
import yaml

from tests.support.aws import ApiGateway, Deployment, client, functions_env
from tests.support.lambda_invoke import LambdaInvoke

pytestmark = pytest.mark.integration

REGION = "us-east-1"


def make_stack(moto: str, name: str, outputs: dict[str, str]) -> None:
    template = {
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": name}}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    client(moto, "cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


@pytest.fixture(scope="module")
def stack(serial_moto_url: str) -> Iterator[tuple[str, LambdaInvoke, ApiGateway, Deployment]]:
    """A deployment whose API answers on a loopback gateway, its stack on moto, and the
    Lambda Invoke stand-in serving its bootstrap function."""
    gateway = ApiGateway(aws.api_handler)
    deployment = Deployment.create(serial_moto_url, gateway.url, machine="noop")
    function = f"{deployment.name}-bootstrap"
    make_stack(serial_moto_url, f"billow-{deployment.name}", {"BootstrapFunctionName": function})
    try:
        with functions_env(deployment.env), LambdaInvoke({function: aws.bootstrap_handler}) as lam:
            gateway.start()
            try:
                yield f"billow-{deployment.name}", lam, gateway, deployment
            finally:
                gateway.stop()
    finally:
        deployment.delete()


def bootstrap(moto: str, lam: LambdaInvoke, login: Path, *args: str) -> subprocess.CompletedProcess:
    """``billow admin bootstrap ARGS`` as a deployer runs it: AWS credentials and endpoints,
    no Billow configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BILLOW_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL_CLOUDFORMATION=moto,
        AWS_ENDPOINT_URL_LAMBDA=lam.url,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        BILLOW_LOGIN_FILE=str(login),
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, "-m", "billow.cli", "admin", "bootstrap", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_bootstrap_creates_the_first_admin_once_and_logs_in(
    stack: tuple[str, LambdaInvoke, ApiGateway, Deployment], serial_moto_url: str, tmp_path: Path
) -> None:
    name, lam, gateway, deployment = stack
    login = tmp_path / "login.yaml"

    first = bootstrap(serial_moto_url, lam, login, "--stack", name, "--region", REGION)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created the first admin admin" in first.stdout
    assert oct(login.stat().st_mode & 0o777) == "0o600"
    saved = yaml.safe_load(login.read_text())["billow"]
    assert saved["server"] == gateway.url
    assert saved["token"] not in first.stdout + first.stderr  # printed nowhere
    who = httpx.get(
        f"{saved['server']}/v1/whoami", headers={"authorization": f"Bearer {saved['token']}"}
    )
    assert who.status_code == 200 and who.json()["is_admin"] is True, who.text
    users = httpx.post(
        f"{saved['server']}/v1/users",
        json={"name": "analyst"},
        headers={"authorization": f"Bearer {saved['token']}"},
    )
    assert users.status_code == 201, users.text  # the admin can add users

    again = bootstrap(serial_moto_url, lam, login, "--stack", name, "--region", REGION)
    assert again.returncode == 1
    assert "already has users" in again.stdout and "Traceback" not in again.stderr
    assert yaml.safe_load(login.read_text())["billow"] == saved  # the login is untouched
    assert deployment.store.count_users() == 2
    assert lam.calls == [f"{deployment.name}-bootstrap"] * 2


def test_bootstrap_explains_a_missing_stack_output_or_region(
    stack: tuple[str, LambdaInvoke, ApiGateway, Deployment], serial_moto_url: str, tmp_path: Path
) -> None:
    _, lam, _, _ = stack
    login = tmp_path / "login.yaml"
    missing = bootstrap(serial_moto_url, lam, login, "--stack", "no-such", "--region", REGION)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no CloudFormation stack 'no-such' in us-east-1" in missing.stdout

    make_stack(serial_moto_url, "billow-old", {"Other": "x"})
    old = bootstrap(serial_moto_url, lam, login, "--stack", "billow-old", "--region", REGION)
    assert old.returncode == 1 and "has no BootstrapFunctionName output" in old.stdout

    no_region = bootstrap(serial_moto_url, lam, login, "--stack", "billow-old")
    assert no_region.returncode == 1 and "pass --region" in no_region.stdout
    assert not login.exists()
