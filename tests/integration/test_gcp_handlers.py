"""The Pub/Sub functions of ``functions/gcp.py`` called in-process with CloudEvents as
functions-framework builds them, on the Firestore and Pub/Sub emulators: ``commands``
carries out a ``billow.command`` (the model EventBridge uses) and refuses a foreign one,
malformed messages are acknowledged without effect, and ``reaper`` resubmits a cluster
whose loop was lost. The runtime is composed as deployed: Compute Engine, Cloud Logging
and Cloud KMS are the loopback fakes (instances are recorded, never booted)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions.gcp as gcp_functions
import pytest
from cloudevents.http import CloudEvent

from billow_control.core.models import ClusterRequest, ClusterTarget
from billow_control.runtimes import gcp
from tests.support.gcp import clear_firestore, new_project
from tests.support.gcp_fakes.compute import ComputeFake
from tests.support.gcp_fakes.kms import KmsFake
from tests.support.gcp_fakes.logging import LoggingFake

pytestmark = pytest.mark.integration


@pytest.fixture
def runtime(firestore_host: str, pubsub_host: str, tmp_path: Path) -> Iterator[gcp.GcpRuntime]:
    from google.cloud import pubsub_v1

    project = new_project()
    compute = ComputeFake(project, "us-central1-a").start()
    logging_fake, kms = LoggingFake().start(), KmsFake().start()
    key = kms.create_key(f"projects/{project}/locations/global/keyRings/b/cryptoKeys/s")
    publisher = pubsub_v1.PublisherClient()
    for topic in ("reconcile", "events"):
        publisher.create_topic(name=publisher.topic_path(project, topic))
    env = {
        "BILLOW_DEPLOYMENT": "t-handlers",
        "BILLOW_CONTROL_URL": "http://127.0.0.1:9",
        "GOOGLE_CLOUD_PROJECT": project,
        "BILLOW_RECONCILE_TOPIC": "reconcile",
        "BILLOW_EVENTS_TOPIC": "events",
        "BILLOW_GCP_PROJECT": project,
        "BILLOW_GCP_ZONE": "us-central1-a",
        "BILLOW_GCP_COMPUTE_ENDPOINT": compute.url,
        "BILLOW_GCP_LOGGING_ENDPOINT": logging_fake.url,
        "BILLOW_GCP_KMS_KEY": key,
        "BILLOW_GCP_KMS_ENDPOINT": kms.url,
    }
    built = gcp.GcpRuntime.from_env(env)
    gcp.set_runtime(built)
    try:
        yield built
    finally:
        gcp.set_runtime(None)
        clear_firestore(firestore_host, project)
        for fake in (compute, logging_fake, kms):
            fake.stop()
    assert "encrypt" in kms.calls  # the cluster's secrets were sealed by KMS
    assert not compute.server.errors and not kms.server.errors


def event(data: Any, project: str | None) -> CloudEvent:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    source = f"//pubsub.googleapis.com/projects/{project}/topics/commands" if project else ""
    return CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": source or "x"},
        {"message": {"data": base64.b64encode(raw).decode(), "messageId": "m-1"}},
    )


def a_cluster(runtime: gcp.GcpRuntime) -> tuple[str, str]:
    user, _ = runtime.plane.create_user("cmd-user")
    cluster, _ = runtime.plane.create_cluster(user, ClusterRequest(n_workers=1), None)
    return user.id, str(cluster["id"])


def command(user_id: str, cluster_id: str) -> dict[str, Any]:
    detail = {"action": "stop", "cluster_id": cluster_id, "user_id": user_id, "reason": "nightly"}
    return {"source": "ops", "detail-type": "billow.command", "detail": detail}


def test_a_command_stops_the_cluster_as_the_named_user(runtime: gcp.GcpRuntime) -> None:
    user_id, cluster_id = a_cluster(runtime)
    gcp_functions.commands(event(command(user_id, cluster_id), runtime.clients.project))
    record = runtime.ports.store.get_cluster(cluster_id)
    assert record is not None
    assert record.target == ClusterTarget.stopped and record.stop_reason == "nightly"


def test_foreign_and_malformed_commands_change_nothing(runtime: gcp.GcpRuntime) -> None:
    user_id, cluster_id = a_cluster(runtime)
    gcp_functions.commands(event(command(user_id, cluster_id), "someone-elses-project"))
    gcp_functions.commands(event(b"not json", runtime.clients.project))
    bad = command(user_id, cluster_id)
    bad["detail"]["action"] = "delete"
    gcp_functions.commands(event(bad, runtime.clients.project))
    gcp_functions.reconcile(event({"cluster_id": cluster_id}, None))  # no loop, no seq
    record = runtime.ports.store.get_cluster(cluster_id)
    assert record is not None and record.target == ClusterTarget.running


def test_the_reaper_restarts_a_lost_loop(runtime: gcp.GcpRuntime) -> None:
    _, cluster_id = a_cluster(runtime)
    assert runtime.loop.running_clusters() == {cluster_id}
    runtime.loop.loops.document(cluster_id).delete()  # its messages and document lost
    assert runtime.loop.running_clusters() == set()
    gcp_functions.reaper(event({}, None))
    assert runtime.loop.running_clusters() == {cluster_id}
