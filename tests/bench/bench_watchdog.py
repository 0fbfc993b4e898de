"""Watchdog benchmarks: heartbeat ingestion on the embedded server, and the reaper's pass.

Run with ``python -m tests.bench.bench_watchdog``. Every figure is printed next to a
baseline measured in the same run (DESIGN.md section 5); nothing here asserts a time.

Heartbeat ingestion
    ``billow server`` runs as a subprocess on a temporary data dir. A heartbeat needs a
    cluster token, which only the scheduler's bootstrap hands out. To get real tokens
    without running Dask, the clusters are created before the server starts, by the same
    composition the server uses (``EmbeddedRuntime``: SQLite store, ``ControlPlane``,
    ``Lifecycle``, local-process provider) on the same data dir. The only substitution is
    the instance program: the provider's ``python`` is a shell stub (the trick of
    tests/integration/test_reaper.py) that saves the ``BILLOW_INSTANCE_TOKEN`` its
    environment received and sleeps, instead of ``python -m billow.agent``. Then the
    server starts, resumes the clusters (it sees their scheduler instances alive), and the
    benchmark does what ``billow.agent`` would do, over HTTP: exchange each instance
    token on ``POST /v1/agent/bootstrap`` for the cluster token, and send a first
    heartbeat, upon which the server's reconciler marks the cluster ready. Nothing is
    written behind the server's back while it runs. (Creating the clusters through the
    API instead would start the real agent, which consumes the one-time token itself and
    starts a Dask scheduler.)

    Then CLIENTS keep-alive connections, each sending one request at a time, send
    heartbeats (the ``minimal`` analytics body of a scheduler with no workers) round-robin
    over the clusters, and the 200 answers per second are counted. The baseline is the
    same client on ``GET /v1/health`` (no store work). Both run SECONDS in all, in ROUNDS
    alternating slices, so that a busy neighbour on the machine slows both alike. Also
    printed: the CPU the server used (1.0 is one core: the resolver is serialized and
    holds the GIL, so about the most it can use), CPU time per request of server and
    client, and the latency of one connection sending one request at a time (what one
    scheduler sees).

    The client is a few lines of HTTP/1.1 over asyncio streams with each request encoded
    once. httpx was tried first: its AsyncClient used about 3 ms of CPU per request
    (the server about 1 ms) and slowed to a few requests per second with 16 to 64 tasks
    sharing its pool, so on two cores it measured itself. Why 128 connections: every
    response from the embedded server stalls about 40 ms on a keep-alive connection (its
    sockets lack TCP_NODELAY; see the one-connection latency), so one connection makes at
    most ~23 requests per second and few connections measure that stall, not capacity.
    1,000 heartbeats per second at the 5 s interval would be 5,000 schedulers, each with
    its own connection, so 128 concurrent connections is no exaggeration.

    Durability: the server's SQLite store runs with ``PRAGMA synchronous=FULL`` (every
    commit, so every heartbeat, syncs the WAL) unless ``BILLOW_SQLITE_SYNCHRONOUS`` says
    otherwise. ``--synchronous FULL,NORMAL`` (the default) runs the whole heartbeat
    benchmark once per setting, back to back on fresh data dirs, to print what FULL costs.

    ``--py-spy PATH`` then samples the server (threads holding the GIL) with that py-spy
    executable during one more heartbeat run, and prints where its time goes.

Reaper pass
    ``Watchdog.run_once()`` with 50 active clusters (ready, fresh heartbeat, so the pass only
    reads) and 5,000 stopped ones, on a SQLite file and on DynamoDB (a ``moto_server``
    this benchmark starts and stops by PID). Baseline: the same 50 active and no stopped
    clusters. Prints the median pass time, and the DynamoDB items read and read requests
    per pass (counted from the responses; heartbeats come in one BatchGetItem). The
    provider has no instances, so the orphan sweep costs nothing: this measures the store
    reads. Stopped clusters are written the way the store
    leaves them: SQLite through ``SqliteStore.create_cluster`` of terminal records (one
    row each, ``active=0``), DynamoDB by ``BatchWriteItem`` of the store's own cluster
    items for terminal records (no ``active_owner``, TTL stamp set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from billow_control.adapters.aws.dynamodb import DynamoDBStore, create_tables, delete_tables
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.models import ClusterRequest
from billow_control.core.ports import Store
from billow_control.core.settings import ControlSettings
from billow_control.runtimes.embedded import EmbeddedRuntime, write_login
from tests.support.fleet import Fleet, ItemsRead
from tests.support.processes import EmbeddedServer, free_port, moto_server, wait_until

CLUSTERS = 50
CLIENTS = 128
SEQUENTIAL_SECONDS = 3.0
SECONDS = 10.0
ROUNDS = 5
WARMUP = 0.5
ACTIVE = 50
STOPPED = 5_000
PASSES = 9
GOAL_PER_SECOND = 1_000
GOAL_RATIO = 0.5  # heartbeats at least half as fast as GET /v1/health (issue #13)

# Stands in for `python -m billow.agent`: keeps the instance token (from the pipe the
# provider passes), stays alive an hour.
STUB = """#!/bin/sh
cat "/dev/fd/$BILLOW_INSTANCE_TOKEN_FD" > token.tmp && mv token.tmp token
exec sleep 3600
"""


# -- heartbeat ingestion --------------------------------------------------------------


def heartbeat_body(address: str) -> dict[str, Any]:
    """What ``BillowSchedulerPlugin.snapshot()`` sends at ``minimal`` with no workers."""
    return {
        "scheduler_address": address,
        "dashboard_address": address.replace("tls://", "").rsplit(":", 1)[0] + ":8787",
        "workers": [],
        "busy": False,
        "idle_seconds": 1.5,
        "clients": 1,
        "seconds_without_clients": None,
        "gpus": 0,
        "gpu_low_seconds": None,
        "n_threads": 0,
        "memory_bytes": 0,
        "tasks_processing": 0,
        "tasks_queued": 0,
        "versions": {"dask": "2025.1.0", "distributed": "2025.1.0"},
    }


def prepare_clusters(root: Path, port: int, n: int) -> list[str]:
    """Create ``n`` clusters (no workers) with stub schedulers, before the server starts.

    Also creates the admin and writes the login file, as the server's first start would.
    Returns the cluster ids.
    """
    stub = root / "stub-agent"
    stub.write_text(STUB)
    stub.chmod(0o755)
    url = f"http://127.0.0.1:{port}"
    runtime = EmbeddedRuntime.create(
        root / "data", ControlSettings(control_url=url), instance_dir=root / "work"
    )
    runtime.provider.python = str(stub)
    token = runtime.plane.bootstrap_admin()
    assert token is not None, "fresh data dir expected"
    write_login(root / "login.yaml", url, token)
    admin = runtime.plane.authenticate(token)
    ids = []
    for i in range(n):
        request = ClusterRequest(name=f"hb-{i}", n_workers=0, analytics="minimal")
        cluster, _ = runtime.plane.create_cluster(admin, request, None)
        runtime.plane.lifecycle.reconcile(cluster["id"])  # launches the (stub) scheduler
        ids.append(cluster["id"])
    return ids


def instance_token(server: EmbeddedServer, cluster_id: str) -> str:
    """The token the stub scheduler of ``cluster_id`` was started with."""
    db = server.data_dir / "instances" / "instances.db"
    with sqlite3.connect(db) as conn:
        (workdir,) = conn.execute(
            "SELECT workdir FROM instances WHERE cluster_id=? AND role='scheduler'", (cluster_id,)
        ).fetchone()
    path = Path(workdir) / "token"
    wait_until(path.exists, 10, f"stub scheduler of {cluster_id} saved its token")
    return path.read_text()


def join_clusters(server: EmbeddedServer, ids: list[str]) -> dict[str, str]:
    """Bootstrap each stub scheduler on the server and send its first heartbeat, as
    ``billow.agent`` would; wait until every cluster is ready. Returns cluster tokens."""
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for cid in ids:
            auth = {"Authorization": f"Bearer {instance_token(server, cid)}"}
            answer = http.post("/v1/agent/bootstrap", headers=auth)
            answer.raise_for_status()
            tokens[cid] = answer.json()["cluster_token"]
            beat = http.post(
                f"/v1/clusters/{cid}/heartbeat",
                json=heartbeat_body(f"tls://127.0.0.1:{9000 + len(tokens)}"),
                headers={"Authorization": f"Bearer {tokens[cid]}"},
            )
            beat.raise_for_status()
        admin = {"Authorization": f"Bearer {server.token}"}

        def all_ready() -> bool:
            listed = http.get("/v1/clusters", headers=admin).json()["clusters"]
            ready = {c["id"] for c in listed if c["status"] == "ready"}
            return ready >= set(ids)

        wait_until(all_ready, 60, "every benchmark cluster ready")
    return tokens


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Load = tuple[float, float, float, float, float]


def http_request(method: str, path: str, token: str | None, body: bytes | None) -> bytes:
    """One HTTP/1.1 keep-alive request, encoded once and sent many times."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"\r\ntransfer-encoding: chunked" in head:
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readexactly(2)
        return status, body
    at = head.index(b"\r\ncontent-length:") + 17
    return status, await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))


