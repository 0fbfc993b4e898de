"""The AWS control plane on moto_server, run for real: a deployment's resources, the
Lambda handlers behind a loopback "API Gateway", a Step Functions task poller standing in
for the Lambda service, and an instance runner standing in for EC2 booting instances.

What moto does not do, and what each harness here does in its place:

* Lambda tasks of a state machine cannot run our code: ``lifecycle_on_sqs`` rewrites every
  Task of the real ASL to ``sqs:sendMessage.waitForTaskToken`` (which real Express
  workflows refuse; moto runs an ``EXPRESS`` machine like a Standard one: exactly once,
  listable, describable, never stopped at 5 minutes); ``TaskPoller`` receives
  those messages, calls ``functions.aws.reconcile_handler`` with the task's payload, and
  answers ``SendTaskSuccess`` with its return value or ``SendTaskFailure`` with the
  exception's type and message, as the Lambda service reports a function error.
* API Gateway: ``ApiGateway`` turns loopback HTTP requests into HTTP API (v2) events for
  ``functions.aws.api_handler``, one at a time (one warm container).
* Instances never boot: ``InstanceRunner`` reads each tagged instance's user data from
  EC2, checks it is Billow's bootstrap script, and runs that very script with ``bash``
  in its own session (``tests/support/instances.py``, shared with the Compute Engine
  fake), as a bare instance would: under its own root (``BILLOW_ROOT``),
  with a ``python3`` on ``PATH`` that cannot import billow, so the script must fetch the
  kit (``POST /v1/agent/kit``), download uv and the billow wheel through pre-signed S3
  URLs from moto, check them, build its venv and run the agent from it. One machine
  hosts every "instance": the runner sets loopback addresses and OS-chosen ports, and a
  uv cache shared by all instances (``InstanceKit``). It ships the script's log
  (``$BILLOW_ROOT/var/log/billow-agent.log``) to the CloudWatch Logs stream the script's
  log-agent configuration names, kills the process group when EC2 reports the instance
  terminated, and terminates the instance when the script ends (its ``shutdown -h now``
  with ``InstanceInitiatedShutdownBehavior=terminate``; here ``BILLOW_SHUTDOWN=true``).
  Warm-pool instances (tagged ``billow:pool``) are not booted: a test stops them, as
  their own script would once the kit is prepared. Once a launch takes one (the pool
  tag gone, its user data replaced while stopped, then ``StartInstances``), the runner
  boots it like any other instance, from its user data *as it is now*: what the pool's
  cloud-init per-boot hook does on EC2.
* ``InstanceKit`` builds what the deployment's env bucket holds for bare instances: the
  uv binary of the ``uv`` package installed here, and a billow wheel built from this
  repository (``uv build --wheel``); ``Deployment.create(kit=...)`` uploads both by
  sha256 and sets ``BILLOW_UV_SHA256`` and ``BILLOW_AGENT_WHEEL``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from billow_control.adapters.aws.dynamodb import DynamoDBStore, create_tables, delete_tables
from billow_control.adapters.aws.ec2 import AGENT_LOG
from billow_control.runtimes import aws as aws_runtime
from billow_control.runtimes.http_proxy import http_api_event
from tests.support.imds import ImdsServer, NatForwarder
from tests.support.instances import (
    InstanceKit,
    RunningInstance,
    boot_script,
    exported_env,
    sha256_of,
    stop_instances,
)
from tests.support.loopback_http import LoopbackHttpServer, QuietHandler
from tests.support.processes import ROOT, free_port

__all__ = ["InstanceKit", "RunningInstance", "exported_env", "sha256_of"]

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
LIFECYCLE_ASL = ROOT / "infra" / "statemachines" / "cluster-lifecycle.asl.json"
SQS_TASK = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
TAG_DEPLOYMENT = "billow:deployment"
TAG_POOL = "billow:pool"


class FakeLambdaContext:
    """What powertools and the handlers read from a Lambda context."""

    memory_limit_in_mb = 512
    function_version = "$LATEST"

    def __init__(self, function_name: str = "billow-test", request_id: str | None = None):
        self.function_name = function_name
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def client(url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION)


def lifecycle_on_sqs(queue_url: str) -> str:
    """The real lifecycle ASL with each Task sending its payload and task token to SQS."""
    definition = json.loads(LIFECYCLE_ASL.read_text())
    for state in definition["States"].values():
        if state["Type"] == "Task":
            state["Resource"] = SQS_TASK
            state["Parameters"] = {
                "QueueUrl": queue_url,
                "MessageBody": {"payload": state["Parameters"], "token.$": "$$.Task.Token"},
            }
    return json.dumps(definition)


NOOP_MACHINE = json.dumps({"StartAt": "Noop", "States": {"Noop": {"Type": "Succeed"}}})


@dataclass
class Deployment:
    """One deployment's resources on moto and the environment of its functions."""

    url: str
    name: str
    env: dict[str, str]
    queue_url: str
    state_machine_arn: str
    log_group: str
    store: DynamoDBStore
    env_bucket: str = ""

    @classmethod
    def create(
        cls,
        url: str,
        control_url: str,
        machine: str = "lifecycle",
        kit: InstanceKit | None = None,
    ) -> Deployment:
        """Tables, KMS key, bus, log group, env bucket, task queue and state machine
        ("lifecycle": the real ASL on SQS tasks; "noop": executions that succeed at once).
        With ``kit``, the env bucket holds the instance kit and the functions name it."""
        name = f"t{uuid.uuid4().hex[:8]}"
        prefix = f"{name}-"
        store = DynamoDBStore(prefix, host=url)
        create_tables(store)
        client(url, "dynamodb").create_table(
            TableName=f"{prefix}idempotency",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        key_id = client(url, "kms").create_key(Description=name)["KeyMetadata"]["KeyId"]
        client(url, "events").create_event_bus(Name=name)
        log_group = f"/billow/{name}/instances"
        client(url, "logs").create_log_group(logGroupName=log_group)
        queue_url = client(url, "sqs").create_queue(QueueName=f"{name}-tasks")["QueueUrl"]
        definition = lifecycle_on_sqs(queue_url) if machine == "lifecycle" else NOOP_MACHINE
        machine_arn = client(url, "stepfunctions").create_state_machine(
            name=f"{name}-lifecycle",
            definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}-lifecycle",
            type="EXPRESS",  # as serverless.yml deploys it (moto runs it like a Standard one)
        )["stateMachineArn"]
        env_bucket = f"{name}-envs"
        client(url, "s3").create_bucket(Bucket=env_bucket)
        kit_env = kit.upload(client(url, "s3"), env_bucket) if kit is not None else {}
        ami = amazon_linux_image(client(url, "ec2"))
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "BILLOW_AWS_ENDPOINT_URL": url,
            "BILLOW_DEPLOYMENT": name,
            "BILLOW_CONTROL_URL": control_url,
            "BILLOW_TABLE": prefix,
            "BILLOW_STATE_MACHINE_ARN": machine_arn,
            "BILLOW_EVENT_BUS": name,
            "BILLOW_KMS_KEY_ID": key_id,
            "BILLOW_AMI_ID": ami,
            "BILLOW_INSTANCE_TYPES": "t3.medium",
            "BILLOW_PURCHASE": "on-demand",
            # Only clusters recorded without allow_ingress_from fall back to this.
            "BILLOW_ALLOWED_CIDR": "192.0.2.0/24",
            "BILLOW_INSTANCE_LOG_GROUP": log_group,
            "BILLOW_RECONCILE_INTERVAL": "1",
            "BILLOW_HEARTBEAT_INTERVAL": "1",
            "POWERTOOLS_SERVICE_NAME": "billow",
            "POWERTOOLS_METRICS_NAMESPACE": "Billow",
            "BILLOW_ENV_BUCKET": env_bucket,
            **kit_env,
        }
        return cls(url, name, env, queue_url, machine_arn, log_group, store, env_bucket)

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            delete_tables(self.store)
            client(self.url, "dynamodb").delete_table(TableName=f"{self.name}-idempotency")


