"""Local-process provider: each "instance" is a ``python -m billow.agent`` process.

Instances are recorded (with their tags) in their own SQLite file before they start, each
runs in its own session so its whole process group can be signalled, and liveness is read
from ``/proc`` (pid plus start time, so a reused pid is never mistaken for an instance).
Terminating sends SIGTERM to the group, and SIGKILL once the grace period has passed on a
later call; that keeps ``terminate`` idempotent and crash-safe.

An instance inherits nothing of the server but what ``instance_setup`` gives it (its
environment, its token through a pipe, its OS identity, its working directory).

Each instance gets a working directory of its own under ``workspace`` (``home/``, its
``HOME``; ``scratch/``, Dask's and ``tempfile``'s temporary directory, where workers
spill; ``exit_code``). Its ``instance.log`` is kept apart, under ``root/<id>/`` (the
server's state), where the instance cannot replace it with a link to something else; the
instance writes it only through a pipe to a log keeper that holds the newest
``log_limit`` bytes (``instance_logs``).
``sweep_cluster_resources`` deletes the scratch directories of finished clusters (a killed
worker never cleans up after itself); logs stay.

With ``accounts`` (the server is root, see ``tenant_users``), each instance runs as its
owner's unprivileged OS user: its working directory is that user's, mode 0700, in a
``workspace`` of mode 0711 that other users cannot list; environments of a cluster's own
software are built by the owner's instances in the owner's cache
(``workspace/users/<os user>/envs``), never shared with another owner, whose instances
could otherwise plant code in them. Without ``accounts`` instances run as the server's
user and share ``env_cache``, keyed by the spec's hash.
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ...core.models import InstanceInfo, InstanceRole, InstanceSpec, InstanceState, new_id
from ...core.ports import Clock
from ...core.tags import OWNER
from .agent_process import WarmPool, start_agent
from .instance_logs import DEFAULT_LOG_LIMIT, tail_lines
from .instance_setup import (
    HOME,
    SCRATCH,
    TOKEN_VARIABLE,
    agent_pythonpath,
    instance_environment,
    make_workdir,
    owner_env_cache,
    prepare_workspace,
    process_start_time,
    read_small,
)
from .port_reservations import HOST, PortReservations
from .tenant_users import Account, IsolationError, TenantAccounts

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
CREATE TABLE IF NOT EXISTS accounts (
    owner TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    uid INTEGER NOT NULL,
    first_used_at TEXT NOT NULL
);
"""
# Columns added after the first release: ALTER TABLE'd into older instances.db files.
# terminated_at: when the provider first saw the process gone (``InstanceInfo.terminated_at``).
# listen_port: a pooled scheduler's port, reserved at launch (``port_reservations``).
_ADDED_COLUMNS = {
    "workdir": "TEXT",
    "os_user": "TEXT",
    "terminated_at": "TEXT",
    "listen_port": "INTEGER",
}

LOG = "instance.log"
_COLUMNS = (
    "id, cluster_id, name, role, tags, pid, pid_start, launched_at, terminate_requested_at, "
    "terminated_at, listen_port"
)


