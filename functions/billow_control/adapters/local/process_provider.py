"""Local-process provider: each "instance" is a ``python -m billow.agent`` process.

Instances are recorded (with their tags) in their own SQLite file before they start, each
runs in its own session so its whole process group can be signalled, and liveness is read
from ``/proc`` (pid plus start time, so a reused pid is never mistaken for an instance).
Terminating sends SIGTERM to the group, and SIGKILL once the grace period has passed on a
later call; that keeps ``terminate`` idempotent and crash-safe.

Instances that run a cluster's own software build (or reuse) its environment under
``env_cache``, shared by the instances of this machine and keyed by the spec's hash.

Each instance gets a directory of its own (its working directory, ``instance.log``,
``exit_code``) and, inside it, ``scratch/``: Dask's temporary directory, where workers
spill. ``sweep_cluster_resources`` deletes the scratch directories of finished clusters
(a killed worker never cleans up after itself); logs stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ...core.models import InstanceInfo, InstanceRole, InstanceSpec, InstanceState, new_id
from ...core.ports import Clock

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    client_token TEXT UNIQUE NOT NULL,
    cluster_id TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    tags TEXT NOT NULL,
    pid INTEGER,
    pid_start TEXT,
    launched_at TEXT NOT NULL,
    terminate_requested_at TEXT,
    gone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_cluster ON instances(cluster_id);
"""

SCRATCH = "scratch"
_COLUMNS = "id, cluster_id, name, role, tags, pid, pid_start, launched_at, terminate_requested_at"


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot, or ``None`` if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


