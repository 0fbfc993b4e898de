"""The embedded server's watchdog on real clusters: idle ones go, busy ones stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dask.distributed import Client

import billow
from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_idle_cluster_is_reaped_and_busy_cluster_survives(tmp_path: Path) -> None:
    server = EmbeddedServer(
        tmp_path, env={"BILLOW_REAPER_INTERVAL": "1s", "BILLOW_HEARTBEAT_INTERVAL": "1s"}
    ).start()
    kwargs = dict(server=server.url, token=server.token, show_progress=False, idle_timeout="10s")
    try:
        idle = billow.Cluster(n_workers=1, name="idle", shutdown_on_close=False, **kwargs)
        busy = billow.Cluster(n_workers=1, name="busy", **kwargs)
        started = time.monotonic()
        with Client(busy) as client:
            task = client.submit(time.sleep, 21, pure=False)

            def reaped() -> bool:
                return _status(server, idle.cluster_id) == "stopped"

            wait_until(reaped, 60, "idle cluster reaped")
            assert time.monotonic() - started < 21  # idle timeout (10 s, the least) + a pass
            assert not server.live_instance_pids(idle.cluster_id)
            cli = subprocess.run(
                [sys.executable, "-m", "billow.cli", "cluster", "status", "idle"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "BILLOW_LOGIN_FILE": str(server.login_file), "COLUMNS": "200"},
            )
            assert "stop_reason: idle" in cli.stdout, cli.stdout

            task.result(timeout=90)  # a 21-second task, twice the idle timeout and more
            assert time.monotonic() - started > 21
            assert _status(server, busy.cluster_id) == "ready"
        busy.close()
        idle.close()
    finally:
        server.stop()
        server.kill_instances()


def _status(server: EmbeddedServer, cluster_id: str | None) -> str:
    import httpx

    response = httpx.get(
        f"{server.url}/v1/clusters/{cluster_id}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    return response.json()["status"]
