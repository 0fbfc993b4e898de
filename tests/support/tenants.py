"""Helpers for tests of tenant isolation: an interpreter unprivileged users can run.

When ``billow server`` runs as root, instances run as one unprivileged OS user per owner,
so the agent's interpreter, its standard library and the packages it imports must be
readable by such a user. The test interpreter may live where they are not (pyenv under
``/root``, mode 0700): ``shared_python`` then builds a small venv in ``/tmp`` on a system
interpreter of the same major.minor that ``nobody`` can run, whose ``.pth`` adds this
interpreter's site-packages (C extensions of one CPython minor share their ABI).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from billow_control.adapters.local.process_provider import LocalProcessProvider
from billow_control.adapters.local.tenant_users import nobody

PROBE = "import billow, billow_control, distributed"


def runs_unprivileged(python: str, env: dict[str, str] | None = None) -> bool:
    """Whether ``nobody`` can run ``python`` and import billow and distributed with it."""
    env = {"PATH": "/usr/bin:/bin", **(env or {})}
    if "PYTHONPATH" in os.environ:
        env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    return _as_nobody([python, "-c", PROBE], env, timeout=120)


def runs_unprivileged_bare(python: str) -> bool:
    """Whether ``nobody`` can start ``python`` at all."""
    return _as_nobody([python, "-c", "pass"], {"PATH": "/usr/bin:/bin"}, timeout=60)


def _as_nobody(command: list[str], env: dict[str, str], timeout: float) -> bool:
    """Whether ``command`` succeeds run as ``nobody`` (no supplementary groups, in ``/``)."""
    uid, gid = nobody()
    try:
        done = subprocess.run(
            command,
            user=uid,
            group=gid,
            extra_groups=[],
            env=env,
            cwd="/",
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def shared_python() -> str | None:
    """This interpreter if ``nobody`` can run it, else a venv in ``/tmp`` over a system
    interpreter of the same major.minor with this one's packages; ``None`` if neither
    works (the caller skips). Only meaningful as root."""
    if runs_unprivileged(sys.executable):
        return sys.executable
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}", shutil.which(minor)):
        if not candidate or not Path(candidate).exists() or not runs_unprivileged_bare(candidate):
            continue
        venv = Path(tempfile.mkdtemp(prefix="billow-shared-python-"))
        venv.chmod(0o755)
        atexit.register(shutil.rmtree, venv, ignore_errors=True)
        made = subprocess.run(
            [candidate, "-m", "venv", "--without-pip", str(venv)], capture_output=True
        )
        if made.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            continue
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages())
        (venv / "lib" / minor / "site-packages" / "zz-billow-shared.pth").write_text(lines)
        uv = Path(sys.executable).with_name("uv")
        if uv.exists():
            (venv / "bin" / "uv").symlink_to(uv)
        python = str(venv / "bin" / "python")
        if runs_unprivileged(python):
            return python
        shutil.rmtree(venv, ignore_errors=True)
    return None


def remove_accounts(provider: LocalProcessProvider) -> None:
    """``userdel`` the OS users ``provider`` recorded (tests make fresh owners each run)."""
    for (name,) in provider._db().execute("SELECT name FROM accounts").fetchall():
        subprocess.run(["userdel", "--force", name], capture_output=True)