class LocalProcessProvider:
    """Implements ``billow_control.core.ports.Provider`` with local processes."""

    def __init__(
        self,
        root: Path,
        deployment: str,
        clock: Clock,
        grace_period: float = 5.0,
        python: str = sys.executable,
        env_cache: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.deployment = deployment
        self.clock = clock
        self.grace_period = grace_period
        self.python = python
        self.env_cache = Path(env_cache) if env_cache is not None else self.root / "envs"
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "instances.db", timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def instance_dir(self, instance_id: str) -> Path:
        return self.root / instance_id

    # -- Provider ----------------------------------------------------------------------

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        with self._lock:
            row = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS} FROM instances WHERE client_token=?", (spec.client_token,)
                )
                .fetchone()
            )
            if row is not None:
                return self._info(row)
            instance_id = new_id("i")
            now = self.clock.now().isoformat()
            self._db().execute(
                "INSERT INTO instances (id, client_token, cluster_id, name, role, tags, "
                "launched_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    instance_id,
                    spec.client_token,
                    spec.cluster_id,
                    spec.name,
                    spec.role.value,
                    json.dumps(spec.tags),
                    now,
                ),
            )
            directory = self.instance_dir(instance_id)
            directory.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                **spec.environment,
                "BILLOW_INSTANCE_ID": instance_id,
                "BILLOW_INSTANCE_DIR": str(directory),
                "BILLOW_INSTANCE_NAME": spec.name,
                "BILLOW_DEPLOYMENT": self.deployment,
                "DASK_TEMPORARY_DIRECTORY": str(directory / SCRATCH),
                "BILLOW_ENV_CACHE": str(self.env_cache),
                "PYTHONUNBUFFERED": "1",
            }
            with open(directory / "instance.log", "ab") as logfile:
                proc = subprocess.Popen(
                    [self.python, "-m", "billow.agent"],
                    env=env,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._children[proc.pid] = proc
            self._db().execute(
                "UPDATE instances SET pid=?, pid_start=? WHERE id=?",
                (proc.pid, process_start_time(proc.pid), instance_id),
            )
            row = (
                self._db()
                .execute(f"SELECT {_COLUMNS} FROM instances WHERE id=?", (instance_id,))
                .fetchone()
            )
        return self._info(row)

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        rows = (
            self._db()
            .execute(
                f"SELECT {_COLUMNS} FROM instances WHERE cluster_id=? ORDER BY launched_at",
                (cluster_id,),
            )
            .fetchall()
        )
        return [self._info(r) for r in rows]

    def terminate(self, instance_ids: list[str]) -> None:
        now = self.clock.now()
        for instance_id in instance_ids:
            row = (
                self._db()
                .execute(f"SELECT {_COLUMNS} FROM instances WHERE id=?", (instance_id,))
                .fetchone()
            )
            if row is None or not self._alive(row):
                continue
            pid, requested = row[5], row[8]
            if requested is None:
                self._db().execute(
                    "UPDATE instances SET terminate_requested_at=? WHERE id=?",
                    (now.isoformat(), instance_id),
                )
                self._signal(pid, signal.SIGTERM)
            elif (now - datetime.fromisoformat(requested)).total_seconds() >= self.grace_period:
                self._signal(pid, signal.SIGKILL)

    def tail_logs(self, instance_id: str, lines: int = 50) -> list[str]:
        path = self.instance_dir(instance_id) / "instance.log"
        try:
            with open(path, errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
        except FileNotFoundError:
            return []

    def list_deployment_instances(self) -> list[InstanceInfo]:
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM instances WHERE gone=0").fetchall()
        infos = [self._info(r) for r in rows]
        return [
            i
            for i in infos
            if i.state != InstanceState.terminated
            and i.tags.get("billow:deployment") == self.deployment
        ]

    def sweep_cluster_resources(self, is_active: Callable[[str], bool]) -> list[str]:
        """Delete the scratch directories of every cluster that is not active and has no
        live instance; returns the clusters cleaned. Logs are kept."""
        clusters: dict[str, list[tuple]] = {}
        for row in self._db().execute(f"SELECT {_COLUMNS} FROM instances"):
            if (self.instance_dir(row[0]) / SCRATCH).exists():
                clusters.setdefault(row[1], []).append(row)
        cleaned = []
        for cluster_id, rows in sorted(clusters.items()):
            if is_active(cluster_id) or self.describe_live(cluster_id):
                continue
            for row in rows:
                shutil.rmtree(self.instance_dir(row[0]) / SCRATCH, ignore_errors=True)
            cleaned.append(cluster_id)
        return cleaned

    # -- helpers -------------------------------------------------------------------------

    def describe_live(self, cluster_id: str) -> list[InstanceInfo]:
        return [i for i in self.describe(cluster_id) if i.state != InstanceState.terminated]

    def kill_all(self) -> None:
        """SIGKILL every live instance (test and shutdown helper)."""
        for row in self._db().execute(f"SELECT {_COLUMNS} FROM instances WHERE gone=0"):
            if self._alive(row):
                self._signal(row[5], signal.SIGKILL)

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _alive(self, row: tuple) -> bool:
        pid, pid_start = row[5], row[6]
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            return False
        return process_start_time(pid) == pid_start

    def _exit_code(self, instance_id: str, pid: int | None) -> int | None:
        child = self._children.get(pid) if pid is not None else None
        if child is not None and child.returncode is not None:
            return child.returncode
        try:
            return int((self.instance_dir(instance_id) / "exit_code").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _info(self, row: tuple) -> InstanceInfo:
        instance_id, cluster_id, name, role, tags, pid, _, launched_at, _ = row
        launched = datetime.fromisoformat(launched_at)
        if pid is None:
            # Recorded but never started (crash between insert and spawn): give it a
            # moment, then report it gone so the reconciler launches a replacement.
            age = (self.clock.now() - launched).total_seconds()
            state = InstanceState.pending if age < 30 else InstanceState.terminated
        elif self._alive(row):
            state = InstanceState.running
        else:
            state = InstanceState.terminated
            self._db().execute("UPDATE instances SET gone=1 WHERE id=? AND gone=0", (instance_id,))
        return InstanceInfo(
            id=instance_id,
            cluster_id=cluster_id,
            name=name,
            role=InstanceRole(role),
            state=state,
            tags=json.loads(tags),
            launched_at=launched,
            exit_code=self._exit_code(instance_id, pid)
            if state == InstanceState.terminated
            else None,
        )