class LocalProcessProvider:
    """Implements ``billow_control.core.ports.Provider`` with local processes.

    ``root`` holds the provider's state (``instances.db``, the instance logs); instance
    working directories go to ``workspace`` (default ``root``). With ``accounts``,
    instances run as their owner's OS user (see the module's docstring).
    """

    def __init__(
        self,
        root: Path,
        deployment: str,
        clock: Clock,
        grace_period: float = 5.0,
        python: str = sys.executable,
        env_cache: Path | None = None,
        workspace: Path | None = None,
        accounts: TenantAccounts | None = None,
        log_limit: int = DEFAULT_LOG_LIMIT,
        warm_pool: int = 0,
    ) -> None:
        self.root = Path(root)
        self.log_limit = log_limit
        self.root.mkdir(parents=True, exist_ok=True)
        self.deployment = deployment
        self.clock = clock
        self.grace_period = grace_period
        self.python = python
        self.env_cache = Path(env_cache) if env_cache is not None else self.root / "envs"
        self.workspace = Path(workspace) if workspace is not None else self.root
        self.accounts = accounts
        if accounts is not None:
            prepare_workspace(self.workspace)
        else:
            self.workspace.mkdir(parents=True, exist_ok=True)
        self.pythonpath = agent_pythonpath()
        self.pool = WarmPool(warm_pool, self.root, python, self.pythonpath, log_limit)
        self._children: dict[int, subprocess.Popen] = {}
        self.reserved_ports = PortReservations()
        self._recorded_owners: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._db().executescript(SCHEMA)
        columns = {row[1] for row in self._db().execute("PRAGMA table_info(instances)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in columns:
                self._db().execute(f"ALTER TABLE instances ADD COLUMN {column} {kind}")

    @property
    def isolates_tenants(self) -> bool:
        """Whether each owner's instances run as an OS user of their own."""
        return self.accounts is not None

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "instances.db", timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def instance_dir(self, instance_id: str) -> Path:
        """The instance's working directory (``root/<id>`` for instances recorded before
        working directories were)."""
        row = (
            self._db()
            .execute("SELECT workdir FROM instances WHERE id=?", (instance_id,))
            .fetchone()
        )
        return Path(row[0]) if row and row[0] else self.root / instance_id

    def log_path(self, instance_id: str) -> Path:
        return self.root / instance_id / LOG

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
            account = self._account(spec)
            instance_id = new_id("i")
            workdir = self.workspace / instance_id
            now = self.clock.now().isoformat()
            self._db().execute(
                "INSERT INTO instances (id, client_token, cluster_id, name, role, tags, "
                "launched_at, workdir, os_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance_id,
                    spec.client_token,
                    spec.cluster_id,
                    spec.name,
                    spec.role.value,
                    json.dumps(spec.tags),
                    now,
                    str(workdir),
                    account.name if account else None,
                ),
            )
            make_workdir(workdir, account)
            log = self.log_path(instance_id)
            pooled = None if "BILLOW_SOFTWARE_KEY" in spec.environment else self.pool.take()
            listen: dict[str, str] = {}
            if spec.role == InstanceRole.scheduler and pooled is not None:
                # Up in 0.1 s: its workers learn where it will listen (port_reservations).
                port = self.reserved_ports.reserve(instance_id)
                self._db().execute(
                    "UPDATE instances SET listen_port=? WHERE id=?", (port, instance_id)
                )
                listen = {"BILLOW_HOST": HOST, "BILLOW_SCHEDULER_PORT": str(port)}
            env = {
                **instance_environment(self.python, self.pythonpath),
                **{k: v for k, v in spec.environment.items() if k != TOKEN_VARIABLE},
                "HOME": str(workdir / HOME),
                "TMPDIR": str(workdir / SCRATCH),
                "BILLOW_INSTANCE_ID": instance_id,
                "BILLOW_INSTANCE_DIR": str(workdir),
                "BILLOW_INSTANCE_NAME": spec.name,
                "BILLOW_DEPLOYMENT": self.deployment,
                "DASK_TEMPORARY_DIRECTORY": str(workdir / SCRATCH),
                "BILLOW_ENV_CACHE": str(owner_env_cache(self.workspace, account, self.env_cache)),
                **listen,
            }
            if account is not None:
                env["USER"] = env["LOGNAME"] = account.name
            token = spec.environment.get(TOKEN_VARIABLE)
            if pooled is not None:
                proc = self.pool.assign(pooled, log.parent, workdir, env, token, account)
            else:
                proc = start_agent(self.python, env, workdir, log, self.log_limit, token, account)
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
        return tail_lines(self.log_path(instance_id), lines)

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

    def _account(self, spec: InstanceSpec) -> Account | None:
        """The OS user the instance runs as (``None``: the server's own), recorded in
        ``accounts`` the first time this provider uses it."""
        if self.accounts is None:
            return None
        owner = spec.tags.get(OWNER)
        if not owner:
            raise IsolationError(f"instance {spec.client_token} has no {OWNER} tag")
        account = self.accounts.account_for(owner)
        if owner not in self._recorded_owners:
            self._db().execute(
                "INSERT OR IGNORE INTO accounts (owner, name, uid, first_used_at) "
                "VALUES (?, ?, ?, ?)",
                (owner, account.name, account.uid, self.clock.now().isoformat()),
            )
            self._recorded_owners.add(owner)
        return account

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
        text = read_small(self.instance_dir(instance_id) / "exit_code")
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def _info(self, row: tuple) -> InstanceInfo:
        instance_id, cluster_id, name, role, tags, pid, _, launched_at, _, ended, port = row
        launched = datetime.fromisoformat(launched_at)
        terminated_at = datetime.fromisoformat(ended) if ended else None
        if pid is None:
            # Recorded but never started (crash between insert and spawn): give it a
            # moment, then report it gone so the reconciler launches a replacement.
            age = (self.clock.now() - launched).total_seconds()
            state = InstanceState.pending if age < 30 else InstanceState.terminated
        elif self._alive(row):
            state = InstanceState.running
        else:
            state = InstanceState.terminated
            self.reserved_ports.release(instance_id)
            if terminated_at is None:  # first seen gone: that moment is its end
                terminated_at = self.clock.now()
                self._db().execute(
                    "UPDATE instances SET gone=1, terminated_at=? "
                    "WHERE id=? AND terminated_at IS NULL",
                    (terminated_at.isoformat(), instance_id),
                )
        return InstanceInfo(
            id=instance_id,
            cluster_id=cluster_id,
            name=name,
            role=InstanceRole(role),
            state=state,
            tags=json.loads(tags),
            launched_at=launched,
            terminated_at=terminated_at if state == InstanceState.terminated else None,
            exit_code=self._exit_code(instance_id, pid)
            if state == InstanceState.terminated
            else None,
            listen_address=f"{HOST}:{port}" if port else None,
        )
