"""Composition root of the GCP control plane: Firestore, Compute Engine, Pub/Sub, Cloud
KMS, wired into one ``Ports`` bundle. The GCP counterpart of ``runtimes.aws``.

Everything is configured by environment variables (``infra/gcp/deploy.sh`` sets them):

==============================  ==============================================================
variable                        meaning
==============================  ==============================================================
``BILLOW_DEPLOYMENT``           deployment name, the ``billow:deployment`` label (required)
``BILLOW_CONTROL_URL``          URL of the HTTP function that instances bootstrap from
                                (required)
``GOOGLE_CLOUD_PROJECT``        the project of every resource (required; Cloud Functions sets
                                it), ``BILLOW_GCP_PROJECT`` overrides it
``BILLOW_FIRESTORE_PREFIX``     prefix of the store's collections (default ``<deployment>-``)
``BILLOW_FIRESTORE_DATABASE``   Firestore database id (default ``(default)``)
``BILLOW_RECONCILE_TOPIC``      topic of the reconcile loop (required)
``BILLOW_EVENTS_TOPIC``         topic of lifecycle events (required)
``BILLOW_LOOP_TIMEOUT``         bound on a bring-up or teardown loop, seconds (default the
                                start timeout plus 120)
``BILLOW_CLAIM_TIMEOUT``        how long a step's handler may run before a redelivery takes
                                over, seconds (default 120: above the reconcile function's
                                60 s timeout)
``BILLOW_<SETTING>``            any ``ControlSettings`` field, e.g. ``BILLOW_START_TIMEOUT=10m``
==============================  ==============================================================

The Compute Engine provider, the Cloud KMS box and the Cloud Storage object store read
their own variables (``adapters/gcp/compute``, ``adapters/gcp/kms_box``,
``adapters/gcp/gcs_object_store``: ``BILLOW_GCS_BUCKET`` holds the instance kit and
users' wheels). Without ``BILLOW_GCS_BUCKET`` package sync of local code is refused with
a clear error and bare instances get no kit, as on AWS without a bucket.

``get_runtime()`` validates the configuration once per process (per function instance)
and makes no Google call; every port and client is built on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..adapters.clock import SystemClock
from ..core.ports import Ports, lazy
from ..core.service import ControlPlane
from ..core.settings import ControlSettings
from .config import ConfigError, required, settings_from_env

GCP_DEFAULTS = {"reconcile_interval": 5.0, "poll_interval": 1.0}
PORTS = ("store", "provider", "orchestrator", "secrets", "events", "objects")


def topic_path(project: str, topic: str) -> str:
    """``projects/<project>/topics/<topic>`` from a name or a full path."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {raw!r}")
    return value


class GcpClients:
    """Google clients of one process, each built on first use and then reused."""

    def __init__(self, project: str, database: str) -> None:
        self.project = project
        self.database = database
        self._lock = threading.Lock()
        self._firestore: Any = None
        self._publisher: Any = None

    @property
    def firestore(self) -> Any:
        with self._lock:
            if self._firestore is None:
                from google.cloud import firestore

                self._firestore = firestore.Client(project=self.project, database=self.database)
            return self._firestore

    @property
    def publisher(self) -> Any:
        with self._lock:
            if self._publisher is None:
                from google.cloud.pubsub_v1 import PublisherClient

                self._publisher = PublisherClient()
            return self._publisher

    def built(self) -> list[str]:
        return [n for n in ("firestore", "publisher") if getattr(self, "_" + n) is not None]


