"""The GCP control plane end to end on loopback: functions-framework serving
``functions/gcp.py``, Google's Firestore and Pub/Sub emulators (the emulator pushes the
reconcile topic to the reconcile function), and real Dask processes.

The provider is the embedded ``LocalProcessProvider``, chosen by the test-support
composition (``tests/support/gcp_functions.py``) until the Compute Engine provider and
its fake are merged; ``provider_kind`` parametrizes the tests for that switch.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gcp_deploy import GcpDeployment
from tests.support.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def eventbridge_fields() -> set[str]:
    """The detail fields of an EventBridge lifecycle event, from the AWS adapter itself."""
    from billow_control.adapters.aws.eventbridge_bus import event_detail
    from billow_control.core.models import ClusterRecord, ClusterRequest

    record = ClusterRecord(
        id="c-1", owner="u-1", name="n", request=ClusterRequest(), desired_workers=0
    )
    return set(event_detail("d", "ready", record, None))


@pytest.fixture(params=["process"])
def provider_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def deployment(
    tmp_path: Path, firestore_host: str, pubsub_host: str, provider: str, **extra: str
) -> Iterator[GcpDeployment]:
    gcp = GcpDeployment(
        tmp_path, firestore_host, pubsub_host, BILLOW_TEST_PROVIDER=provider, **extra
    )
    try:
        yield gcp.start()
    finally:
        gcp.stop()


@pytest.fixture
def gcp(
    tmp_path: Path, firestore_host: str, pubsub_host: str, provider_kind: str
) -> Iterator[GcpDeployment]:
    yield from deployment(tmp_path, firestore_host, pubsub_host, provider_kind)


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


def test_cluster_reaches_ready_then_stopped_through_pubsub(gcp: GcpDeployment) -> None:
    token = gcp.admin_token()
    key = uuid.uuid4().hex
    body = {"name": "gcp-e2e", "n_workers": 1}

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
    wait_for(gcp, token, cluster_id, "ready", 90)
    names = sorted(i.name for i in gcp.instances(cluster_id))
    assert names == ["scheduler", "worker-0"]

    assert api(gcp, token, "POST", f"/v1/clusters/{cluster_id}/stop").status_code == 200
    wait_for(gcp, token, cluster_id, "stopped", 60)
    assert all(i.state.value == "terminated" for i in gcp.instances(cluster_id))
    assert sorted(i.name for i in gcp.instances(cluster_id)) == names
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


CRASH_POINTS = ("claimed", "stepped", "published", "advanced")


def supervise(gcp: GcpDeployment, stop: threading.Event) -> None:
    """Restart the reconcile function whenever its process exits (bounded)."""
    while not stop.wait(0.2) and gcp.reconcile.starts <= 2 * len(CRASH_POINTS):
        if gcp.reconcile.exited():
            gcp.reconcile.start()


@pytest.fixture
def crashing(
    tmp_path: Path, firestore_host: str, pubsub_host: str, provider_kind: str
) -> Iterator[GcpDeployment]:
    """A deployment whose reconcile function dies once at each point of a step (between
    its claim, the step, the next step's publish and the advance) and is restarted at
    once, as Cloud Functions replaces a crashed instance."""
    points = ",".join(CRASH_POINTS)
    for gcp in deployment(
        tmp_path, firestore_host, pubsub_host, provider_kind, BILLOW_TEST_CRASH_POINTS=points
    ):
        stop = threading.Event()
        supervisor = threading.Thread(target=supervise, args=(gcp, stop), daemon=True)
        supervisor.start()
        try:
            yield gcp
        finally:
            stop.set()
            supervisor.join(30)


def test_a_crash_at_any_point_of_a_step_converges(crashing: GcpDeployment) -> None:
    gcp = crashing
    token = gcp.admin_token()
    response = api(gcp, token, "POST", "/v1/clusters", json={"n_workers": 1})
    assert response.status_code == 201, response.text
    cluster_id = response.json()["id"]
    wait_for(gcp, token, cluster_id, "ready", 120)
    assert api(gcp, token, "POST", f"/v1/clusters/{cluster_id}/stop").status_code == 200
    wait_for(gcp, token, cluster_id, "stopped", 60)
    assert sorted(p.name for p in gcp.crash_dir.iterdir()) == sorted(CRASH_POINTS)
    # functions-framework's gunicorn master replaces a dead worker at once; without
    # gunicorn the supervisor above restarts the process.
    assert gcp.reconcile.log.read_text().count("test crash at ") == len(CRASH_POINTS)
    # Every step re-run after a crash found the instances it had launched.
    instances = gcp.instances(cluster_id)
    assert sorted(i.name for i in instances) == ["scheduler", "worker-0"]
    assert all(i.state.value == "terminated" for i in instances)
