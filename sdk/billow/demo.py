"""``make demo``: the seed's example end to end on the embedded control plane.

Starts ``billow server`` on a free loopback port with a throw-away data dir, asks it for
a 4-worker cluster, computes ``da.random.random((10000, 10000)).sum()`` over mutual TLS,
closes the cluster, stops the server, and checks that no process or port is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from billow._processes import pid_alive


def _port_open(url: str) -> bool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _phase(name: str, started: float) -> float:
    now = time.perf_counter()
    print(f"  {name:<38} {now - started:6.2f} s", flush=True)
    return now


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="billow-demo-"))
    data_dir, login = root / "data", root / "login.yaml"
    print(f"Billow demo (state in {root})")
    t = time.perf_counter()
    with open(root / "server.log", "wb") as server_log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "billow.cli",
                "server",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--login-file",
                str(login),
            ],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        info = data_dir / "server.json"
        deadline = time.monotonic() + 60
        while not info.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print((root / "server.log").read_text(), file=sys.stderr)
                raise SystemExit("billow server did not start")
            time.sleep(0.05)
        url = json.loads(info.read_text())["url"]
        token = yaml.safe_load(login.read_text())["billow"]["token"]
        t = _phase(f"control plane up at {url}", t)

        import dask.array as da
        from dask.distributed import Client

        import billow

        # Nothing to forward to local processes: no credentials, and no notice about them.
        with billow.Cluster(
            n_workers=4, name="demo", server=url, token=token, credentials=None
        ) as cluster:
            t = _phase(f"cluster {cluster.name} ready (4 workers, TLS)", t)
            with Client(cluster) as client:
                client.wait_for_workers(4)
                t = _phase("client connected over mutual TLS", t)
                result = da.random.random((10000, 10000)).sum().compute()
                t = _phase("computed random((10000, 10000)).sum()", t)
                print(f"  result = {result:.6e}  (expected about 5.0e7)")
        t = _phase("cluster closed (instances terminated)", t)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    t = _phase("control plane stopped", t)

    with sqlite3.connect(data_dir / "instances" / "instances.db") as db:
        pids = [r[0] for r in db.execute("SELECT pid FROM instances WHERE pid IS NOT NULL")]
    left = [p for p in pids if pid_alive(p)] + ([server.pid] if pid_alive(server.pid) else [])
    if left or _port_open(url):
        print(f"LEFT BEHIND: pids {left}, port open: {_port_open(url)}", file=sys.stderr)
        return 1
    print(f"  no billow process or listening port left ({len(pids)} instances checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
