"""``GceProvider`` through the real ``google-cloud-compute`` and ``google-cloud-logging``
clients (REST) against the loopback fakes of ``tests/support/gcp_fakes``: launch,
describe and terminate by label, idempotent bulkInsert, spot fallback, GPUs, the sweep,
logs that outlive their instance, and the core watchdog's orphan sweep by label."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.clock import SystemClock
from billow_control.adapters.gcp.compute import (
    GceLaunchError,
    GceProvider,
    compute_provider_from_env,
    request_id,
)
from billow_control.adapters.local.event_log import JsonLinesEventBus
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.adapters.local.thread_orchestrator import LocalOrchestrator
from billow_control.core import tags
from billow_control.core.models import InstanceRole, InstanceSpec, InstanceState
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from tests.support.gcp_fakes.compute import ComputeFake
from tests.support.gcp_fakes.logging import LoggingFake
from tests.support.instances import InstanceKit
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

PROJECT, ZONE = "billow-test", "us-central1-a"


@pytest.fixture(scope="module")
def logging_fake() -> Iterator[LoggingFake]:
    fake = LoggingFake().start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server.errors, fake.server.errors


@pytest.fixture(scope="module")
def compute(
    logging_fake: LoggingFake, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComputeFake]:
    """Instances boot their startup script on a bare python3 (no kit: none is needed by
    a script whose control plane refuses it)."""
    root = tmp_path_factory.mktemp("gce")
    fake = ComputeFake(
        PROJECT,
        ZONE,
        kit=InstanceKit.bare(root / "kit"),
        workdir=root / "instances",
        logging_url=logging_fake.url,
    ).start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server.errors and not fake.errors, fake.server.errors + fake.errors
    assert not fake.live_pids()


@pytest.fixture(scope="module")
def refusing_control_plane() -> Iterator[str]:
    """A control plane that refuses the kit (HTTP 409), so a booted script logs why and
    ends at once, as on a cluster that is stopping."""

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b'{"detail": "cluster is stopping; instance should exit"}'
            self.send_response(409)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def provider(
    compute: ComputeFake, logging_fake: LoggingFake, deployment: str, **env: str
) -> GceProvider:
    variables = {
        "BILLOW_GCP_PROJECT": PROJECT,
        "BILLOW_GCP_ZONE": ZONE,
        "BILLOW_GCP_COMPUTE_ENDPOINT": compute.url,
        "BILLOW_GCP_LOGGING_ENDPOINT": logging_fake.url,
        **env,
    }
    settings = ControlSettings(deployment=deployment, control_url="http://127.0.0.1:9")
    made = compute_provider_from_env(settings, variables)
    assert isinstance(made, GceProvider)
    return made


def spec(
    deployment: str,
    cluster_id: str,
    name: str = "scheduler",
    control_url: str = "http://127.0.0.1:9",
    **kw: Any,
) -> InstanceSpec:
    role = InstanceRole.scheduler if name == "scheduler" else InstanceRole.worker
    return InstanceSpec(
        cluster_id=cluster_id,
        name=name,
        role=role,
        cpu=kw.get("cpu", 2),
        memory=kw.get("memory", "4 GiB"),
        tags=tags.cluster_tags(cluster_id, "u-0001", deployment, {"team": "data"}),
        environment={
            "BILLOW_CONTROL_URL": control_url,
            "BILLOW_INSTANCE_TOKEN": f"bit_{uuid.uuid4().hex}",
            "BILLOW_ROLE": role.value,
            "BILLOW_CLUSTER_ID": cluster_id,
        },
    )


def new_ids() -> tuple[str, str]:
    return f"d{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:16]}"


def scheduling(compute: ComputeFake, name: str) -> dict[str, Any]:
    return dict(compute.instances[name].get("scheduling", {}))


# -- launch, describe, terminate ---------------------------------------------------------


def test_launch_describe_and_terminate_by_label(
    compute: ComputeFake, logging_fake: LoggingFake
) -> None:
    deployment, cluster = new_ids()
    gce = provider(compute, logging_fake, deployment)
    scheduler = gce.launch(spec(deployment, cluster))
    worker = gce.launch(spec(deployment, cluster, "worker-0", cpu=4, memory="16 GiB"))
    other = provider(compute, logging_fake, new_ids()[0])

    described = gce.describe(cluster)
    assert [(i.id, i.name, i.role) for i in described] == [
        (scheduler.id, "scheduler", InstanceRole.scheduler),
        (worker.id, "worker-0", InstanceRole.worker),
    ]
    assert described[1].tags[tags.OWNER] == "u-0001" and described[1].tags["team"] == "data"
    labels = compute.instances[worker.id]["labels"]
    assert labels["billow-deployment"] == deployment and labels["billow-role"] == "worker"
    assert compute.instances[worker.id]["machineType"].endswith("/e2-standard-4")
    assert {i.id for i in gce.list_deployment_instances()} == {scheduler.id, worker.id}
    assert other.describe(cluster) == [] and other.list_deployment_instances() == []
    other.terminate([scheduler.id])  # another deployment's instance: ignored
    assert scheduler.id in compute.instances

    # One template and one ingress rule per cluster, one rule per deployment.
    assert f"billow-{cluster}" in compute.templates
    assert compute.firewalls[f"billow-{cluster}"]["sourceRanges"] == ["0.0.0.0/0"]
    assert compute.firewalls[f"billow-{deployment}"]["targetTags"] == [f"billow-{deployment}"]

    gce.terminate([worker.id, "no-such-instance"])
    assert [i.id for i in gce.describe(cluster)] == [scheduler.id]
    assert f"billow-{cluster}" in compute.templates  # the scheduler still lives
    gce.terminate([scheduler.id])
    assert gce.reader.infos(cluster) == []  # no instance labelled with the cluster
    assert {i.state for i in gce.describe(cluster)} <= {InstanceState.terminated}
    assert f"billow-{cluster}" not in compute.templates
    assert f"billow-{cluster}" not in compute.firewalls
    assert f"billow-{deployment}" in compute.firewalls  # shared: never deleted


def test_a_retried_launch_makes_no_second_instance(
    compute: ComputeFake, logging_fake: LoggingFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment, cluster = new_ids()
    gce = provider(compute, logging_fake, deployment)
    first = spec(deployment, cluster, "worker-0")
    before = compute.bulk_inserts
    launched = gce.launch(first)
    assert gce.launch(first).id == launched.id  # found by name: no second request
    assert compute.bulk_inserts == before + 1
    ours = [n for n in compute.instances if cluster in n]
    assert ours == [launched.id]

    # A retry that cannot see the first instance yet (a crash before the answer, a list
    # that lags) sends the same requestId: Compute Engine answers the first operation.
    monkeypatch.setattr(gce.reader, "get", lambda name: None)
    gce.launch(first)
    assert compute.bulk_inserts == before + 2
    assert [n for n in compute.instances if cluster in n] == ours
    assert request_id(first.client_token, "SPOT") in compute.by_request_id


# -- spot, standard, GPUs --------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["operation", "request"])
def test_spot_by_default_and_standard_when_spot_is_refused(
    compute: ComputeFake, logging_fake: LoggingFake, refusal: str
) -> None:
    deployment, cluster = new_ids()
    gce = provider(compute, logging_fake, deployment)
    spot = gce.launch(spec(deployment, cluster, "worker-0"))
    assert scheduling(compute, spot.id) == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "STOP",
    }
    compute.refuse_spot = refusal
    try:
        fallback = gce.launch(spec(deployment, cluster, "worker-1"))
        assert scheduling(compute, fallback.id) == {"provisioningModel": "STANDARD"}
        only_spot = provider(compute, logging_fake, deployment, BILLOW_PURCHASE="spot")
        with pytest.raises(GceLaunchError, match="no SPOT capacity") as refused:
            only_spot.launch(spec(deployment, cluster, "worker-2"))
        assert refused.value.codes == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
        assert [i.name for i in gce.describe(cluster)] == ["worker-0", "worker-1"]
    finally:
        compute.refuse_spot = None
    gce.terminate([i.id for i in gce.describe(cluster)])


def test_gpu_workers_get_accelerators_and_machine_types_are_listed_once(
    compute: ComputeFake, logging_fake: LoggingFake
) -> None:
    deployment, cluster = new_ids()
    gce = provider(compute, logging_fake, deployment, BILLOW_GCP_WORKER_GPU="nvidia-tesla-t4:1")
    listings = sum(1 for _, path in compute.server.requests if path.endswith("/machineTypes"))
    scheduler = gce.launch(spec(deployment, cluster))
    worker = gce.launch(spec(deployment, cluster, "worker-0", cpu=4, memory="15 GiB"))
    assert "guestAccelerators" not in compute.instances[scheduler.id]
    assert compute.instances[worker.id]["guestAccelerators"] == [
        {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert compute.instances[worker.id]["machineType"].endswith("/n1-standard-4")
    assert scheduling(compute, worker.id)["onHostMaintenance"] == "TERMINATE"
    after = sum(1 for _, path in compute.server.requests if path.endswith("/machineTypes"))
    assert after == listings + 1  # cached per zone
    gce.terminate([scheduler.id, worker.id])


# -- the sweep, and logs -----------------------------------------------------------------


def test_sweep_releases_what_inactive_clusters_left(
    compute: ComputeFake, logging_fake: LoggingFake
) -> None:
    deployment, finished = new_ids()
    active = f"c-{uuid.uuid4().hex[:16]}"
    gce = provider(compute, logging_fake, deployment)
    stopped = gce.launch(spec(deployment, finished))
    running = gce.launch(spec(deployment, active))
    compute.instances[stopped.id]["status"] = "TERMINATED"  # its agent exited
    assert [i.id for i in gce.list_deployment_instances()] == [running.id]
    assert gce.describe(finished)[0].state == InstanceState.terminated

    swept: list[str] = []
    for _ in range(3):  # stopped instances first, then their template and rule
        swept += gce.sweep_cluster_resources(lambda c: c == active)
    assert swept == [finished]
    assert stopped.id not in compute.instances and f"billow-{finished}" not in compute.templates
    assert f"billow-{finished}" not in compute.firewalls
    assert running.id in compute.instances and f"billow-{active}" in compute.templates
    gce.terminate([running.id])
    assert gce.sweep_cluster_resources(lambda c: False) == []


def test_logs_are_written_to_cloud_logging_and_outlive_the_instance(
    compute: ComputeFake, logging_fake: LoggingFake, refusing_control_plane: str
) -> None:
    deployment, cluster = new_ids()
    gce = provider(compute, logging_fake, deployment)
    launched = gce.launch(spec(deployment, cluster, control_url=refusing_control_plane))
    # The real startup script runs, is refused the kit, logs why and "shuts down".
    wait_until(
        lambda: gce.describe(cluster)[0].state == InstanceState.terminated, 30, "script ended"
    )
    last = "billow: agent exited with code 1"
    wait_until(lambda: gce.tail_logs(launched.id, 1) == [last], 10, "logs shipped")
    gce.terminate([launched.id])
    assert launched.id not in compute.instances
    # Compute Engine forgot it; its first log line still names it (billow cluster logs).
    gone = gce.describe(cluster)
    assert [(i.id, i.name, i.role, i.state) for i in gone] == [
        (launched.id, "scheduler", InstanceRole.scheduler, InstanceState.terminated)
    ]

    lines = gce.tail_logs(launched.id, 50)
    assert any("kit refused: HTTP 409" in line for line in lines), lines
    assert lines[-1] == last
    assert gce.tail_logs(launched.id, 1) == [lines[-1]]
    entry = next(e for e in logging_fake.entries if e["labels"].get("billow-cluster-id") == cluster)
    assert entry["labels"]["billow-role"] == "scheduler"
    assert entry["logName"] == f"projects/{PROJECT}/logs/billow-agent"
    assert gce.tail_logs("billow-c-unknown-scheduler") == []
    assert gce.describe("c-unknown") == []
    assert Path(compute.booted[launched.id].root, "var/log/billow-agent.log").exists()


def test_the_watchdog_terminates_instances_no_record_backs(
    compute: ComputeFake, logging_fake: LoggingFake, tmp_path: Path
) -> None:
    """The core watchdog over this provider: an instance labelled with the deployment
    but with no cluster record (a crash between launch and write) is found by its labels
    and deleted, and its cluster's template and firewall rule are released."""
    deployment, orphan = new_ids()
    gce = provider(compute, logging_fake, deployment)
    launched = gce.launch(spec(deployment, orphan))
    settings = ControlSettings(deployment=deployment, orphan_grace=0)
    ports = Ports(
        store=SqliteStore(tmp_path / "billow.db"),
        provider=gce,
        orchestrator=LocalOrchestrator(),
        secrets=FernetSecretBox.from_key_file(tmp_path / "secret.key"),
        events=JsonLinesEventBus(tmp_path / "events.jsonl"),
        clock=SystemClock(),
        settings=settings,
    )
    report = ControlPlane(ports).watchdog.run_once()
    assert report.orphans_terminated == [launched.id]
    assert launched.id not in compute.instances
    assert f"billow-{orphan}" not in compute.templates
    assert f"billow-{orphan}" not in compute.firewalls
