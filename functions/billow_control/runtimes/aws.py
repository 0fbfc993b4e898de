"""Composition root of the AWS control plane: DynamoDB, EC2, Step Functions, EventBridge,
KMS, wired into one ``Ports`` bundle. The AWS counterpart of ``runtimes.embedded``.

Everything is configured by environment variables (``serverless.yml`` sets them):

==============================  ==============================================================
variable                        meaning
==============================  ==============================================================
``BILLOW_DEPLOYMENT``           deployment name, the ``billow:deployment`` tag (required)
``BILLOW_CONTROL_URL``          URL of the HTTP API that instances bootstrap from (required)
``BILLOW_TABLE``                prefix of the store's DynamoDB tables, e.g. ``billow-prod-``
                                (required; see ``adapters/aws/dynamodb``)
``BILLOW_IDEMPOTENCY_TABLE``    powertools idempotency table (default ``<prefix>idempotency``;
                                ``off``: the store's Idempotency-Key handling alone)
``BILLOW_STATE_MACHINE_ARN``    the cluster lifecycle state machine (required)
``BILLOW_EVENT_BUS``            name of the deployment's EventBridge bus (required)
``BILLOW_KMS_KEY_ID``           key sealing cluster secrets (required)
``BILLOW_AMI_ID``               image of every cluster instance (default: the latest Amazon
                                Linux 2023 of the cluster's architecture, from SSM)
``BILLOW_INSTANCE_TYPES``       comma-separated types the automatic choice picks from
                                (default: every type of the region)
``BILLOW_PURCHASE``             ``spot_with_fallback`` (default), ``spot`` or ``on-demand``;
                                a cluster's ``spot_policy`` overrides it
``BILLOW_SUBNET_IDS``           comma-separated subnets to use instead of a Billow VPC
``BILLOW_SECURITY_GROUP_ID``    one group for every cluster instead of one per cluster
``BILLOW_VPC_CIDR``             CIDR of the Billow VPC (default ``10.86.0.0/16``)
``BILLOW_MAX_SUBNETS``          availability zones to span (default 3)
``BILLOW_ALLOWED_CIDR``         who may reach schedulers and dashboards of clusters recorded
                                without ``allow_ingress_from`` (older ones; default
                                ``0.0.0.0/0``); new clusters carry their own blocks
``BILLOW_INSTANCE_LOG_GROUP``   CloudWatch Logs group of instance logs
``BILLOW_INSTANCE_PROFILE_ARN`` instance profile of cluster instances
``BILLOW_WARM_POOL_SIZE``       stopped instances kept ready per pool type
                                (``billow.aws.warm-pool.size``; default 0: no pool; see
                                ``adapters/aws/ec2/pool.py`` and docs/warm-pool.md)
``BILLOW_WARM_POOL_TYPES``      comma-separated types of the pool (default: the first of
                                ``BILLOW_INSTANCE_TYPES``)
``BILLOW_ENV_BUCKET``           S3 bucket of environments: wheels of users' local code, the
                                agent wheel and uv (objects ``objects/<sha256>``). Unset: no
                                object store, so package sync of local code is refused
``BILLOW_AGENT_WHEEL``          ``<sha256>/<filename>`` of the billow wheel bare instances
                                bootstrap with, an object of the env bucket
``BILLOW_UV_SHA256``            sha256 of the uv binary per machine, ``x86_64=<sha256>,``
                                ``aarch64=<sha256>`` (a bare sha256: x86_64); objects of the env
                                bucket. ``scripts/upload-instance-kit.sh`` uploads both and
                                prints these two values
``BILLOW_<SETTING>``            any ``ControlSettings`` field, e.g. ``BILLOW_START_TIMEOUT=10m``,
                                ``BILLOW_RECONCILE_INTERVAL=5`` (seconds or a duration),
                                ``BILLOW_TOKENS_LIFETIME=30d``, ``BILLOW_LAUNCH_BATCH=20``,
                                ``BILLOW_QUOTAS_USER_CORES=128``
``BILLOW_ASSUME_ROLE_ARN``      run clusters in the account of this role (``billow setup
                                aws``): EC2, instance logs and SSM through sts:AssumeRole
``BILLOW_EXTERNAL_ID``          its ExternalId (required with the role)
``BILLOW_AWS_ENDPOINT_URL``     one endpoint for every AWS client (tests: moto_server)
``AWS_REGION``                  region (Lambda sets it; ``AWS_DEFAULT_REGION`` otherwise)
==============================  ==============================================================

``get_runtime()`` validates the whole configuration once per process (per Lambda
container) and makes no AWS call. Every port is built on first use (``core.ports.lazy``),
and so is every boto3 client: an API request that reads clusters builds the DynamoDB
client only, never EC2, Step Functions or KMS ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from ..adapters.aws.assume import CUSTOMER_SERVICES, assumed_session
from ..adapters.clock import SystemClock
from ..core.models import ClusterRecord, ReconcileResult
from ..core.ports import EventBus, Ports, lazy
from ..core.service import ControlPlane
from ..core.settings import ControlSettings
from ..core.usage_port import UsageEvents
from .config import ConfigError, first_error, settings_from_env
from .config import csv as _csv
from .config import required as _required

__all__ = ["AwsRuntime", "ConfigError", "control_settings", "describe_error", "step_output"]

log = logging.getLogger(__name__)

# Every reconcile step is a Lambda invocation (and adds to the Express execution's billed
# duration): a bring-up of several minutes polled every 5 s costs about a hundred steps.
# Tests set BILLOW_RECONCILE_INTERVAL=1.
AWS_DEFAULTS = {"reconcile_interval": 5.0, "poll_interval": 1.0}
IDEMPOTENCY_TTL = timedelta(days=1)  # how long an Idempotency-Key names its create
EC2_VARIABLES = {
    "ami_id": "BILLOW_AMI_ID",
    "instance_types": "BILLOW_INSTANCE_TYPES",
    "allowed_cidr": "BILLOW_ALLOWED_CIDR",
    "subnet_ids": "BILLOW_SUBNET_IDS",
    "purchase": "BILLOW_PURCHASE",
    "security_group_id": "BILLOW_SECURITY_GROUP_ID",
    "vpc_cidr": "BILLOW_VPC_CIDR",
    "max_subnets": "BILLOW_MAX_SUBNETS",
    "log_group": "BILLOW_INSTANCE_LOG_GROUP",
    "instance_profile_arn": "BILLOW_INSTANCE_PROFILE_ARN",
    "warm_pool_size": "BILLOW_WARM_POOL_SIZE",
    "warm_pool_types": "BILLOW_WARM_POOL_TYPES",
}
LISTS = {"instance_types", "subnet_ids", "warm_pool_types"}


def control_settings(env: Mapping[str, str]) -> ControlSettings:
    """``ControlSettings`` from ``BILLOW_<FIELD>`` variables over the AWS defaults."""
    return settings_from_env(env, **AWS_DEFAULTS)


def ec2_settings(env: Mapping[str, str]) -> Any:
    """``EC2Settings`` from ``BILLOW_*`` variables; unset ones keep their defaults."""
    from ..adapters.aws.ec2 import EC2Settings

    values: dict[str, Any] = {"allowed_cidr": "0.0.0.0/0"}
    for key, variable in EC2_VARIABLES.items():
        if env.get(variable):
            values[key] = _csv(env[variable]) if key in LISTS else env[variable]
    try:
        return EC2Settings(**values)
    except ValidationError as e:
        raise first_error(e, lambda field: EC2_VARIABLES.get(field, field)) from None


class AwsClients:
    """boto3 clients of one session, each built on first use and then reused."""

    def __init__(
        self, region: str, endpoint: str | None, assume: tuple[str, str, str] | None = None
    ) -> None:
        self.region = region
        self.endpoint = endpoint
        self.assume = assume  # (role ARN, ExternalId, session name): clusters' account
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._assumed: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        return self.get(service)

    def get(self, service: str) -> Any:
        """The client of ``service`` (``"ec2"``, ``"stepfunctions"``...)."""
        with self._lock:
            if service not in self._clients:
                if self._session is None:
                    import boto3

                    self._session = boto3.session.Session(region_name=self.region)
                session = self._session
                if self.assume is not None and service in CUSTOMER_SERVICES:
                    if self._assumed is None:
                        self._assumed = assumed_session(self.region, self.endpoint, *self.assume)
                    session = self._assumed
                self._clients[service] = session.client(
                    service, endpoint_url=self.endpoint, config=self._config(service)
                )
            return self._clients[service]

    def built(self) -> list[str]:
        return sorted(self._clients)

    @staticmethod
    def _config(service: str) -> Any:
        from botocore.config import Config

        # S3: pre-signed URLs are SigV4, so the headers they sign (the checksum) count.
        signing = {"signature_version": "s3v4"} if service == "s3" else {}
        return Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
            **signing,
        )


class MetricsEventBus:
    """An ``EventBus`` that also turns lifecycle events into EMF metrics at the moment the
    core publishes them (``ClustersCreated``, ``StartLatency`` in seconds, ``Failures``),
    after the inner bus. Powertools ``Metrics`` instances share one buffer, flushed by
    the handlers' ``log_metrics``. A metrics failure is logged, never raised."""

    def __init__(self, inner: EventBus) -> None:
        from aws_lambda_powertools import Metrics

        self.inner = inner
        self.metrics = Metrics()

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.inner.publish(kind, cluster, detail)
        try:
            if kind == "requested":
                self.metrics.add_metric(name="ClustersCreated", unit=MetricUnit.Count, value=1)
            elif kind == "ready" and cluster.ready_at is not None:
                seconds = (cluster.ready_at - cluster.created_at).total_seconds()
                self.metrics.add_metric(name="StartLatency", unit=MetricUnit.Seconds, value=seconds)
            elif kind == "failing":
                self.metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        except Exception:
            log.exception("metrics of event %s failed", kind)

    def publish_usage(self, kind: str, detail: dict) -> None:
        if isinstance(self.inner, UsageEvents):
            self.inner.publish_usage(kind, detail)


