"""Local instances' logs: written through a log keeper (capped, rotated), read from the end.

* ``open_log_pipe`` starts ``log_keeper.py`` for an instance and returns the writing end of
  its pipe, which becomes the instance's stdout and stderr. The log holds the newest
  ``limit`` bytes, in ``instance.log`` and ``instance.log.1``.
* ``tail_lines`` reads the last lines of those two files backwards, in blocks, and never
  more than ``byte_limit`` bytes: a read costs the same for a 400 MB log as for a small one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import log_keeper

DEFAULT_LOG_LIMIT = 16 * 1024 * 1024
DEFAULT_READ_LIMIT = 1024 * 1024
_BLOCK = 64 * 1024


def open_log_pipe(path: Path, limit: int = DEFAULT_LOG_LIMIT, python: str = sys.executable) -> int:
    """Start the keeper of ``path`` and return the pipe's writing end (the caller closes it
    once the instance holds it). The keeper runs as the caller's user, in its own session,
    with an empty environment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [python, "-I", "-S", log_keeper.__file__, path.name, str(limit)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={},
            cwd=path.parent,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return write_end


def tail_lines(path: Path, lines: int, byte_limit: int = DEFAULT_READ_LIMIT) -> list[str]:
    """The last ``lines`` lines of ``path.1`` followed by ``path``, reading at most
    ``byte_limit`` bytes from their ends (older lines beyond it are left out, and so is a
    line the limit cuts). Missing files read as empty."""
    if lines <= 0:
        return []
    data = b""
    for part in (path, path.with_name(path.name + ".1")):
        budget = byte_limit - len(data)
        wanted = lines - data.count(b"\n")
        if budget <= 0 or wanted <= 0:
            break
        tail, whole = _read_tail(part, wanted, budget)
        data = tail + data
        if not whole:
            break
    return data.decode(errors="replace").splitlines()[-lines:]


def _read_tail(path: Path, lines: int, budget: int) -> tuple[bytes, bool]:
    """The end of ``path``: whole lines, at least ``lines`` newlines' worth when the file
    and ``budget`` allow, and whether it reaches the start of the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b"", True
    try:
        end = os.fstat(fd).st_size
        blocks: list[bytes] = []
        held = newlines = 0
        while end > 0 and held < budget and newlines <= lines:
            size = min(_BLOCK, end, budget - held)
            end -= size
            block = os.pread(fd, size, end)
            blocks.append(block)
            held += len(block)
            newlines += block.count(b"\n")
    finally:
        os.close(fd)
    data = b"".join(reversed(blocks))
    if end > 0:  # the first line read is cut: keep whole lines only
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return data, end == 0
