"""A canary secret on a real cluster of ``billow server``: it works on the workers and is
nowhere else, neither in the data dir (database and WAL included), the server's log, the
events log, nor any API answer.

A server of its own, so that every byte it wrote can be searched.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dask.distributed import Client

import billow
from billow.api import ControlPlaneClient
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    started = EmbeddedServer(tmp_path_factory.mktemp("billow-secrets")).start()
    try:
        yield started
    finally:
        started.stop()
        started.kill_instances()


@pytest.fixture
def sdk_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The body of every answer the SDK receives (create, get, credentials, stop)."""
    seen: list[str] = []
    request = ControlPlaneClient.request

    async def recording(self: ControlPlaneClient, method: str, path: str, **kw: Any) -> Any:
        body = await request(self, method, path, **kw)
        seen.append(f"{method} {path} {json.dumps(body)}")
        return body

    monkeypatch.setattr(ControlPlaneClient, "request", recording)
    return seen


def every_file(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_a_canary_secret_reaches_the_workers_and_nothing_else(
    server: EmbeddedServer, sdk_answers: list[str]
) -> None:
    canary = "canary-" + secrets.token_urlsafe(24)
    plain = "plain-" + secrets.token_urlsafe(24)
    answers: list[str] = []
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    ) as api:
        refused = api.post(
            "/v1/clusters",
            json={"environ": {"CANARY_SECRET": "x"}, "secrets": {"CANARY_SECRET": canary}},
        )
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "secrets"
        answers.append(refused.text)
        with (
            billow.Cluster(
                n_workers=1,
                name="secrets-canary",
                environ={"PLAIN_VAR": plain},
                secrets={"CANARY_SECRET": canary},
                server=server.url,
                token=server.token,
                show_progress=False,
            ) as cluster,
            Client(cluster) as client,
        ):
            on_workers = client.run(lambda: os.environ["CANARY_SECRET"])
            assert list(on_workers.values()) == [canary]
            assert client.run_on_scheduler(lambda: os.environ["CANARY_SECRET"]) == canary
            assert set(client.run(lambda: os.environ["PLAIN_VAR"]).values()) == {plain}
            cid = cluster.cluster_id
            record = api.get(f"/v1/clusters/{cid}")
            assert record.json()["secrets"] == ["CANARY_SECRET"]
            assert record.json()["request"]["environ"] == {"PLAIN_VAR": plain}
            for path in (
                f"/v1/clusters/{cid}",
                "/v1/clusters",
                "/v1/clusters?active=true",
                "/v1/whoami",
                f"/v1/clusters/{cid}/logs",
                f"/v1/clusters/{cid}/credentials",
            ):
                answer = api.get(path)
                assert answer.status_code == 200, (path, answer.text)
                answers.append(answer.text)
            answers += [repr(cluster), cluster._repr_html_(), json.dumps(cluster.get_logs())]
        answers.append(api.get(f"/v1/clusters/{cid}").text)
    server.stop()  # flush and close everything it writes

    assert any(a.startswith("POST /v1/clusters ") for a in sdk_answers)  # the create
    assert not [a for a in answers + sdk_answers if canary in a]
    assert plain in "".join(answers)  # the search sees what answers do carry
    events = (server.data_dir / "events.jsonl").read_text()
    assert cid in events and canary not in events
    assert canary not in server.log_path.read_text()
    store = {p.name for p in server.data_dir.iterdir()}
    assert {"billow.db", "billow.db-wal"} & store and "events.jsonl" in store
    stored = every_file(server.data_dir)
    assert plain.encode() in stored  # the record's environ: plain bytes are searchable
    assert canary.encode() not in stored
