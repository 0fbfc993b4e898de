"""Starting ``python -m billow.agent`` for a local instance: cold, or from the warm pool.

Cold (``start_agent``): a new process with the instance's environment, its token through
an inherited pipe, its OS identity, its output through a log keeper.

Warm (``WarmPool``): ``size`` processes of the server's own environment started ahead of
time with ``--pooled``: each has imported Dask, the scheduler, the worker and the
dashboard, and waits on its standard input for one assignment. ``assign`` hands a pooled
process its instance (working directory, environment, token, OS identity: the agent
changes to it before it reads anything else), renames its log directory to the
instance's, and never hands it out again; the pool starts a fresh process in its place,
``REFILL_PAUSE`` seconds after the last take (warming one competes for the CPU).
A pooled process holds no certificate, token or setting of any cluster until assigned,
and it runs only the server's own code until then. A cluster with software of its own
(``BILLOW_SOFTWARE_KEY``) always starts cold: its agent runs from its own environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .instance_logs import open_log_pipe
from .instance_setup import TOKEN_FD_VARIABLE, identity, instance_environment, token_pipe
from .tenant_users import Account

log = logging.getLogger(__name__)

POOL = "pool"
READY_FD_VARIABLE = "BILLOW_POOL_READY_FD"  # a pooled agent writes "warm\n" there
WARM_TIMEOUT = 120.0
REFILL_PAUSE = 3.0  # seconds after a take before the pool warms a replacement


def start_agent(
    python: str,
    env: dict[str, str],
    workdir: Path,
    log_path: Path,
    log_limit: int,
    token: str | None,
    account: Account | None,
) -> subprocess.Popen:
    """A new agent process for one instance, its own session and process group."""
    token_fd = token_pipe(token) if token else None
    if token_fd is not None:
        env = {**env, TOKEN_FD_VARIABLE: str(token_fd)}
    output = None
    try:
        output = open_log_pipe(log_path, log_limit)
        return subprocess.Popen(
            [python, "-m", "billow.agent"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=() if token_fd is None else (token_fd,),
            **identity(account),
        )
    finally:
        for fd in (token_fd, output):
            if fd is not None:
                os.close(fd)


@dataclass
class Pooled:
    proc: subprocess.Popen
    log_dir: Path


class WarmPool:
    """Up to ``size`` pooled agents under ``root/pool``, refilled by a background thread.

    ``take`` never blocks: ``None`` when the pool is empty (the caller starts cold).
    """

    def __init__(
        self, size: int, root: Path, python: str, pythonpath: str | None, log_limit: int
    ) -> None:
        self.size = size
        self.directory = root / POOL
        self.python = python
        self.pythonpath = pythonpath
        self.log_limit = log_limit
        self._idle: list[Pooled] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reported = False
        self._taken_at = -math.inf

    def start(self) -> None:
        if self.size <= 0:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._fill, name="billow-warm-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refilling and end every pooled process that was not assigned."""
        with self._cond:
            self._stopping = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for pooled in idle:
            self._discard(pooled)
        if self._thread is not None:
            self._thread.join(10)

    def take(self) -> Pooled | None:
        """A live pooled process, no longer the pool's; ``None`` if there is none."""
        with self._cond:
            while self._idle:
                pooled = self._idle.pop(0)
                self._taken_at = time.monotonic()
                self._cond.notify_all()  # refill
                if pooled.proc.poll() is None:
                    return pooled
                self._discard(pooled)
        return None

    def idle_pids(self) -> list[int]:
        with self._cond:
            return [p.proc.pid for p in self._idle]

    def assign(
        self,
        pooled: Pooled,
        log_dir: Path,
        workdir: Path,
        env: dict[str, str],
        token: str | None,
        account: Account | None,
    ) -> subprocess.Popen:
        """Make ``pooled`` the agent of one instance (see the module's docstring)."""
        os.replace(pooled.log_dir, log_dir)
        assignment = {
            "workdir": str(workdir),
            "environ": env,
            "token": token,
            "uid": account.uid if account else None,
            "gid": account.gid if account else None,
        }
        stdin = pooled.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(assignment).encode() + b"\n")
            stdin.close()
        except BrokenPipeError:
            self._discard(pooled)
            raise
        return pooled.proc

    def memory_bytes(self) -> int:
        """The resident memory of the idle pooled processes."""
        total = 0
        for pid in self.idle_pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = Path(f"/proc/{pid}/status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
                total += int(line.split()[1]) * 1024
        return total

    def _spawn(self) -> Pooled | None:
        """One pooled agent, once it says it is warm (imports done); ``None`` if it died
        or took over ``WARM_TIMEOUT`` seconds. One at a time: warming is CPU-bound."""
        log_dir = self.directory / uuid.uuid4().hex[:12]
        log_dir.mkdir(mode=0o700)
        ready_read, ready_write = os.pipe()
        env = {
            **instance_environment(self.python, self.pythonpath),
            "HOME": str(log_dir),
            READY_FD_VARIABLE: str(ready_write),
        }
        output = open_log_pipe(log_dir / "instance.log", self.log_limit)
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "billow.agent", "--pooled"],
                env=env,
                cwd=log_dir,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
                pass_fds=(ready_write,),
            )
        finally:
            os.close(output)
            os.close(ready_write)
        pooled = Pooled(proc, log_dir)
        try:
            readable, _, _ = select.select([ready_read], [], [], WARM_TIMEOUT)
            warm = bool(readable) and os.read(ready_read, 16) == b"warm\n"
        finally:
            os.close(ready_read)
        if not warm:
            log.warning("warm pool: a pooled agent did not warm up; see %s", log_dir)
            self._discard(pooled)
            return None
        return pooled

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and len(self._idle) >= self.size:
                    self._cond.wait()
                # A refill warms up at full CPU: let the cluster that just took agents
                # start and run its first work first (each take restarts the pause).
                while (
                    not self._stopping
                    and (pause := self._taken_at + REFILL_PAUSE - time.monotonic()) > 0
                ):
                    self._cond.wait(pause)
                if self._stopping:
                    return
            try:
                pooled = self._spawn()
            except OSError:
                log.exception("warm pool: cannot start a pooled agent")
                pooled = None
            with self._cond:
                if pooled is None:
                    self._cond.wait(5)  # then try again
                    continue
                if self._stopping:
                    self._discard(pooled)
                    return
                self._idle.append(pooled)
                full = len(self._idle) == self.size and not self._reported
            if full:
                self._reported = True
                log.info(
                    "warm pool: %d agents of the server's environment ready, %.0f MiB "
                    "resident in all",
                    self.size,
                    self.memory_bytes() / 2**20,
                )

    @staticmethod
    def _discard(pooled: Pooled) -> None:
        with contextlib.suppress(OSError):
            if pooled.proc.stdin is not None:
                pooled.proc.stdin.close()  # end of input: a pooled agent exits
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pooled.proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            pooled.proc.wait(5)
