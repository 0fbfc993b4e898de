"""One unprivileged OS user per owner, for the local instances of a server run as root.

``billow server`` run by root starts each instance as the OS user of the cluster's owner
(``billow-u-<16 hex digits>``), created on first use with ``useradd --system`` (no home,
no login shell, a group of its own) and cached. An instance then cannot read the data
directory (0700 root), the server's login file, nor the instance directories and
environments of another owner (0700, owned by theirs), nor another user's
``/proc/<pid>/environ``; the server, being root, can still signal and kill it.

``isolation_problem`` says why the server cannot do that (not root, no ``useradd``, or an
agent interpreter that unprivileged users cannot run, such as a pyenv under ``/root``);
the embedded runtime then runs single-tenant.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ACCOUNT_PREFIX = "billow-u-"
_OWNER_ID = re.compile(r"^u-([0-9a-f]{16})$")
# Run as ``nobody`` by isolation_problem: can an unprivileged user import the agent and
# reach the instance directories? (find_spec: no import of Dask, so it takes ~50 ms.)
_PROBE = """
import importlib.util, os, sys
missing = [m for m in ("billow", "billow_control", "distributed")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("cannot import " + ", ".join(missing))
if not os.access(sys.argv[1], os.X_OK):
    sys.exit("cannot reach " + sys.argv[1])
"""


class IsolationError(RuntimeError):
    """An owner's OS user cannot be created or is not one Billow made."""


@dataclass(frozen=True)
class Account:
    """The OS user the instances of one owner run as."""

    owner: str
    name: str
    uid: int
    gid: int


def account_name(owner: str) -> str:
    """``billow-u-<the owner id's hex digits>``, or of its sha256 for another id format."""
    match = _OWNER_ID.match(owner)
    digits = match.group(1) if match else hashlib.sha256(owner.encode()).hexdigest()[:16]
    return ACCOUNT_PREFIX + digits


def _comment(owner: str) -> str:
    return f"billow tenant {owner}"


def _nologin() -> str:
    for shell in ("/usr/sbin/nologin", "/sbin/nologin"):
        if os.path.exists(shell):
            return shell
    return "/bin/false"


class TenantAccounts:
    """Creates (on first use) and caches the OS user of each owner. Needs root."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._lock = threading.Lock()

    def account_for(self, owner: str) -> Account:
        """The owner's account, created if missing.

        Raises ``IsolationError`` if ``useradd`` fails, or if a user of that name exists
        that Billow did not create for this owner (another comment, or uid 0).
        """
        with self._lock:
            account = self._accounts.get(owner)
            if account is None:
                account = self._find(owner)
                if account is None:
                    account = self._create(owner)
                self._accounts[owner] = account
            return account

    def _find(self, owner: str) -> Account | None:
        name = account_name(owner)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        if entry.pw_gecos != _comment(owner) or entry.pw_uid == 0 or entry.pw_gid == 0:
            raise IsolationError(
                f"the OS user {name} exists but was not created by Billow for {owner}; "
                "remove it or rename it"
            )
        return Account(owner, name, entry.pw_uid, entry.pw_gid)

    def _create(self, owner: str) -> Account:
        name = account_name(owner)
        command = [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            _nologin(),
            "--user-group",
            "--comment",
            _comment(owner),
            name,
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=_tool_env())
        if done.returncode == 9:  # created meanwhile by another server on this machine
            found = self._find(owner)
            if found is not None:
                return found
        if done.returncode != 0:
            raise IsolationError(
                f"cannot create the OS user {name}: {done.stderr.strip() or done.returncode}"
            )
        account = self._find(owner)
        if account is None:
            raise IsolationError(f"useradd succeeded but there is no OS user {name}")
        return account


def _tool_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def nobody() -> tuple[int, int]:
    """uid and gid of ``nobody`` (65534 where the system has no such entry)."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def isolation_problem(python: str, environment: Mapping[str, str], workspace: Path) -> str | None:
    """Why instances cannot run as unprivileged OS users here, or ``None`` if they can.

    They can when this process is root, ``useradd`` is installed, and ``nobody`` can run
    ``python`` with ``environment`` (the instances' own), find ``billow``,
    ``billow_control`` and ``distributed``, and reach ``workspace``.
    """
    if os.geteuid() != 0:
        return "the server does not run as root"
    if shutil.which("useradd", path=_tool_env()["PATH"]) is None:
        return "useradd is not installed"
    uid, gid = nobody()
    try:
        done = subprocess.run(
            [python, "-c", _PROBE, str(workspace)],
            user=uid,
            group=gid,
            extra_groups=[],
            env=dict(environment),
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"an unprivileged user cannot run the agent's interpreter {python}: {e}"
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"an unprivileged user cannot run the agent with {python}: {detail}"
    return None
