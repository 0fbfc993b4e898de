"""What an AWS deployer does with their own AWS credentials: find a deployed stack's
bootstrap function and create the deployment's first admin (``billow admin bootstrap``).

The path is guarded by IAM, not by a Billow token (there is none yet): the stack's
``BootstrapFunctionName`` output names a Lambda function that no HTTP route reaches, and
only principals allowed ``lambda:InvokeFunction`` on it (the account's administrators,
by default) can invoke it. boto3 finds credentials, region and endpoints the usual way
(``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_<SERVICE>``...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import BillowError

BOOTSTRAP_OUTPUT = "BootstrapFunctionName"


class AwsDeployError(BillowError):
    """An expected failure of a deployer's AWS call; the message says what to do."""


@dataclass(frozen=True)
class FirstAdmin:
    name: str
    token: str
    server: str


def _session(region: str | None) -> Any:
    try:
        import boto3
    except ImportError:
        raise AwsDeployError(
            "boto3 is not installed: install billow with its AWS extra (pip install 'billow[aws]')"
        ) from None
    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        raise AwsDeployError("no AWS region configured: pass --region (or set AWS_REGION)")
    return session


def _explain(e: Exception, doing: str) -> AwsDeployError:  # a botocore exception
    """One line for a botocore failure: no credentials, refused, or the service's words."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return AwsDeployError(
            f"no AWS credentials found while {doing}: configure the deploying account's "
            "credentials (aws configure, AWS_PROFILE)"
        )
    if isinstance(e, ClientError):
        error = e.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", str(e))
        if code in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"):
            return AwsDeployError(
                f"AWS refused {doing} ({code}: {message}); use credentials of the account "
                "that deployed the stack, allowed to do this"
            )
        return AwsDeployError(f"{doing} failed: {code}: {message}")
    return AwsDeployError(f"{doing} failed: {e}")


def stack_outputs(session: Any, stack: str) -> dict[str, str]:
    """The outputs of CloudFormation stack ``stack``. Raises ``AwsDeployError`` when it
    does not exist in the session's region or cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    cfn = session.client("cloudformation")
    try:
        (found,) = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as e:
        if "does not exist" in e.response.get("Error", {}).get("Message", ""):
            raise AwsDeployError(
                f"no CloudFormation stack {stack!r} in {session.region_name}: check the name "
                "(osls names it billow-<stage>) and --region"
            ) from None
        raise _explain(e, f"reading stack {stack!r}") from None
    except BotoCoreError as e:
        raise _explain(e, f"reading stack {stack!r}") from None
    return {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}


def invoke(session: Any, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke Lambda ``function`` synchronously and return its JSON answer. A function
    error (the handler raised) becomes ``AwsDeployError`` with the function's message."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = session.client("lambda")
    try:
        response = client.invoke(
            FunctionName=function,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
    except (BotoCoreError, ClientError) as e:
        raise _explain(e, f"invoking {function}") from None
    body = response["Payload"].read()
    try:
        answer = json.loads(body or b"null")
    except ValueError:
        answer = None
    if response.get("FunctionError"):
        detail = answer.get("errorMessage") if isinstance(answer, dict) else None
        raise AwsDeployError(
            f"{function} failed: {detail or body[:500].decode(errors='replace')}; "
            "its CloudWatch log group /aws/lambda/" + function + " has the details"
        )
    if not isinstance(answer, dict):
        raise AwsDeployError(f"{function} answered something else than a JSON object")
    return answer


def bootstrap_first_admin(stack: str, region: str | None = None) -> FirstAdmin:
    """Create the first admin of the deployment of ``stack`` through its bootstrap
    function. Raises ``AwsDeployError`` when the stack, its output or AWS refuse, and
    when the deployment already has users (its message says so)."""
    session = _session(region)
    outputs = stack_outputs(session, stack)
    function = outputs.get(BOOTSTRAP_OUTPUT)
    if not function:
        raise AwsDeployError(
            f"stack {stack!r} has no {BOOTSTRAP_OUTPUT} output: it was deployed by an older "
            "billow; deploy it again with this version"
        )
    answer = invoke(session, function, {"action": "first-admin"})
    if not answer.get("ok"):
        raise AwsDeployError(str(answer.get("message") or answer))
    try:
        return FirstAdmin(str(answer["name"]), str(answer["token"]), str(answer["server"]))
    except KeyError as e:
        raise AwsDeployError(f"{function} answered without {e.args[0]!r}") from None
