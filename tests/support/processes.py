"""Start real servers for tests on 127.0.0.1 and stop them by PID (process group)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from billow._processes import pid_alive  # noqa: F401  (re-exported for tests)
from tests.support.tenants import shared_python

ROOT = Path(__file__).resolve().parents[2]


def is_root() -> bool:
    return os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until true; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


class EmbeddedServer:
    """``billow server`` as a subprocess with its own data dir and login file.

    As root (CI), the server isolates tenants as in production: it runs from an
    interpreter unprivileged users can run (``tests.support.tenants.shared_python``) with
    its instances in a directory of ``/tmp`` they can reach (pytest's ``tmp_path`` is
    0700 root). ``kill_instances`` (the last step of every test using one) also deletes
    that directory and the OS users the server created.
    """

    def __init__(
        self,
        root: Path,
        port: int = 0,
        env: dict[str, str] | None = None,
        python: str | None = None,
        login_file: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.login_file = Path(login_file) if login_file else self.root / "login.yaml"
        self.log_path = self.root / "server.log"
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.python = python or (shared_python() or sys.executable if is_root() else sys.executable)
        self.instance_dir: Path | None = None
        if is_root():
            self.instance_dir = Path(tempfile.mkdtemp(prefix="billow-test-instances-"))
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> EmbeddedServer:
        (self.data_dir / "server.json").unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        where = ["--instance-dir", str(self.instance_dir)] if self.instance_dir else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "billow.cli",
                    "server",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--login-file",
                    str(self.login_file),
                    *where,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        info = self.data_dir / "server.json"
        wait_until(lambda: info.exists() or self.proc.poll() is not None, timeout, "server.json")
        if self.proc.poll() is not None:
            raise RuntimeError(f"billow server exited:\n{self.log_path.read_text()[-3000:]}")
        self.url = json.loads(info.read_text())["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        wait_until(lambda: http_ok(self.url + "/v1/health"), timeout, "server health")
        return self

    @property
    def token(self) -> str:
        import yaml

        return yaml.safe_load(self.login_file.read_text())["billow"]["token"]

    def kill(self) -> None:
        """SIGKILL the server process alone (its instances keep running, as in a crash)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def instance_pids(self, cluster_id: str | None = None) -> list[int]:
        """PIDs of the instances the provider launched (of one cluster, if given)."""
        import sqlite3

        db = self.data_dir / "instances" / "instances.db"
        if not db.exists():
            return []
        sql = "SELECT pid FROM instances WHERE pid IS NOT NULL"
        args: tuple[str, ...] = ()
        if cluster_id is not None:
            sql, args = sql + " AND cluster_id=?", (cluster_id,)
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute(sql, args)]

    def _instance_rows(self, cluster_id: str) -> list[dict[str, object]]:
        db = self.data_dir / "instances" / "instances.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM instances WHERE cluster_id=?", (cluster_id,))
            return [dict(r) for r in rows]

    def instance_dirs(self, cluster_id: str) -> list[Path]:
        """The working directories of the instances of ``cluster_id``."""
        return [
            Path(str(r["workdir"]))
            if r.get("workdir")
            else self.data_dir / "instances" / str(r["id"])
            for r in self._instance_rows(cluster_id)
        ]

    def instance_users(self, cluster_id: str) -> set[str]:
        """The OS users the instances of ``cluster_id`` run as (none if not isolated)."""
        return {str(r["os_user"]) for r in self._instance_rows(cluster_id) if r.get("os_user")}

    def instance_logs(self, cluster_id: str) -> list[Path]:
        """The ``instance.log`` files the server keeps for the instances of ``cluster_id``."""
        return [
            self.data_dir / "instances" / str(r["id"]) / "instance.log"
            for r in self._instance_rows(cluster_id)
        ]

    def live_instance_pids(self, cluster_id: str | None = None) -> list[int]:
        return [p for p in self.instance_pids(cluster_id) if pid_alive(p)]

    @property
    def multi_tenant(self) -> bool:
        """Whether the server isolates tenants (and so accepts a second user)."""
        return "one unprivileged OS user per owner" in self.log_path.read_text()

    def env_caches(self) -> list[Path]:
        """Where instances build environments: the shared cache, or each owner's."""
        caches = [self.data_dir / "envs"]
        if self.instance_dir is not None:
            caches += sorted((self.instance_dir / "users").glob("*/envs"))
        return [c for c in caches if c.is_dir()]

    def kill_instances(self) -> None:
        """SIGKILL every live instance; once the server is stopped too, delete what it
        made outside its root (the instance directory, the OS users of its tenants)."""
        pids = self.live_instance_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self.proc is None or self.proc.poll() is None:
            return
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not [p for p in pids if pid_alive(p)], 10, "instances gone")
        db = self.data_dir / "instances" / "instances.db"
        if db.exists():
            with (
                contextlib.closing(sqlite3.connect(db)) as conn,
                contextlib.suppress(sqlite3.OperationalError),  # a db made before accounts
            ):
                for (name,) in conn.execute("SELECT name FROM accounts").fetchall():
                    subprocess.run(["userdel", "--force", name], capture_output=True)
        if self.instance_dir is not None:
            shutil.rmtree(self.instance_dir, ignore_errors=True)


# moto_server with one request at a time. The threaded moto_server applies a
# TransactWriteItems as a sequence of writes rolled back by restoring a copy of the table, so
# concurrent transactions interleave (seen: a cancelled create left its cluster item behind).
# DynamoDB makes each conditional write and each transaction atomic and isolated; one request
# at a time is the faithful stand-in for that.
_SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


@contextmanager
def moto_server(log_dir: Path, serial: bool = False) -> Iterator[str]:
    """A real ``moto_server`` on a free loopback port (one request at a time if ``serial``),
    with dummy AWS credentials in the environment; stopped by PID on exit."""
    port = free_port()
    if serial:
        command = [sys.executable, "-c", _SERIAL_MOTO, str(port)]
    else:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        command = [exe or "moto_server", "-H", "127.0.0.1", "-p", str(port)]
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Step Functions tasks call other services (SQS) on localhost:$MOTO_PORT.
            env={**os.environ, "MOTO_PORT": str(port)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url + "/moto-api/"), 60, "moto_server")
        # moto's credentials for this process; and since clusters forward the client's
        # AWS identity by default (STS session credentials), its STS is moto's too:
        # loopback only, never sts.amazonaws.com or the instance metadata address.
        for key, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_STS", url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ):
            os.environ.setdefault(key, value)
        yield url
    finally:
        stop_process(proc)
