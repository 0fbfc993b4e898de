"""The Lambda entry points without AWS: what importing them costs, and the parts of the
handlers that decide before touching the runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.unit


def test_importing_the_handlers_loads_neither_dask_nor_the_runtime() -> None:
    code = (
        "import sys, functions.aws;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'dask', 'distributed', 'numpy', 'boto3', 'pydantic', 'billow_control'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    # boto3, pydantic and the core load on the first invocation (aws_runtime.get_runtime).
    assert out.stdout.strip() == "[]", out.stdout


def test_handlers_put_the_package_layout_on_sys_path() -> None:
    """In the Lambda package billow_control sits under functions/ and the SDK under sdk/."""
    code = "import functions.aws, billow_control, billow; print(billow_control.__file__)"
    env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: only functions/aws.py sets the path
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(ROOT / "functions" / "billow_control"))


def test_describe_error_reads_a_lambda_error() -> None:
    from billow_control.runtimes.aws import describe_error

    cause = {"errorType": "ClientError", "errorMessage": "UnauthorizedOperation", "trace": []}
    error = {"Error": "ClientError", "Cause": json.dumps(cause)}
    assert describe_error(error) == "ClientError: UnauthorizedOperation"
    assert describe_error({"Error": "States.Timeout", "Cause": None}) == "States.Timeout"
    assert describe_error({"Error": "X", "Cause": "plain text"}) == "X: plain text"
    assert describe_error(None) == "unknown error"


class Context:
    function_name = "billow-events"
    memory_limit_in_mb = 128
    function_version = "$LATEST"
    aws_request_id = "r-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:111122223333:function:billow-events"


def command(**detail: object) -> dict:
    return {
        "id": "e-1",
        "detail-type": "billow.command",
        "source": "ops.nightly",
        "account": "111122223333",
        "detail": {"action": "stop", "cluster_id": "c-1", "user_id": "u-1", **detail},
    }


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({**command(), "detail-type": "billow.cluster.ready"}, "not-a-command"),
        ({**command(), "account": "444455556666"}, "foreign-account"),
        (command(action="delete"), "invalid"),
        (command(surprise=1), "invalid"),
        (command(user_id=7), "invalid"),
        (command(reason="Not Allowed!"), "invalid"),
        ({**command(), "detail": "stop it"}, "invalid"),
    ],
)
def test_malformed_or_foreign_commands_are_refused_before_any_lookup(
    event: dict, error: str
) -> None:
    from functions.aws import events_handler

    answer = events_handler(event, Context())
    assert answer["ok"] is False and answer["error"] == error, answer