async def load(
    port: int, requests: list[bytes], seconds: float, server_pid: int, clients: int
) -> Load:
    """``clients`` keep-alive connections each send ``requests`` round-robin, one at a time,
    for ``seconds`` after WARMUP. Returns 200 answers, other answers, elapsed seconds, and
    the CPU seconds the server and this client used, all of the timed part."""
    ok = failed = 0
    timed = False

    async def client(index: int, stop: float) -> None:
        nonlocal ok, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = index
        try:
            while time.monotonic() < stop:
                writer.write(requests[i % len(requests)])
                i += clients
                status, _ = await read_response(reader)
                if timed:
                    ok, failed = (ok + 1, failed) if status == 200 else (ok, failed + 1)
        finally:
            writer.close()

    start = time.monotonic()
    tasks = [asyncio.create_task(client(i, start + WARMUP + seconds)) for i in range(clients)]
    await asyncio.sleep(WARMUP)
    timed, t0 = True, time.monotonic()
    server0, client0 = cpu_seconds(server_pid), time.process_time()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    server_cpu = cpu_seconds(server_pid) - server0
    return ok, failed, elapsed, server_cpu, time.process_time() - client0


def bench_heartbeats(
    seconds: float, clients: int, py_spy: str | None, synchronous: str = "FULL"
) -> None:
    root = Path(tempfile.mkdtemp(prefix="billow-bench-hb-"))
    port = free_port()
    server = EmbeddedServer(root, port=port, env={"BILLOW_SQLITE_SYNCHRONOUS": synchronous})
    profile = root / "heartbeats.py-spy.txt"
    try:
        ids = prepare_clusters(root, port, CLUSTERS)
        server.start()
        tokens = join_clusters(server, ids)
        beats = [
            http_request(
                "POST",
                f"/v1/clusters/{cid}/heartbeat",
                tok,
                json.dumps(heartbeat_body(f"tls://127.0.0.1:{9000 + i}")).encode(),
            )
            for i, (cid, tok) in enumerate(tokens.items())
        ]
        health = [http_request("GET", "/v1/health", None, None)]
        assert server.proc is not None
        pid = server.proc.pid
        # Alternate slices of both, so that a noisy neighbour slows both alike.
        h_total: list[float] = [0, 0, 0, 0, 0]
        b_total: list[float] = [0, 0, 0, 0, 0]
        for _ in range(ROUNDS):
            for total, requests in ((h_total, health), (b_total, beats)):
                part = asyncio.run(load(server.port, requests, seconds / ROUNDS, pid, clients))
                total[:] = [a + b for a, b in zip(total, part, strict=True)]
        h_ok, h_failed, h_time, h_cpu, h_client = h_total
        b_ok, b_failed, b_time, b_cpu, b_client = b_total
        if py_spy:  # a separate heartbeat run, sampling the threads that hold the GIL
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--gil", "--rate", "250", "--format"]
                + ["raw", "--duration", str(int(seconds)), "--output", str(profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            asyncio.run(load(server.port, beats, seconds, pid, clients))
            spy.wait(30)
        # One connection, one request at a time: the latency a single scheduler sees.
        h_one = asyncio.run(load(server.port, health, SEQUENTIAL_SECONDS, pid, 1))
        b_one = asyncio.run(load(server.port, beats, SEQUENTIAL_SECONDS, pid, 1))
        with httpx.Client(base_url=server.url) as http:
            one = http.get(
                f"/v1/clusters/{ids[0]}", headers={"Authorization": f"Bearer {server.token}"}
            ).json()
    finally:
        server.stop()
        server.kill_instances()  # the stub schedulers, by PID
    health_rate, beat_rate = h_ok / h_time, b_ok / b_time
    print(
        f"heartbeat ingestion, embedded server (SQLite synchronous={synchronous}), "
        f"{CLUSTERS} clusters, {clients} keep-alive connections, {seconds:.0f} s each in "
        f"{ROUNDS} alternating slices"
    )
    for label, rate, failed, elapsed, cpu, client_cpu in (
        ("GET /v1/health (baseline)", health_rate, h_failed, h_time, h_cpu, h_client),
        ("POST heartbeat", beat_rate, b_failed, b_time, b_cpu, b_client),
    ):
        done = rate * elapsed
        print(
            f"  {label + ':':27}{rate:6.0f} /s  ({failed:.0f} failed; server used "
            f"{cpu / elapsed:.2f} CPU, {cpu / done * 1000:.2f} ms per request; client "
            f"{client_cpu / done * 1000:.2f} ms per request)"
        )
    goal = "met" if beat_rate >= GOAL_PER_SECOND else "NOT met"
    ratio_goal = "met" if beat_rate / health_rate >= GOAL_RATIO else "NOT met"
    print(
        f"  heartbeats / health: ratio {beat_rate / health_rate:.2f}x "
        f"(goal >= {GOAL_RATIO}x: {ratio_goal})   "
        f"(goal >= {GOAL_PER_SECOND} heartbeats/s: {goal})"
    )
    print(
        f"  one connection, sequential: health {h_one[2] / h_one[0] * 1000:.1f} ms, "
        f"heartbeat {b_one[2] / b_one[0] * 1000:.1f} ms per request"
    )
    print(f"  cluster {ids[0]}: status {one['status']}, last heartbeat {one['last_heartbeat_at']}")
    if py_spy:
        print_profile(profile)
    else:
        shutil.rmtree(root, ignore_errors=True)


def print_profile(path: Path, top: int = 20) -> None:
    """From py-spy's collapsed stacks: the share of samples spent in each package (self
    time, by the file of the innermost frame), and the top billow and powertools frames
    (inclusive)."""
    packages: dict[str, int] = {}
    frames: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        where = stack.split(";")[-1].rpartition("(")[2].split(":")[0].split("/")
        package = "/".join(where[:2]) if where[0] == "billow_control" else where[0]
        packages[package] = packages.get(package, 0) + n
        for frame in set(stack.split(";")):
            if "billow_control/" in frame or "openapi_validation" in frame:
                frames[frame] = frames.get(frame, 0) + n
    print(f"  server profile, heartbeats ({total} samples of the thread holding the GIL; {path})")
    for title, table in (("self time by package", packages), ("inclusive", frames)):
        print(f"   {title}:")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * n / total:5.1f}%  {name}")


# -- reaper pass -----------------------------------------------------------------------


@contextmanager
def dynamodb(url: str) -> Iterator[DynamoDBStore]:
    store = DynamoDBStore(f"bench-{uuid.uuid4().hex[:8]}-", host=url)
    create_tables(store)
    try:
        yield store
    finally:
        delete_tables(store)


class Measured:
    """A fleet of ACTIVE active and ``stopped`` stopped clusters on one store, its pass
    times and the items each pass read (DynamoDB)."""

    def __init__(self, store: Store, stopped: int) -> None:
        self.fleet = Fleet(store)
        self.reads = ItemsRead(store) if isinstance(store, DynamoDBStore) else None
        start = time.perf_counter()
        self.fleet.add_active(ACTIVE)
        self.fleet.add_stopped(stopped)
        self.populated = time.perf_counter() - start
        self.fleet.reap()  # warm connections and caches
        self.times: list[float] = []
        self.items: set[int] = set()
        self.requests: set[int] = set()

    def one_pass(self) -> None:
        if self.reads is not None:
            self.reads.reset()
        start = time.perf_counter()
        report = self.fleet.reap()
        self.times.append(time.perf_counter() - start)
        assert report.clusters_read == ACTIVE, report
        if self.reads is not None:
            assert self.reads.table_scans == 0, "the reaper Scanned the clusters table"
            self.items.add(self.reads.items)
            self.requests.add(len(self.reads.calls))

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def items_read(self) -> str:
        return "-" if not self.items else "/".join(str(n) for n in sorted(self.items))

    @property
    def read_requests(self) -> str:
        return "-" if not self.requests else "/".join(str(n) for n in sorted(self.requests))


def bench_reaper() -> None:
    @contextmanager
    def sqlite() -> Iterator[SqliteStore]:
        directory = Path(tempfile.mkdtemp(prefix="billow-bench-reaper-"))
        try:
            yield SqliteStore(directory / "billow.db")
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    print(
        f"reaper pass, {ACTIVE} active clusters: {STOPPED} stopped vs none (baseline), "
        f"median of {PASSES} passes of each, alternating"
    )
    with moto_server(Path(tempfile.mkdtemp(prefix="billow-bench-moto-"))) as url:
        for label, make in (("SQLite file", sqlite), ("DynamoDB (moto)", lambda: dynamodb(url))):
            with make() as base_store, make() as full_store:
                base, full = Measured(base_store, 0), Measured(full_store, STOPPED)
                for _ in range(PASSES):
                    base.one_pass()
                    full.one_pass()
            print(
                f"  {label:16} {full.median_ms:7.1f} ms vs {base.median_ms:7.1f} ms, "
                f"ratio {full.median_ms / base.median_ms:.2f}x; items read per pass "
                f"{full.items_read} vs {base.items_read}, read requests per pass "
                f"{full.read_requests} (goal <= 3)  (populated in {full.populated:.1f} s)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per heartbeat run")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="keep-alive connections")
    parser.add_argument(
        "--py-spy", metavar="PATH", help="py-spy executable: profile the server's heartbeats"
    )
    parser.add_argument("--only", choices=["heartbeats", "reaper"], default=None)
    parser.add_argument(
        "--synchronous",
        default="FULL,NORMAL",
        help="SQLite synchronous settings of the heartbeat runs, comma-separated",
    )
    args = parser.parse_args()
    if args.only in (None, "heartbeats"):
        for synchronous in args.synchronous.upper().split(","):
            bench_heartbeats(args.seconds, args.clients, args.py_spy, synchronous)
    if args.only in (None, "reaper"):
        bench_reaper()
    return 0


if __name__ == "__main__":
    sys.exit(main())