@dataclass
class AwsRuntime:
    """The one ``Ports`` of a Lambda container and the ``ControlPlane`` over it."""

    env: dict[str, str]
    settings: ControlSettings
    clients: AwsClients
    ports: Ports
    plane: ControlPlane

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AwsRuntime:
        """Validate the configuration in ``env`` (default ``os.environ``) and wire lazy
        ports. Raises ``ConfigError`` naming a missing or invalid variable. Makes no AWS
        call and builds no client."""
        env = dict(os.environ if env is None else env)
        settings = control_settings(env)
        ec2_config = ec2_settings(env)
        prefix = _required(env, "BILLOW_TABLE")
        machine_arn = _required(env, "BILLOW_STATE_MACHINE_ARN")
        bus_name = _required(env, "BILLOW_EVENT_BUS")
        key_id = _required(env, "BILLOW_KMS_KEY_ID")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = env.get("BILLOW_AWS_ENDPOINT_URL") or None
        idempotency_table = env.get("BILLOW_IDEMPOTENCY_TABLE") or f"{prefix}idempotency"
        env_bucket = env.get("BILLOW_ENV_BUCKET", "").strip()
        if not env_bucket and (settings.agent_wheel or settings.uv_sha256):
            raise ConfigError(
                "BILLOW_AGENT_WHEEL and BILLOW_UV_SHA256 name objects of BILLOW_ENV_BUCKET, "
                "which is not set"
            )
        role_arn = env.get("BILLOW_ASSUME_ROLE_ARN", "").strip()
        assume = None
        if role_arn:
            external_id = _required(env, "BILLOW_EXTERNAL_ID")
            assume = (role_arn, external_id, f"billow-{settings.deployment}")
        clients = AwsClients(region, endpoint, assume)

        def store() -> Any:
            from ..adapters.aws.dynamodb import DynamoDBStore

            return DynamoDBStore(
                prefix, region=region, host=endpoint, idempotency_ttl=IDEMPOTENCY_TTL
            )

        def provider() -> Any:
            from ..adapters.aws.ec2 import AmiResolver, EC2Provider

            images = AmiResolver(clients.ssm, ec2_config.ami_id)
            claims, kit = None, None
            if ec2_config.warm_pool_size and idempotency_table.lower() != "off":
                from ..adapters.aws.ec2.pool_user_data import deployment_kit
                from ..adapters.aws.pool_claims import DynamoPoolClaims

                claims = DynamoPoolClaims(clients.dynamodb, idempotency_table)

                def kit() -> Any:
                    store = ports.objects
                    if store is None:
                        return None
                    uv, wheel = settings.uv_sha256, settings.agent_wheel
                    return deployment_kit(uv, wheel, store.download_url)

            return EC2Provider(
                clients.ec2, clients.logs, settings.deployment, ec2_config, images, claims, kit
            )

        def machines() -> Any:
            from ..adapters.aws.ec2 import EC2MachineCatalog

            return EC2MachineCatalog(clients.ec2, ec2_config.instance_types)

        def orchestrator() -> Any:
            from ..adapters.aws.reconcile_leases import LoopLeases
            from ..adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator

            leases = LoopLeases(ports.store.models.loop)  # type: ignore[attr-defined]
            return StepFunctionsOrchestrator(
                clients.stepfunctions, machine_arn, ports.store, leases
            )

        def events() -> EventBus:
            from ..adapters.aws.eventbridge_bus import EventBridgeBus

            return MetricsEventBus(EventBridgeBus(clients.events, bus_name, settings.deployment))

        def secrets() -> Any:
            from ..adapters.aws.kms_box import KmsSecretBox

            return KmsSecretBox(clients.kms, key_id, settings.deployment)

        def idempotency() -> Any:
            from ..adapters.aws.idempotency import PowertoolsIdempotencyCache

            return PowertoolsIdempotencyCache(idempotency_table, clients.dynamodb, IDEMPOTENCY_TTL)

        def objects() -> Any:
            from ..adapters.aws.s3_object_store import S3ObjectStore

            return S3ObjectStore(clients.s3, env_bucket)

        ports = Ports(
            store=lazy(store),
            provider=lazy(provider),
            orchestrator=lazy(orchestrator),
            secrets=lazy(secrets),
            events=lazy(events),
            idempotency=None if idempotency_table.lower() == "off" else lazy(idempotency),
            objects=lazy(objects) if env_bucket else None,
            machines=lazy(machines),
            clock=SystemClock(),
            settings=settings,
        )
        return cls(env, settings, clients, ports, ControlPlane(ports))

    def step(
        self, cluster_id: str, loop: str | None, run: Callable[[], ReconcileResult]
    ) -> ReconcileResult:
        """One step of the state machine's loop ``loop`` under its lease
        (``StepFunctionsOrchestrator.step``); without a loop (an execution started
        before loops had leases), ``run`` alone."""
        from ..adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator

        orchestrator = self.ports.orchestrator
        if loop is None or not isinstance(orchestrator, StepFunctionsOrchestrator):
            return run()
        return orchestrator.step(cluster_id, loop, run)


