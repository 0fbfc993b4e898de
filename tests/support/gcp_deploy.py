"""A GCP deployment of the control plane on loopback: Google's Firestore and Pub/Sub
emulators, and functions-framework serving ``functions/gcp.py`` (through
``tests/support/gcp_functions.py``) as the Cloud Functions runtime would.

* ``api``: an HTTP function; instances bootstrap and heartbeat to it.
* ``reconcile``: a CloudEvent function the Pub/Sub emulator pushes the reconcile topic
  to (a push subscription to its loopback URL, retry backoff 1-2 s).
* lifecycle events: a pull subscription on the events topic, read by the test.

Every process is started in its own session and stopped by PID (process group).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from tests.support.gcp import new_project
from tests.support.processes import ROOT, free_port, stop_process, wait_until

FUNCTIONS_FRAMEWORK = str(Path(sys.executable).parent / "functions-framework")
SOURCE = ROOT / "tests" / "support" / "gcp_functions.py"


class Function:
    """One functions-framework process serving ``target`` on a fixed loopback port."""

    def __init__(self, target: str, signature: str, env: dict[str, str], log: Path) -> None:
        self.target, self.signature, self.env, self.log = target, signature, env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Function:
        command = [
            FUNCTIONS_FRAMEWORK,
            f"--target={self.target}",
            f"--source={SOURCE}",
            f"--signature-type={self.signature}",
            "--host=127.0.0.1",
            f"--port={self.port}",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.starts += 1

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited:\n{self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.url + "/", timeout=1)
            except httpx.HTTPError:
                return False
            return True

        wait_until(up, 60, f"functions-framework {self.target}", interval=0.2)
        return self

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)


class GcpDeployment:
    """Topics, subscriptions and the two functions of one test deployment."""

    def __init__(self, root: Path, firestore_host: str, pubsub_host: str, **extra: str) -> None:
        from google.cloud import pubsub_v1

        self.root = root
        self.project = new_project()
        self.instance_dir = root / "instances"
        self.crash_dir = root / "crashes"
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.topics = {
            name: self.publisher.topic_path(self.project, name)
            for name in ("reconcile", "events", "commands", "reaper")
        }
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("functions", "sdk", "")),
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "BILLOW_DEPLOYMENT": f"t-{uuid.uuid4().hex[:8]}",
            "BILLOW_FIRESTORE_PREFIX": "t-",
            "BILLOW_RECONCILE_TOPIC": "reconcile",
            "BILLOW_EVENTS_TOPIC": "events",
            "BILLOW_RECONCILE_INTERVAL": "0.5",
            "BILLOW_CLAIM_TIMEOUT": "3",
            "BILLOW_HEARTBEAT_INTERVAL": "1",
            "BILLOW_TEST_PROVIDER": "process",
            "BILLOW_TEST_INSTANCE_DIR": str(self.instance_dir),
            "BILLOW_TEST_SECRET_KEY": Fernet.generate_key().decode(),
            "BILLOW_TEST_CRASH_DIR": str(self.crash_dir),
            **extra,
        }
        self.api = Function("api", "http", self.env, root / "api.log")
        self.env["BILLOW_CONTROL_URL"] = self.api.url
        self.reconcile = Function("reconcile", "cloudevent", self.env, root / "reconcile.log")
        self.events_subscription = self.subscriber.subscription_path(self.project, "events-test")

    def start(self) -> GcpDeployment:
        for topic in self.topics.values():
            self.publisher.create_topic(name=topic)
        self.subscriber.create_subscription(
            request={
                "name": self.subscriber.subscription_path(self.project, "reconcile-push"),
                "topic": self.topics["reconcile"],
                "push_config": {"push_endpoint": self.reconcile.url + "/"},
                "ack_deadline_seconds": 60,
                "retry_policy": {
                    "minimum_backoff": {"seconds": 1},
                    "maximum_backoff": {"seconds": 2},
                },
            }
        )
        self.subscriber.create_subscription(
            request={"name": self.events_subscription, "topic": self.topics["events"]}
        )
        self.api.start()
        self.reconcile.start()
        return self

    def admin_token(self) -> str:
        """A new admin's API token, made by the deployment's own composition (its store is
        the only port this builds), as ``billow admin bootstrap`` would."""
        from billow_control.runtimes.gcp import GcpRuntime

        runtime = GcpRuntime.from_env(self.env)
        _, token = runtime.plane.create_user(f"admin-{uuid.uuid4().hex[:6]}", is_admin=True)
        return token

    def events(self, max_messages: int = 100) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """Pull (and acknowledge) what the events subscription holds now."""
        response = self.subscriber.pull(
            request={"subscription": self.events_subscription, "max_messages": max_messages},
            timeout=10,
        )
        ids = [m.ack_id for m in response.received_messages]
        if ids:
            self.subscriber.acknowledge(
                request={"subscription": self.events_subscription, "ack_ids": ids}
            )
        return [
            (dict(m.message.attributes), json.loads(m.message.data))
            for m in response.received_messages
        ]

    def publish_reconcile(self, message: dict[str, Any]) -> None:
        self.publisher.publish(self.topics["reconcile"], json.dumps(message).encode()).result(30)

    def instances(self, cluster_id: str) -> list[Any]:
        """Every instance the provider ever launched for ``cluster_id``."""
        from billow_control.adapters.clock import SystemClock
        from billow_control.adapters.local.process_provider import LocalProcessProvider

        provider = LocalProcessProvider(
            self.instance_dir, self.env["BILLOW_DEPLOYMENT"], SystemClock()
        )
        return provider.describe(cluster_id)

    def stop(self) -> None:
        self.api.stop()
        self.reconcile.stop()
        self.kill_instances()

    def kill_instances(self) -> None:
        import sqlite3

        db = self.instance_dir / "instances.db"
        if not db.exists():
            return
        with sqlite3.connect(db) as conn:
            pids = [r[0] for r in conn.execute("SELECT pid FROM instances WHERE pid IS NOT NULL")]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def pubsub_data(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()
