"""What a local instance process starts with, and nothing more.

Its environment is what ``instance_environment`` lists: the bootstrap variables of its
spec, a ``PATH`` of the interpreter's and the system's directories, the locale, the TLS
trust paths, and ``PYTHONPATH`` only when the server imports billow through it (a source
checkout). Its one-time token comes through an inherited pipe
(``BILLOW_INSTANCE_TOKEN_FD``), never its environment, so ``/proc/<pid>/environ`` shows no
secret. It runs as its owner's OS user when the server isolates tenants (``identity``),
in a working directory of its own (``make_workdir``) inside a root-owned workspace.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .tenant_users import Account, IsolationError

USERS = "users"  # workspace/users/<os user>/envs: each owner's environment cache
SCRATCH = "scratch"
HOME = "home"

TOKEN_VARIABLE = "BILLOW_INSTANCE_TOKEN"  # in the spec (EC2 user data exports it)
TOKEN_FD_VARIABLE = "BILLOW_INSTANCE_TOKEN_FD"  # what local instances get instead
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The only variables of the server's environment an instance gets (none is a secret).
PASSED_THROUGH = ("LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR")
_AGENT_PACKAGES = ("billow", "billow_control")


def agent_pythonpath(environ: Mapping[str, str] = os.environ) -> str | None:
    """The entries of ``environ``'s ``PYTHONPATH`` this process imports billow and
    billow_control from (a source checkout run with ``PYTHONPATH=functions:sdk``), or
    ``None`` when they come from the interpreter's own site-packages: the agent must
    import the same code as the server, and nothing else of the server's path."""
    entries = [e for e in environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    needed: list[str] = []
    for package in _AGENT_PACKAGES:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            parent = Path(location).resolve().parent
            needed += [e for e in entries if Path(e).resolve() == parent and e not in needed]
    return os.pathsep.join(needed) or None


def instance_environment(python: str, pythonpath: str | None) -> dict[str, str]:
    """What every instance process starts with, before its spec's variables.

    ``PATH``: the bin directories of the agent's interpreter ``python`` (as named, and
    resolved: its venv's and its installation's, where uv finds the server's own Python
    for a cluster's environment) and the system's; the server's locale; its TLS trust
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``: paths of CA bundles, which uv and httpx need
    where a private CA signs the package index or the control plane); ``PYTHONPATH``
    only when the agent needs it to import billow; ``PYTHONUNBUFFERED``. Nothing else of
    the server's environment.
    """
    directories = [os.path.dirname(python), os.path.dirname(os.path.realpath(python))]
    directories += SAFE_PATH.split(os.pathsep)
    env = {"PATH": os.pathsep.join(dict.fromkeys(d for d in directories if d))}
    env["LANG"] = os.environ.get("LANG") or "C.UTF-8"
    for name in PASSED_THROUGH:
        if os.environ.get(name):
            env[name] = os.environ[name]
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare_workspace(workspace: Path) -> None:
    """Make ``workspace`` (and its ``users/``) root-owned directories of mode 0711: every
    instance user can reach its own directory inside, none can list them.

    Raises ``IsolationError`` if either is a symbolic link or not a directory.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    for directory in (workspace, workspace / USERS):
        directory.mkdir(exist_ok=True)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise IsolationError(f"{directory} must be a directory, not a link or a file")
        os.chown(directory, 0, 0)
        os.chmod(directory, 0o711)


def token_pipe(token: str) -> int:
    """The read end of a pipe that holds ``token`` (and nothing more: the write end is
    closed). Non-inheritable, except by the child it is passed to with ``pass_fds``."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, token.encode())
    finally:
        os.close(write_end)
    return read_end


def identity(account: Account | None) -> dict[str, Any]:
    """``Popen`` arguments that start the process as ``account``, without the server's
    supplementary groups, and with files private to it by default."""
    if account is None:
        return {"umask": 0o077}
    return {"user": account.uid, "group": account.gid, "extra_groups": [], "umask": 0o077}


def make_workdir(workdir: Path, account: Account | None) -> None:
    """The instance's working directory with ``home/`` and ``scratch/``, mode 0700,
    owned by ``account`` (children first: the owner's other instances never see a
    directory of theirs that root still fills)."""
    directories = (workdir, workdir / HOME, workdir / SCRATCH)
    for directory in directories:
        directory.mkdir(mode=0o700, parents=directory is workdir, exist_ok=True)
        os.chmod(directory, 0o700)
    if account is not None:
        for directory in reversed(directories):
            os.chown(directory, account.uid, account.gid)


def owner_env_cache(workspace: Path, account: Account | None, shared: Path) -> Path:
    """Where the instance builds or finds its cluster's environments: the owner's
    own cache when isolated, else the shared ``env_cache``."""
    if account is None:
        return shared
    mine = workspace / USERS / account.name
    try:
        mine.mkdir(mode=0o700)
        os.chown(mine, account.uid, account.gid)
    except FileExistsError:
        st = os.lstat(mine)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != account.uid:
            raise IsolationError(f"{mine} is not a directory of {account.name}") from None
    return mine / "envs"


def read_small(path: Path, limit: int = 64) -> str | None:
    """The first ``limit`` bytes of a regular file, without following a link or blocking
    on a FIFO (an instance user owns the directory), or ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


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
