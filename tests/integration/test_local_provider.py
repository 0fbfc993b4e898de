"""The local-process provider against real processes (a stand-in "python" script)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from billow_control.adapters.clock import SystemClock
from billow_control.adapters.local.process_provider import LocalProcessProvider
from billow_control.core.models import InstanceRole, InstanceSpec, InstanceState
from tests.support.processes import pid_alive, wait_until

pytestmark = pytest.mark.integration

STUBBORN = """#!/bin/sh
# Stands in for `python -m billow.agent`: logs, then ignores SIGTERM if asked to.
echo "agent $BILLOW_INSTANCE_NAME starting role=$BILLOW_ROLE"
[ "$IGNORE_TERM" = 1 ] && trap '' TERM
while true; do sleep 0.1; done
"""


@pytest.fixture
def provider(tmp_path: Path):
    script = tmp_path / "fake-python"
    script.write_text(STUBBORN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    p = LocalProcessProvider(
        tmp_path / "instances", "test-deploy", SystemClock(), grace_period=0.5, python=str(script)
    )
    yield p
    p.kill_all()


def spec(name: str, **env: str) -> InstanceSpec:
    return InstanceSpec(
        cluster_id="c-1",
        name=name,
        role=InstanceRole.worker,
        cpu=1,
        memory="1 GiB",
        tags={
            "billow:cluster-id": "c-1",
            "billow:deployment": "test-deploy",
            "billow:owner": "u-1",
        },
        environment={"BILLOW_ROLE": "worker", **env},
    )


def pid_of(provider: LocalProcessProvider, instance_id: str) -> int:
    row = provider._db().execute("SELECT pid FROM instances WHERE id=?", (instance_id,)).fetchone()
    return int(row[0])


def test_launch_is_idempotent_and_tagged(provider: LocalProcessProvider) -> None:
    first = provider.launch(spec("worker-0"))
    again = provider.launch(spec("worker-0"))
    assert first.id == again.id
    [described] = provider.describe("c-1")
    assert described.state == InstanceState.running
    assert described.tags["billow:deployment"] == "test-deploy"
    pid = pid_of(provider, first.id)
    assert os.getpgid(pid) == pid  # its own process group, signalled as a whole
    wait_until(lambda: provider.tail_logs(first.id) != [], 10, "log line")
    assert provider.tail_logs(first.id) == ["agent worker-0 starting role=worker"]


def test_terminate_signals_then_escalates_to_kill(provider: LocalProcessProvider) -> None:
    polite = provider.launch(spec("worker-0"))
    stubborn = provider.launch(spec("worker-1", IGNORE_TERM="1"))
    wait_until(lambda: len(provider.tail_logs(stubborn.id)) == 1, 10, "stubborn started")
    ids = [polite.id, stubborn.id]
    provider.terminate(ids)
    wait_until(lambda: not pid_alive(pid_of(provider, polite.id)), 10, "polite exit")
    assert pid_alive(pid_of(provider, stubborn.id))  # ignored SIGTERM

    def converged() -> bool:
        provider.terminate(ids)  # what the reconciler does on every pass
        return all(i.state == InstanceState.terminated for i in provider.describe("c-1"))

    wait_until(converged, 10, "stubborn killed after the grace period", interval=0.2)
    assert provider.list_deployment_instances() == []
    assert provider.tail_logs(stubborn.id)  # logs outlive the instance


def test_sweep_deletes_scratch_of_finished_clusters_and_keeps_logs(
    provider: LocalProcessProvider,
) -> None:
    worker = provider.launch(spec("worker-0"))
    scratch = provider.instance_dir(worker.id) / "scratch"
    wait_until(lambda: provider.tail_logs(worker.id) != [], 10, "log line")
    env = (Path("/proc") / str(pid_of(provider, worker.id)) / "environ").read_bytes()
    assert f"DASK_TEMPORARY_DIRECTORY={scratch}".encode() in env.split(b"\0")
    (scratch / "worker-x").mkdir(parents=True)
    (scratch / "worker-x" / "spilled.bin").write_bytes(b"x" * 1024)

    assert provider.sweep_cluster_resources(lambda cluster_id: False) == []  # still running
    assert provider.sweep_cluster_resources(lambda cluster_id: True) == []
    assert scratch.exists()
    provider.terminate([worker.id])
    wait_until(lambda: provider.describe("c-1")[0].state == InstanceState.terminated, 10, "exit")
    assert provider.sweep_cluster_resources(lambda cluster_id: True) == []  # still active
    assert provider.sweep_cluster_resources(lambda cluster_id: False) == ["c-1"]
    assert not scratch.exists()
    assert provider.tail_logs(worker.id)  # logs outlive the sweep
    assert provider.sweep_cluster_resources(lambda cluster_id: False) == []  # nothing left
