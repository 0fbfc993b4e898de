"""A tenant that floods its output cannot fill the server's disk or stall log reads.

A task on a worker writes 64 MB to the worker's standard output (where an instance's log
comes from). The server keeps the newest ``instance-log-limit`` bytes (16 MiB by
default) in two files, and the logs route answers with the newest whole lines, at most
``LOG_RESPONSE_BYTES`` of them.
"""

from __future__ import annotations

import os

import httpx
import pytest
from dask.distributed import Client

import billow
from billow_control.adapters.local.instance_logs import DEFAULT_LOG_LIMIT
from billow_control.core.log_lines import LOG_RESPONSE_BYTES
from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOOD_BYTES = 64 * 1024 * 1024


def test_a_flooded_log_is_capped_and_its_newest_lines_read_back(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    with (
        billow.Cluster(
            n_workers=1,
            name="log-flood",
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        ) as cluster,
        Client(cluster) as client,
    ):

        def flood(marker: str) -> int:  # defined here: pickled by value, not by module
            block = (b"x" * 1023 + b"\n") * 1024  # 1 MiB of 1 KiB lines
            for _ in range(FLOOD_BYTES // len(block)):
                os.write(1, block)
            os.write(1, f"{marker}\n".encode())
            return FLOOD_BYTES

        [written] = client.run(flood, "the-newest-line").values()
        assert written == FLOOD_BYTES

        logs = f"/v1/clusters/{cluster.cluster_id}/logs"

        def newest_line_read() -> bool:
            answer = api.get(logs, params={"lines": 10_000}).raise_for_status().json()
            [worker] = [i for i in answer["instances"] if i["role"] == "worker"]
            return worker["lines"][-1:] == ["the-newest-line"]

        wait_until(newest_line_read, 60, "the newest line in the worker's log")
        answer = api.get(logs, params={"lines": 10_000})
        assert len(answer.content) <= LOG_RESPONSE_BYTES + 64 * 1024
        worker = next(i for i in answer.json()["instances"] if i["role"] == "worker")
        assert worker["lines"][-1] == "the-newest-line"
        assert set(worker["lines"][:-1]) == {"x" * 1023}  # whole lines only
        assert 100 < len(worker["lines"]) < 10_000  # capped in bytes, not by lines
        on_disk = 0
        for log in embedded_server.instance_logs(cluster.cluster_id):
            on_disk += sum(p.stat().st_size for p in log.parent.glob("instance.log*"))
        assert on_disk <= 2 * DEFAULT_LOG_LIMIT  # the scheduler's and the worker's
        assert on_disk < FLOOD_BYTES / 2
