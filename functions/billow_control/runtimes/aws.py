"""Composition root of the AWS control plane: DynamoDB, EC2, Step Functions, EventBridge,
KMS. The AWS counterpart of ``billow_control.runtimes.embedded``.

Everything is configured by environment variables (``serverless.yml`` sets them):

==============================  ==============================================================
variable                        meaning
==============================  ==============================================================
``BILLOW_DEPLOYMENT``           deployment name, the ``billow:deployment`` tag (required)
``BILLOW_CONTROL_URL``          URL of the HTTP API that instances bootstrap from (required)
``BILLOW_TABLE``                prefix of the store's DynamoDB tables, e.g. ``billow-prod-``
                                (required; see ``adapters/dynamodb_store.py``)
``BILLOW_IDEMPOTENCY_TABLE``    powertools idempotency table (default ``<prefix>idempotency``;
                                ``off``: the store's Idempotency-Key handling alone)
``BILLOW_STATE_MACHINE_ARN``    the cluster lifecycle state machine (required)
``BILLOW_EVENT_BUS``            name of the deployment's EventBridge bus (required)
``BILLOW_KMS_KEY_ID``           key sealing cluster secrets (required)
``BILLOW_AMI_ID``               image of cluster instances (required)
``BILLOW_INSTANCE_TYPES``       comma-separated, in order of preference (required)
``BILLOW_PURCHASE``             ``spot_with_fallback`` (default), ``spot`` or ``on-demand``
``BILLOW_SUBNET_IDS``           comma-separated subnets to use instead of a Billow VPC
``BILLOW_SECURITY_GROUP_ID``    one group for every cluster instead of one per cluster
``BILLOW_VPC_CIDR``             CIDR of the Billow VPC (default ``10.86.0.0/16``)
``BILLOW_MAX_SUBNETS``          availability zones to span (default 3)
``BILLOW_ALLOWED_CIDR``         who may reach schedulers and dashboards (default
                                ``0.0.0.0/0``: mutual TLS is the access control there)
``BILLOW_INSTANCE_LOG_GROUP``   CloudWatch Logs group of instance logs
``BILLOW_INSTANCE_PROFILE_ARN`` instance profile of cluster instances
``BILLOW_PYTHON_PACKAGE``       what instances ``pip install`` (default ``billow[server]==…``)
``BILLOW_<SETTING>``            any ``ControlSettings`` field, e.g. ``BILLOW_START_TIMEOUT=10m``,
                                ``BILLOW_RECONCILE_INTERVAL=5`` (seconds or a duration)
``BILLOW_AWS_ENDPOINT_URL``     one endpoint for every AWS client (tests: moto_server)
``AWS_REGION``                  region (Lambda sets it; ``AWS_DEFAULT_REGION`` otherwise)
==============================  ==============================================================

``get_runtime()`` builds the runtime once per process (per Lambda container) on first
use, so importing the handlers stays cheap and warm invocations reuse every client.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..adapters.aws.dynamodb_store import DynamoDBStore
from ..adapters.aws.ec2_provider import EC2Provider, EC2Settings
from ..adapters.aws.eventbridge_bus import EventBridgeBus
from ..adapters.aws.kms_box import KmsSecretBox
from ..adapters.aws.sfn_orchestrator import StepFunctionsOrchestrator
from ..adapters.clock import SystemClock
from ..core.models import ClusterRecord, parse_duration
from ..core.ports import EventBus
from ..core.reaper import Reaper
from ..core.reconcile import Reconciler
from ..core.service import ControlPlane
from ..core.settings import ControlSettings

log = logging.getLogger(__name__)

Observer = Callable[[str, ClusterRecord, dict | None], None]

# Step Functions bills every state transition: a bring-up of several minutes polled
# every 5 s costs a few hundred transitions. Tests set BILLOW_RECONCILE_INTERVAL=1.
AWS_DEFAULTS = {"reconcile_interval": 5.0}


class ConfigError(ValueError):
    """A required environment variable is missing or invalid (names it)."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required")
    return value


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def control_settings(env: Mapping[str, str]) -> ControlSettings:
    """``ControlSettings`` from ``BILLOW_<FIELD>`` variables over the AWS defaults."""
    values: dict[str, Any] = dict(AWS_DEFAULTS)
    for name, info in ControlSettings.model_fields.items():
        raw = env.get(f"BILLOW_{name.upper()}")
        if raw is None or raw == "":
            continue
        try:
            if info.annotation is float:
                values[name] = parse_duration(raw)
            elif info.annotation is int:
                values[name] = int(raw)
            else:
                values[name] = raw
        except ValueError as e:
            raise ConfigError(f"BILLOW_{name.upper()}: {e}") from None
    values["deployment"] = _required(env, "BILLOW_DEPLOYMENT")
    values["control_url"] = _required(env, "BILLOW_CONTROL_URL").rstrip("/")
    return ControlSettings(**values)