@contextlib.contextmanager
def functions_env(env: dict[str, str]) -> Iterator[aws_runtime.AwsRuntime]:
    """The Lambda functions' environment in this process, and a fresh runtime built from
    it (``functions.aws`` builds one per process and caches it)."""
    import functions.aws as aws

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    aws_runtime.reset_runtime()
    try:
        yield aws.runtime()
    finally:
        aws_runtime.reset_runtime()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def call_api(
    method: str, path: str, token: str | None = None, body: Any = None, **headers: str
) -> tuple[int, Any]:
    """One API Gateway event through ``functions.aws.api_handler``: (status, JSON body)."""
    import functions.aws as aws

    hdrs = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    if token:
        hdrs["authorization"] = f"Bearer {token}"
    raw = json.dumps(body).encode() if body is not None else b""
    if raw:
        hdrs["content-type"] = "application/json"
    path, _, query = path.partition("?")
    event = http_api_event(method, path, query, hdrs, raw, "127.0.0.1")
    response = aws.api_handler(event, FakeLambdaContext("billow-api"))
    return response["statusCode"], json.loads(response.get("body") or "null")


def amazon_linux_image(ec2: Any) -> str:
    """An Amazon Linux image of moto's catalogue (else its first image)."""
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    return str(next((i for i in images if "amzn" in i.get("Name", "")), images[0])["ImageId"])