@dataclass
class GcpRuntime:
    """The wired ports and control plane of one GCP process."""

    env: dict[str, str]
    settings: ControlSettings
    clients: GcpClients
    ports: Ports
    plane: ControlPlane

    @property
    def loop(self) -> Any:
        """The ``PubSubOrchestrator`` (``handle`` runs one reconcile delivery)."""
        return self.ports.orchestrator

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Callable[[ControlSettings], Any]] | None = None,
    ) -> GcpRuntime:
        """Validate the configuration in ``env`` (default ``os.environ``) and wire lazy
        ports. Raises ``ConfigError`` naming a missing or invalid variable. Makes no
        Google call and builds no client.

        ``overrides`` replaces the factory of a port (``store``, ``provider``,
        ``orchestrator``, ``secrets``, ``events``, ``objects``) with one taking the
        settings: a seam for a deployment's own adapters.
        """
        env = dict(os.environ if env is None else env)
        settings = settings_from_env(env, **GCP_DEFAULTS)
        project = env.get("BILLOW_GCP_PROJECT") or required(env, "GOOGLE_CLOUD_PROJECT")
        prefix = env.get("BILLOW_FIRESTORE_PREFIX") or f"{settings.deployment}-"
        database = env.get("BILLOW_FIRESTORE_DATABASE") or "(default)"
        reconcile_topic = topic_path(project, required(env, "BILLOW_RECONCILE_TOPIC"))
        events_topic = topic_path(project, required(env, "BILLOW_EVENTS_TOPIC"))
        loop_timeout = _seconds(env, "BILLOW_LOOP_TIMEOUT", settings.start_timeout + 120)
        claim_timeout = _seconds(env, "BILLOW_CLAIM_TIMEOUT", 120.0)
        unknown = set(overrides or {}) - set(PORTS)
        if unknown:
            raise ConfigError(f"unknown ports to override: {sorted(unknown)}; known: {PORTS}")
        clients = GcpClients(project, database)

        def store() -> Any:
            from ..adapters.gcp.firestore import FirestoreStore

            return FirestoreStore(project, prefix, client=clients.firestore)

        def provider() -> Any:
            from ..adapters.gcp.compute import compute_provider_from_env

            return compute_provider_from_env(settings, env)

        def orchestrator() -> Any:
            from ..adapters.gcp.pubsub_orchestrator import PubSubOrchestrator

            return PubSubOrchestrator(
                clients.firestore,
                prefix,
                clients.publisher,
                reconcile_topic,
                ports.store,
                loop_timeout=loop_timeout,
                claim_timeout=claim_timeout,
            )

        def secrets() -> Any:
            from ..adapters.gcp.kms_box import kms_box_from_env

            return kms_box_from_env(env)

        def events() -> Any:
            from ..adapters.gcp.pubsub_bus import PubSubBus

            return PubSubBus(clients.publisher, events_topic, settings.deployment)

        def objects() -> Any:
            from ..adapters.gcp.gcs_object_store import gcs_object_store_from_env

            return gcs_object_store_from_env(project, env)

        factories: dict[str, Callable[[], Any]] = {
            "objects": objects,
            "store": store,
            "provider": provider,
            "orchestrator": orchestrator,
            "secrets": secrets,
            "events": events,
        }
        for name, override in (overrides or {}).items():
            factories[name] = _bound(override, settings)
        has_objects = bool(env.get("BILLOW_GCS_BUCKET", "").strip()) or "objects" in (
            overrides or {}
        )
        ports = Ports(
            store=lazy(factories["store"]),
            provider=lazy(factories["provider"]),
            orchestrator=lazy(factories["orchestrator"]),
            secrets=lazy(factories["secrets"]),
            events=lazy(factories["events"]),
            objects=lazy(factories["objects"]) if has_objects else None,
            clock=SystemClock(),
            settings=settings,
        )
        return cls(env, settings, clients, ports, ControlPlane(ports))


def _bound(build: Callable[[ControlSettings], Any], settings: ControlSettings) -> Callable[[], Any]:
    return lambda: build(settings)


def resolve_http(
    resolver: Any,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    source_ip: str,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP request through the powertools route table, as the embedded server and
    API Gateway present it: ``(status, headers, body)``. The resolver keeps the current
    event in class state, so resolutions in one instance run one at a time (as in the
    embedded server; set the function's concurrency to 1 to avoid the queueing)."""
    import base64

    from .http_proxy import LambdaContextStub, http_api_event

    lowered = {k.lower(): v for k, v in headers.items()}
    event = http_api_event(method, path, query, lowered, body, source_ip)
    context: Any = LambdaContextStub(event["requestContext"]["requestId"])
    with _resolve_lock:
        response = resolver.resolve(event, context)
    text = response.get("body") or ""
    payload = base64.b64decode(text) if response.get("isBase64Encoded") else text.encode()
    out = [(k, str(v)) for k, v in response.get("headers", {}).items()]
    out += [("set-cookie", c) for c in response.get("cookies", [])]
    return int(response["statusCode"]), out, payload


def project_of_source(source: str | None) -> str | None:
    """The project of a Pub/Sub CloudEvent ``source``
    (``//pubsub.googleapis.com/projects/<p>/topics/<t>``); ``None`` when it names none
    (the emulator's pushes)."""
    parts = (source or "").split("/")
    if "projects" in parts:
        i = parts.index("projects")
        if i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


_runtime: GcpRuntime | None = None
_lock = threading.Lock()
_resolve_lock = threading.Lock()


def get_runtime() -> GcpRuntime:
    """The process's runtime, built from ``os.environ`` on first call."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = GcpRuntime.from_env()
    return _runtime


def set_runtime(runtime: GcpRuntime | None) -> None:
    """Use ``runtime`` for this process (``None``: build from the environment again)."""
    global _runtime
    with _lock:
        _runtime = runtime
