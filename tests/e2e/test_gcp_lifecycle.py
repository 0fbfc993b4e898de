"""The GCP control plane end to end on loopback, composed as deployed: functions-framework
serving ``functions/gcp.py``; Google's Firestore and Pub/Sub emulators (the emulator
pushes the reconcile topic to the reconcile function); and the loopback fakes of the
services without an emulator, reached through each adapter's endpoint variable: Compute
Engine booting each instance's real startup script on a bare python3 into real Dask,
Cloud Logging fed by the Ops Agent the fake plays, Cloud KMS sealing the cluster secrets,
and Cloud Storage holding the instance kit that instances fetch through signed URLs.
See ``tests/support/gcp_deploy.py`` and ``tests/support/gcp_functions.py``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask.array as da
import httpx
import pytest
from dask.distributed import Client

import billow
from tests.support.gcp_deploy import GcpDeployment
from tests.support.instances import InstanceKit
from tests.support.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTHING_LEFT = {"instances": [], "templates": [], "firewalls": []}


def eventbridge_fields() -> set[str]:
    """The detail fields of an EventBridge lifecycle event, from the AWS adapter itself."""
    from billow_control.adapters.aws.eventbridge_bus import event_detail
    from billow_control.core.models import ClusterRecord, ClusterRequest

    record = ClusterRecord(
        id="c-1", owner="u-1", name="n", request=ClusterRequest(), desired_workers=0
    )
    return set(event_detail("d", "ready", record, None))


def deployment(
    tmp_path: Path,
    firestore_host: str,
    pubsub_host: str,
    kit: InstanceKit,
    reconcile_env: dict[str, str] | None = None,
) -> Iterator[GcpDeployment]:
    gcp = GcpDeployment(tmp_path, firestore_host, pubsub_host, kit, reconcile_env)
    try:
        yield gcp.start()
    finally:
        gcp.stop()
    assert not gcp.fake_errors(), gcp.fake_errors()
    assert not gcp.compute.live_pids()


@pytest.fixture
def gcp(
    tmp_path: Path, firestore_host: str, pubsub_host: str, instance_kit: InstanceKit
) -> Iterator[GcpDeployment]:
    yield from deployment(tmp_path, firestore_host, pubsub_host, instance_kit)


def api(gcp: GcpDeployment, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.request(method, gcp.api.url + path, headers=headers, timeout=60, **kwargs)


def status_of(gcp: GcpDeployment, token: str, cluster_id: str) -> str:
    response = api(gcp, token, "GET", f"/v1/clusters/{cluster_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def wait_for(gcp: GcpDeployment, token: str, cluster_id: str, status: str, timeout: float) -> None:
    def reached() -> bool:
        now = status_of(gcp, token, cluster_id)
        if now == "failed" and status != "failed":
            raise AssertionError(f"cluster failed:\n{gcp.reconcile.log.read_text()[-3000:]}")
        return now == status

    wait_until(reached, timeout, f"cluster {status}", interval=0.5)


def test_seed_on_the_gcp_composition_from_create_to_nothing_left(gcp: GcpDeployment) -> None:
    token = gcp.admin_token()
    key = uuid.uuid4().hex
    body = {"name": "gcp-e2e", "n_workers": 1, "secrets": {"DATA_TOKEN": "s3cr3t-value"}}

    def create(_: int) -> httpx.Response:
        return api(gcp, token, "POST", "/v1/clusters", json=body, headers={"idempotency-key": key})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(create, range(20)))
    assert {r.status_code for r in responses} <= {200, 201}, [r.text for r in responses]
    cluster_ids = {r.json()["id"] for r in responses}
    assert len(cluster_ids) == 1
    (cluster_id,) = cluster_ids
    listed = api(gcp, token, "GET", "/v1/clusters").json()
    assert [c["id"] for c in listed["clusters"]] == [cluster_id]
    # A duplicate of the loop's first message, delivered again: dropped as stale.
    gcp.publish_reconcile({"cluster_id": cluster_id, "loop": f"{cluster_id}-v0", "seq": 0})

    # The SDK reconnects by name and computes the seed over mutual TLS.
    with (
        billow.Cluster(
            name="gcp-e2e",
            server=gcp.api.url,
            token=token,
            show_progress=False,
            timeout=150,
        ) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.reconnected and cluster.cluster_id == cluster_id
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        client.wait_for_workers(1, timeout=60)
        result = da.random.random((1000, 1000)).sum().compute()
        running_logs = cluster.get_logs()
    assert abs(result - 5e5) < 5e3  # mean 0.5 of 1e6 uniforms; std ~289
    assert "scheduler listening at tls://" in running_logs["scheduler"]
    wait_for(gcp, token, cluster_id, "stopped", 90)

    # Compute Engine booted exactly the two instances; nothing labelled is left, nor the
    # cluster's template and firewall rule; every agent process is gone.
    assert gcp.instances(cluster_id) == ["scheduler", "worker-0"]
    wait_until(lambda: gcp.leftovers() == NOTHING_LEFT, 30, f"no leftovers: {gcp.leftovers()}")
    wait_until(lambda: not gcp.compute.live_pids(), 30, "agent processes gone")
    # The instances fetched the kit from the bucket through signed URLs (verified).
    assert set(gcp.gcs.downloads) >= {f"objects/{sha}" for sha in gcp.kit.objects()}
    assert not gcp.gcs.refused
    # The cluster's secrets were sealed by Cloud KMS and opened again for the instances.
    assert {"encrypt", "decrypt"} <= set(gcp.kms.calls)
    assert "s3cr3t-value" not in str(gcp.firestore_documents())

    # The agents' lines come back from Cloud Logging after the instances are gone.
    answer = api(gcp, token, "GET", f"/v1/clusters/{cluster_id}/logs", params={"lines": 500})
    assert answer.status_code == 200, answer.text
    logs = {i["name"]: i for i in answer.json()["instances"]}
    assert set(logs) == {"scheduler", "worker-0"}
    assert {i["state"] for i in logs.values()} == {"terminated"}
    assert any("scheduler listening at tls://" in line for line in logs["scheduler"]["lines"])
    # Each instance ran its real startup script on a bare python3: it fetched uv and the
    # wheel through the signed URLs (checked by sha256) and ran the agent from its venv.
    for name, info in logs.items():
        home = f"{gcp.compute.booted[f'billow-{cluster_id}-{name}'].root}/opt/billow"
        lines = info["lines"]
        assert any(f"billow bootstrap: kit: {home}/uv (" in line for line in lines), lines
        assert any(f"running on {home}/agent/bin/python" in line for line in lines), lines

    assert not gcp.reconcile.exited()
    # Twenty submits of the new record started one loop for its version.
    loops = re.findall(r"started reconcile loop (\S+)", gcp.api.log.read_text())
    assert loops.count(f"{cluster_id}-v0") == 1, loops

    events, fields = gcp.events(), eventbridge_fields()
    kinds = [data["detail"]["kind"] for _, data in events]
    for kind in ("requested", "provisioning", "ready", "stopping", "stopped"):
        assert kinds.count(kind) == 1, kinds
    for attributes, data in events:
        assert data["source"] == "billow"
        assert data["detail-type"] == f"billow.cluster.{data['detail']['kind']}"
        assert set(data["detail"]) == fields
        assert data["detail"]["cluster_id"] == cluster_id
        assert attributes["type"] == data["detail-type"]
        assert attributes["cluster_id"] == cluster_id
        assert attributes["deployment"] == gcp.env["BILLOW_DEPLOYMENT"]


LOOP_POINTS = ("claimed", "stepped", "published", "advanced")
COMPUTE_POINTS = (
    "compute.templates.insert",
    "compute.firewalls.insert",
    "compute.instances.bulk_insert",
    "compute.instances.delete",
    "compute.templates.delete",
    "compute.firewalls.delete",
)
CRASH_POINTS = LOOP_POINTS + COMPUTE_POINTS


def supervise(gcp: GcpDeployment, stop: threading.Event) -> None:
    """Restart the reconcile function whenever its process exits (bounded)."""
    while not stop.wait(0.2) and gcp.reconcile.starts <= 2 * len(CRASH_POINTS):
        if gcp.reconcile.exited():
            gcp.reconcile.start()


def reap(gcp: GcpDeployment, stop: threading.Event, period: float = 5.0) -> None:
    """The deployment's reaper, as Cloud Scheduler runs it (every minute there): its
    resync starts a new loop for a cluster whose loop's lease lapsed. Under load the Pub/Sub
    emulator was seen to stop redelivering a message nacked many times in a row (a crashed
    step's redeliveries refused while its claim held): the loop it carried stalled, as a
    loop whose messages were lost would in production, where this pass recovers it."""
    from billow_control.runtimes.gcp import GcpRuntime

    watchdog = GcpRuntime.from_env(gcp.env).plane.watchdog
    while not stop.wait(period):
        with contextlib.suppress(Exception):  # an emulator's hiccup: the next pass retries
            watchdog.run_once()


@pytest.fixture
def crashing(
    tmp_path: Path, firestore_host: str, pubsub_host: str, instance_kit: InstanceKit
) -> Iterator[GcpDeployment]:
    """A deployment whose reconcile function dies once at each point of a step (between
    its claim, the step, the next step's publish and the advance) and once right after
    each kind of Compute Engine call returned (the resource made, the caller never told),
    and is restarted at once, as Cloud Functions replaces a crashed instance."""
    crash = {"BILLOW_TEST_CRASH_POINTS": ",".join(CRASH_POINTS)}
    for gcp in deployment(tmp_path, firestore_host, pubsub_host, instance_kit, crash):
        stop = threading.Event()
        helpers = [
            threading.Thread(target=job, args=(gcp, stop), daemon=True) for job in (supervise, reap)
        ]
        for helper in helpers:
            helper.start()
        try:
            yield gcp
        finally:
            stop.set()
            for helper in helpers:
                helper.join(30)


def test_a_crash_at_any_point_or_after_any_compute_call_converges(
    crashing: GcpDeployment,
) -> None:
    """Clusters live and stop while the reconcile function dies once at each point. How
    many steps a cluster's loops take depends on timing (a heartbeat can make a cluster
    ready before the loop looks again), so a second or third cluster runs until every
    point has fired; each cluster converges with exactly its instances and leaks nothing."""
    gcp = crashing
    token = gcp.admin_token()
    for _ in range(3):
        response = api(gcp, token, "POST", "/v1/clusters", json={"n_workers": 1})
        assert response.status_code == 201, response.text
        cluster_id = response.json()["id"]
        wait_for(gcp, token, cluster_id, "ready", 150)
        assert api(gcp, token, "POST", f"/v1/clusters/{cluster_id}/stop").status_code == 200
        wait_for(gcp, token, cluster_id, "stopped", 90)
        # Every step re-run after a crash found what it had made: one instance per name,
        # and nothing leaked once the cluster stopped.
        assert gcp.instances(cluster_id) == ["scheduler", "worker-0"]
        wait_until(lambda: gcp.leftovers() == NOTHING_LEFT, 30, f"no leftovers: {gcp.leftovers()}")
        if len(list(gcp.crash_dir.iterdir())) == len(CRASH_POINTS):
            break
    assert sorted(p.name for p in gcp.crash_dir.iterdir()) == sorted(CRASH_POINTS)
    # functions-framework's gunicorn master replaces a dead worker at once; without
    # gunicorn the supervisor above restarts the process.
    assert gcp.reconcile.log.read_text().count("test crash at ") == len(CRASH_POINTS)
