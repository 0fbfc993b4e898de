"""A GCP deployment of the control plane on loopback: Google's Firestore and Pub/Sub
emulators, functions-framework serving ``functions/gcp.py`` (through
``tests/support/gcp_functions.py``) as the Cloud Functions runtime would, and the
loopback fakes of ``tests/support/gcp_fakes`` for the services without an emulator.

* ``api``: an HTTP function; instances bootstrap and heartbeat to it.
* ``reconcile``: a CloudEvent function the Pub/Sub emulator pushes the reconcile topic
  to (a push subscription to its loopback URL, retry backoff 1-2 s).
* lifecycle events: a pull subscription on the events topic, read by the test.
* Compute Engine: the fake boots each instance's real startup script on a bare python3
  (``InstanceKit``) and plays the Ops Agent towards the Cloud Logging fake.
* Cloud KMS: the fake holds the deployment's key; cluster secrets are sealed with it.
* Cloud Storage: the fake bucket holds the instance kit (uv and the billow wheel, as an
  admin uploads them); instances fetch it through URLs signed with a service-account
  key made here, which the fake verifies.

Every process is started in its own session and stopped by PID (process group).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.gcp import new_project
from tests.support.gcp_fakes.compute import ComputeFake
from tests.support.gcp_fakes.gcs import GcsFake, service_account_key
from tests.support.gcp_fakes.kms import KmsFake
from tests.support.gcp_fakes.logging import LoggingFake
from tests.support.instances import InstanceKit
from tests.support.processes import ROOT, free_port, stop_process, wait_until

ZONE = "us-central1-a"

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
    """Topics, subscriptions, fakes and the two functions of one test deployment.
    ``reconcile_env`` is added to the reconcile function's environment only (crash
    points)."""

    def __init__(
        self,
        root: Path,
        firestore_host: str,
        pubsub_host: str,
        kit: InstanceKit,
        reconcile_env: dict[str, str] | None = None,
    ) -> None:
        from google.cloud import pubsub_v1

        self.root = root
        self.project = new_project()
        self.kit = kit
        self.crash_dir = root / "crashes"
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        self.logging = LoggingFake()
        self.compute = ComputeFake(
            self.project, ZONE, kit=kit, workdir=root / "instances", logging_url=self.logging.url
        )
        self.kms = KmsFake()
        self.kms_key = self.kms.create_key(
            f"projects/{self.project}/locations/global/keyRings/billow/cryptoKeys/secrets"
        )
        account = f"billow-control@{self.project}.iam.gserviceaccount.com"
        key_file = root / "signing-key.json"
        self.gcs = GcsFake(f"{self.project}-env", {account: service_account_key(key_file, account)})
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
            "BILLOW_GCP_PROJECT": self.project,
            "BILLOW_GCP_ZONE": ZONE,
            "BILLOW_GCP_COMPUTE_ENDPOINT": self.compute.url,
            "BILLOW_GCP_LOGGING_ENDPOINT": self.logging.url,
            "BILLOW_ALLOWED_CIDR": "127.0.0.1/32",
            "BILLOW_GCP_KMS_KEY": self.kms_key,
            "BILLOW_GCP_KMS_ENDPOINT": self.kms.url,
            "BILLOW_GCS_BUCKET": self.gcs.bucket,
            "BILLOW_GCS_ENDPOINT": self.gcs.url,
            "BILLOW_GCS_SIGNING_KEY_FILE": str(key_file),
            "BILLOW_TEST_CRASH_DIR": str(self.crash_dir),
            **kit.settings_env(),
        }
        self.api = Function("api", "http", self.env, root / "api.log")
        self.env["BILLOW_CONTROL_URL"] = self.api.url
        self.reconcile = Function(
            "reconcile", "cloudevent", {**self.env, **(reconcile_env or {})}, root / "reconcile.log"
        )
        self.events_subscription = self.subscriber.subscription_path(self.project, "events-test")

    def start(self) -> GcpDeployment:
        self.logging.start()
        self.compute.start()
        self.kms.start()
        self.gcs.start()
        for sha, path in self.kit.objects().items():  # gcloud storage cp, as the README says
            self.gcs.put(f"objects/{sha}", path.read_bytes(), {"billow-sha256": sha})
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
        """The first admin's API token, made as the README's deployment steps make it:
        ``GcpRuntime.from_env(...).plane.bootstrap_admin()`` with the functions' variables."""
        from billow_control.runtimes.gcp import GcpRuntime

        token = GcpRuntime.from_env(self.env).plane.bootstrap_admin()
        assert token is not None, "this deployment has users already"
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

    def instances(self, cluster_id: str) -> list[str]:
        """Names (``scheduler``, ``worker-0``, ...) of every instance Compute Engine ever
        booted for ``cluster_id``, sorted."""
        prefix = f"billow-{cluster_id}-"
        return sorted(n[len(prefix) :] for n in self.compute.booted if n.startswith(prefix))

    def leftovers(self) -> dict[str, list[str]]:
        """This deployment's instances, and every instance template and firewall rule but
        the deployment's own, that Compute Engine still holds."""
        deployment = self.env["BILLOW_DEPLOYMENT"]
        return {
            "instances": sorted(
                name
                for name, i in self.compute.instances.items()
                if i.get("labels", {}).get("billow-deployment") == deployment
            ),
            "templates": sorted(self.compute.templates),
            "firewalls": sorted(set(self.compute.firewalls) - {f"billow-{deployment}"}),
        }

    def firestore_documents(self) -> list[dict[str, Any]]:
        """Every document this deployment's store holds (what Firestore keeps at rest)."""
        from google.cloud import firestore

        client = firestore.Client(project=self.project)
        return [d.to_dict() or {} for c in client.collections() for d in c.stream()]

    def stop(self) -> None:
        self.api.stop()
        self.reconcile.stop()
        self.compute.stop()  # and every instance's processes, by PID
        self.logging.stop()
        self.kms.stop()
        self.gcs.stop()

    def fake_errors(self) -> list[str]:
        servers = (self.compute.server, self.logging.server, self.kms.server)
        return [*self.compute.errors, *(e for s in servers for e in s.errors)]


def pubsub_data(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()