def tagged_instances(ec2: Any, **tags: str) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            out += reservation["Instances"]
    return out


def moto_user_data_quirk(ec2: Any) -> Any:
    """Make ``ec2`` (a client of moto_server) send ``ModifyInstanceAttribute``'s user data
    the way moto 5.2 reads it, and return ``ec2``.

    ``UserData.Value`` is a blob: botocore base64-encodes the raw script once, which is
    what EC2 expects (the adapter passes raw bytes). moto decodes the blob and then
    expects base64 text *again* (``InvalidUserData.Malformed``), so on moto's behalf
    only, the script is encoded once more before botocore serializes it."""

    def encode(params: dict[str, Any], **_: Any) -> None:
        value = (params.get("UserData") or {}).get("Value")
        if isinstance(value, bytes):
            params["UserData"]["Value"] = base64.b64encode(value)

    ec2.meta.events.register(
        "before-parameter-build.ec2.ModifyInstanceAttribute", encode, unique_id="moto-user-data"
    )
    return ec2


def user_data_of(ec2: Any, instance_id: str) -> str:
    value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def _answer(sfn: Any, token: str, output: Any = None, error: BaseException | None = None) -> None:
    if error is None:
        sfn.send_task_success(taskToken=token, output=json.dumps(output))
    else:  # what the Lambda service reports for an unhandled exception
        cause = {"errorType": type(error).__name__, "errorMessage": str(error)}
        sfn.send_task_failure(
            taskToken=token, error=type(error).__name__, cause=json.dumps(cause)[:32000]
        )


class TaskPoller:
    """Delivers the state machine's SQS tasks to ``handler`` (the reconcile function)."""

    def __init__(self, url: str, queue_url: str, handler: Callable[[dict, Any], Any]) -> None:
        self.sqs = client(url, "sqs")
        self.sfn = client(url, "stepfunctions")
        self.queue_url = queue_url
        self.handler = handler
        self.errors: list[str] = []
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfn-task-poller", daemon=True)

    def start(self) -> TaskPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
                ).get("Messages", [])
            except Exception:
                self.errors.append(traceback.format_exc())
                time.sleep(0.5)
                continue
            if not messages:
                self._stop.wait(0.1)
                continue
            for message in messages:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
                body = json.loads(message["Body"])
                self.calls += 1
                try:
                    output = self.handler(body["payload"], FakeLambdaContext("billow-reconcile"))
                except Exception as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    _answer(self.sfn, body["token"], error=e)
                else:
                    _answer(self.sfn, body["token"], output)


class ApiGateway:
    """A loopback HTTP server that hands each request to ``handler`` as an API Gateway
    HTTP API (v2) event, one request at a time, like one warm Lambda container."""

    def __init__(self, handler: Callable[[dict, Any], dict]) -> None:
        lock = threading.Lock()

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = http_api_event(
                    self.command, path, query, headers, body, self.client_address[0]
                )
                context = FakeLambdaContext("billow-api", event["requestContext"]["requestId"])
                with lock:
                    response = handler(event, context)
                text = response.get("body") or ""
                payload = (
                    base64.b64decode(text) if response.get("isBase64Encoded") else text.encode()
                )
                self.send_response(response["statusCode"])
                for key, value in (response.get("headers") or {}).items():
                    if key.lower() != "content-length":
                        self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self.http = LoopbackHttpServer(Handler, "api-gateway")
        self.server, self.url = self.http.server, self.http.url

    def start(self) -> ApiGateway:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()


