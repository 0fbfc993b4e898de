"""A control plane whose provider is Compute Engine (on the loopback fakes of
``tests/support/gcp_fakes``), run in this process: the core ``Lifecycle`` driven by the
local ``LocalOrchestrator`` threads over the SQLite store, served over HTTP (uvicorn in a
thread) with the embedded object store holding the instance kit, so instances booted from
their startup script fetch uv and the billow wheel through signed URLs.

The GCP runtime's own store and orchestrator (Firestore, Pub/Sub) are another part of
issue #12; this harness shows the Compute Engine half with the core as it is.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from billow_control.adapters.clock import SystemClock
from billow_control.adapters.gcp.compute import GceProvider, compute_provider_from_env
from billow_control.adapters.local.event_log import JsonLinesEventBus
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.object_store import LocalObjectStore, ObjectStoreApp
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.adapters.local.thread_orchestrator import LocalOrchestrator
from billow_control.api.app import build_app
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.runtimes.http_proxy import ProxyASGIApp
from tests.support.gcp_fakes.compute import ComputeFake
from tests.support.gcp_fakes.logging import LoggingFake
from tests.support.instances import InstanceKit
from tests.support.processes import wait_until

PROJECT, ZONE = "billow-e2e", "us-central1-a"


@dataclass
class GcePlane:
    url: str
    deployment: str
    plane: ControlPlane
    provider: GceProvider
    compute: ComputeFake
    logging: LoggingFake
    token: str


@contextlib.contextmanager
def gce_control_plane(root: Path, kit: InstanceKit, deployment: str) -> Iterator[GcePlane]:
    """Start the fakes, the control plane and its HTTP server; stop all of them, and
    every instance's processes, at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    logging_fake = LoggingFake().start()
    compute = ComputeFake(
        PROJECT, ZONE, kit=kit, workdir=root / "instances", logging_url=logging_fake.url
    ).start()
    orchestrator = LocalOrchestrator()
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        settings = ControlSettings.from_values(
            kit.settings_values(),
            deployment=deployment,
            control_url=url,
            reconcile_interval=0.5,
            heartbeat_interval=1.0,
        )
        provider = compute_provider_from_env(
            settings,
            {
                "BILLOW_GCP_PROJECT": PROJECT,
                "BILLOW_GCP_ZONE": ZONE,
                "BILLOW_GCP_COMPUTE_ENDPOINT": compute.url,
                "BILLOW_GCP_LOGGING_ENDPOINT": logging_fake.url,
                "BILLOW_ALLOWED_CIDR": "127.0.0.1/32",
            },
        )
        assert isinstance(provider, GceProvider)
        objects = LocalObjectStore(root / "objects", url, root / "objects.key")
        for sha, path in kit.objects().items():
            shutil.copyfile(path, root / "objects" / sha)
        ports = Ports(
            store=SqliteStore(root / "billow.db"),
            provider=provider,
            orchestrator=orchestrator,
            secrets=FernetSecretBox.from_key_file(root / "secret.key"),
            events=JsonLinesEventBus(root / "events.jsonl"),
            objects=objects,
            clock=SystemClock(),
            settings=settings,
        )
        plane = ControlPlane(ports)
        orchestrator.reconcile = plane.lifecycle.reconcile
        orchestrator.start()
        _, token = plane.create_user("gce-admin", is_admin=True)
        app = ObjectStoreApp(objects, ProxyASGIApp(build_app(lambda: plane)))
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_until(lambda: server is not None and server.started, 30, "the control plane")
        yield GcePlane(url, deployment, plane, provider, compute, logging_fake, token)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(15)
        orchestrator.stop()
        compute.stop()
        logging_fake.stop()
        sock.close()