def ec2_settings(env: Mapping[str, str]) -> EC2Settings:
    """``EC2Settings`` from ``BILLOW_*`` variables; unset ones keep their defaults."""
    values: dict[str, Any] = {
        "ami_id": _required(env, "BILLOW_AMI_ID"),
        "instance_types": _csv(_required(env, "BILLOW_INSTANCE_TYPES")),
        "allowed_cidr": env.get("BILLOW_ALLOWED_CIDR") or "0.0.0.0/0",
        "subnet_ids": _csv(env.get("BILLOW_SUBNET_IDS")),
    }
    optional = {
        "purchase": "BILLOW_PURCHASE",
        "security_group_id": "BILLOW_SECURITY_GROUP_ID",
        "vpc_cidr": "BILLOW_VPC_CIDR",
        "max_subnets": "BILLOW_MAX_SUBNETS",
        "log_group": "BILLOW_INSTANCE_LOG_GROUP",
        "instance_profile_arn": "BILLOW_INSTANCE_PROFILE_ARN",
        "python_package_spec": "BILLOW_PYTHON_PACKAGE",
    }
    for key, variable in optional.items():
        if env.get(variable):
            values[key] = env[variable]
    try:
        return EC2Settings(**values)
    except ValueError as e:
        raise ConfigError(f"EC2 settings from BILLOW_* variables: {e}") from None


class ObservedEventBus:
    """An ``EventBus`` that also hands every event to ``observer`` (metrics), after the
    inner bus; an observer failure is logged, never raised."""

    def __init__(self, inner: EventBus, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        self.inner.publish(kind, cluster, detail)
        try:
            self.observer(kind, cluster, detail)
        except Exception:
            log.exception("event observer failed on %s", kind)


@dataclass
class AwsRuntime:
    settings: ControlSettings
    ec2_settings: EC2Settings
    clients: dict[str, Any]
    store: DynamoDBStore
    provider: EC2Provider
    orchestrator: StepFunctionsOrchestrator
    events: EventBus
    box: KmsSecretBox
    clock: SystemClock
    reconciler: Reconciler
    plane: ControlPlane
    reaper: Reaper
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, observer: Observer | None = None
    ) -> AwsRuntime:
        """Build every adapter from ``env`` (default ``os.environ``).

        Raises ``ConfigError`` naming a missing or invalid variable. Makes no AWS call.
        """
        import boto3
        from botocore.config import Config

        env = dict(os.environ if env is None else env)
        settings = control_settings(env)
        ec2_config = ec2_settings(env)
        prefix = _required(env, "BILLOW_TABLE")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = env.get("BILLOW_AWS_ENDPOINT_URL") or None
        session = boto3.session.Session(region_name=region)
        config = Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
        )
        clients = {
            name: session.client(name, endpoint_url=endpoint, config=config)
            for name in ("ec2", "logs", "stepfunctions", "events", "kms", "dynamodb")
        }
        clock = SystemClock()
        store = DynamoDBStore(prefix, region=region, host=endpoint)
        provider = EC2Provider(clients["ec2"], clients["logs"], settings.deployment, ec2_config)
        orchestrator = StepFunctionsOrchestrator(
            clients["stepfunctions"], _required(env, "BILLOW_STATE_MACHINE_ARN"), store
        )
        events: EventBus = EventBridgeBus(
            clients["events"], _required(env, "BILLOW_EVENT_BUS"), settings.deployment
        )
        if observer is not None:
            events = ObservedEventBus(events, observer)
        box = KmsSecretBox(clients["kms"], _required(env, "BILLOW_KMS_KEY_ID"), settings.deployment)
        reconciler = Reconciler(store, provider, clock, events, settings)
        ports = (store, provider, orchestrator, box, clock, events, settings)
        idempotency_table = env.get("BILLOW_IDEMPOTENCY_TABLE") or f"{prefix}idempotency"
        plane: ControlPlane
        if idempotency_table.lower() == "off":
            plane = ControlPlane(*ports)
        else:
            from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

            from ..adapters.aws.idempotency import IdempotentControlPlane

            plane = IdempotentControlPlane(
                *ports,
                persistence=DynamoDBPersistenceLayer(
                    table_name=idempotency_table, boto3_client=clients["dynamodb"]
                ),
                expires_after_seconds=int(store.idempotency_ttl.total_seconds()),
            )
        reaper = Reaper(plane, reconciler)
        return cls(
            settings=settings,
            ec2_settings=ec2_config,
            clients=clients,
            store=store,
            provider=provider,
            orchestrator=orchestrator,
            events=events,
            box=box,
            clock=clock,
            reconciler=reconciler,
            plane=plane,
            reaper=reaper,
            env=env,
        )


_runtime: AwsRuntime | None = None
_lock = threading.Lock()


def get_runtime(observer: Observer | None = None) -> AwsRuntime:
    """The process's runtime, built from ``os.environ`` on first call (``observer`` is
    used only by the call that builds it)."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = AwsRuntime.from_env(observer=observer)
    return _runtime


def reset_runtime() -> None:
    """Forget the cached runtime, so the next ``get_runtime`` reads the environment again
    (tests that change the environment)."""
    global _runtime
    with _lock:
        _runtime = None