class InstanceRunner:
    """Boots the deployment's EC2 instances by running their user data with ``bash`` (see
    the module docstring)."""

    def __init__(
        self,
        url: str,
        deployment: str,
        workdir: Path,
        kit: InstanceKit,
        grace: float = 5.0,
        imds: ImdsServer | None = None,
        nat: NatForwarder | None = None,
    ) -> None:
        self.imds = imds
        self.nat = nat
        self.ec2 = client(url, "ec2")
        self.logs = client(url, "logs")
        self.deployment = deployment
        self.kit = kit
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grace = grace
        self.instances: dict[str, RunningInstance] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instance-runner", daemon=True)

    def start(self) -> InstanceRunner:
        self._thread.start()
        return self

    def pids(self) -> list[int]:
        return [i.proc.pid for i in self.instances.values()]

    def live_pids(self) -> list[int]:
        """Process groups (one per instance) with a process left."""
        return [i.proc.pid for i in self.instances.values() if i.alive()]

    def log_of(self, instance_id: str) -> str:
        return self.instances[instance_id].log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop polling, then SIGTERM every instance's process group, SIGKILL after grace."""
        self._stop.set()
        self._thread.join(30)
        stop_instances(list(self.instances.values()), self.grace)

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self._poll()
            except Exception:
                self.errors.append(traceback.format_exc())

    def _poll(self) -> None:
        for instance in tagged_instances(self.ec2, **{TAG_DEPLOYMENT: self.deployment}):
            instance_id, state = instance["InstanceId"], instance["State"]["Name"]
            known = self.instances.get(instance_id)
            if any(t["Key"] == TAG_POOL for t in instance.get("Tags") or []):
                continue  # a warm-pool instance: its kit script is not run here (see above)
            if known is None and state in ("pending", "running"):
                self._boot(instance_id)
            elif known is not None and state in ("shutting-down", "terminated"):
                if known.killed_at is None and known.alive():
                    known.killed_at = time.monotonic()
                    known.signal(signal.SIGTERM)
                elif (
                    known.killed_at is not None
                    and known.alive()
                    and time.monotonic() - known.killed_at > self.grace
                ):
                    known.signal(signal.SIGKILL)
        for inst in self.instances.values():
            self._ship_logs(inst)
            if inst.proc.poll() is not None and inst.killed_at is None and not inst.shut_down:
                inst.shut_down = True  # the script's last line: shutdown -h now
                self.ec2.terminate_instances(InstanceIds=[inst.instance_id])

    def _boot(self, instance_id: str) -> None:
        script = user_data_of(self.ec2, instance_id)
        if not script.startswith("#!/bin/bash") or "/v1/agent/kit" not in script:
            raise RuntimeError(f"{instance_id}: user data is not Billow's bootstrap:\n{script}")
        group = re.search(r'"log_group_name": "([^"]+)"', script)
        file_path = re.search(r'"file_path": "([^"]+)"', script)
        inst = boot_script(
            self.kit,
            self.workdir / instance_id,
            instance_id,
            script,
            file_path.group(1) if file_path else AGENT_LOG,
            extra=self._metadata(instance_id, exported_env(script).get("BILLOW_ROLE")),
        )
        inst.log_group = group.group(1) if group else ""
        self.instances[instance_id] = inst

    def _metadata(self, instance_id: str, role: str | None) -> dict[str, str]:
        """With an ``ImdsServer``: the instance's IMDS endpoint and addresses (private
        127.0.0.1; with a ``NatForwarder``, public 127.0.0.2, relayed to fixed scheduler
        and dashboard ports, as EC2's NAT relays a public IP)."""
        if self.imds is None:
            return {}
        self.imds.set(instance_id, "local-ipv4", "127.0.0.1")
        env = {
            "BILLOW_IMDS_ENDPOINT": self.imds.endpoint(instance_id),
            "BILLOW_SPOT_POLL_INTERVAL": "0.5",  # workers watch for spot notices
        }
        if self.nat is not None and role == "scheduler":
            self.imds.set(instance_id, "public-ipv4", self.nat.public_host)
            for variable in ("BILLOW_SCHEDULER_PORT", "BILLOW_DASHBOARD_PORT"):
                for _ in range(20):  # free on both addresses
                    port = free_port()
                    try:
                        self.nat.add(port)
                        break
                    except OSError:
                        continue
                env[variable] = str(port)
        return env

    def _ship_logs(self, inst: RunningInstance) -> None:
        """What the CloudWatch agent of the bootstrap script does: new lines to the stream
        named after the instance."""
        if not inst.log_group or not inst.log_path.exists():
            return
        data = inst.log_path.read_bytes()[inst.shipped :]
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            return
        if inst.shipped == 0:
            with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
                self.logs.create_log_stream(
                    logGroupName=inst.log_group, logStreamName=inst.instance_id
                )
        now = int(time.time() * 1000)
        lines = data[:cut].decode(errors="replace").splitlines()
        events = [{"timestamp": now, "message": line} for line in lines if line]
        if events:
            self.logs.put_log_events(
                logGroupName=inst.log_group, logStreamName=inst.instance_id, logEvents=events
            )
        inst.shipped += cut
