"""SIGKILL the embedded server mid-provisioning; the restarted server brings the cluster
to ready with all its workers, then stops it without leaving a process behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.processes import EmbeddedServer, pid_alive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_killed_server_resumes_provisioning_without_orphans(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path).start()
    try:
        headers = {"Authorization": f"Bearer {server.token}"}
        created = httpx.post(
            f"{server.url}/v1/clusters", headers=headers, json={"n_workers": 3, "name": "crashy"}
        ).json()
        wait_until(lambda: len(server.instance_pids()) >= 1, 30, "first instance launched")
        url = f"{server.url}/v1/clusters/{created['id']}"
        assert httpx.get(url, headers=headers).json()["status"] in ("pending", "provisioning")

        server.kill()
        server.start()  # same data dir, same port: instances keep their control URL

        def settled() -> bool:
            return httpx.get(url, headers=headers).json()["status"] in ("ready", "failed")

        wait_until(settled, 90, "cluster ready or failed after restart")
        record = httpx.get(url, headers=headers).json()
        assert record["status"] == "ready", (record["error"], record["error_logs"])
        assert record["workers"] == 3
        httpx.post(f"{url}/stop", headers=headers)
        wait_until(
            lambda: httpx.get(url, headers=headers).json()["status"] == "stopped",
            60,
            "cluster stopped",
        )
        pids = server.instance_pids()
        assert pids
        wait_until(lambda: not [p for p in pids if pid_alive(p)], 30, "no instance left")
    finally:
        server.stop()
        server.kill_instances()