def describe_error(error: Any) -> str:
    """A readable message from a Catch's ``$.error`` (``{"Error", "Cause"}``; a Lambda
    error's Cause is JSON with ``errorType`` and ``errorMessage``)."""
    if not isinstance(error, dict):
        return str(error or "unknown error")[:2000]
    name, cause = str(error.get("Error") or "Error"), error.get("Cause")
    try:
        parsed = json.loads(cause) if isinstance(cause, str) else cause
    except ValueError:
        parsed = cause
    if isinstance(parsed, dict) and "errorMessage" in parsed:
        name, cause = str(parsed.get("errorType") or name), parsed["errorMessage"]
    return f"{name}: {cause}"[:2000] if cause else name


def step_output(result: ReconcileResult) -> dict[str, Any]:
    """What the state machine reads after a reconcile step. Its Wait takes whole
    seconds: round up, so a wait is never skipped."""
    return {
        "done": result.done,
        "wait": int(math.ceil(result.wait)),
        "status": result.status.value,
    }


_runtime: AwsRuntime | None = None
_lock = threading.Lock()


def get_runtime() -> AwsRuntime:
    """The process's runtime, built from ``os.environ`` on first call."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = AwsRuntime.from_env()
    return _runtime


def reset_runtime() -> None:
    """Forget the cached runtime, so the next ``get_runtime`` reads the environment again
    (tests that change the environment)."""
    global _runtime
    with _lock:
        _runtime = None
