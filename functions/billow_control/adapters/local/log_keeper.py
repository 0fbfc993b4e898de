"""Keep one instance's log: copy standard input to ``LOG``, holding at most ``LIMIT`` bytes.

Run as a process of its own, by the server's user, beside each local instance, in the
log's directory (``LOG`` is a name in it, so the directory may be renamed under it: a
pooled process's log directory becomes its instance's)::

    python -I -S log_keeper.py LOG LIMIT

The instance writes to a pipe whose reading end is this process's standard input, so the
instance (tenant code) never holds a file it could grow without bound. When ``LOG``
reaches half of ``LIMIT`` it becomes ``LOG.1`` (replacing the previous one) and a new
``LOG`` starts, at a line boundary where the chunk has one: the two files hold the newest
output, at most ``LIMIT`` bytes plus one read. The keeper lives in a session of its own,
so it outlives a restart of the server, and exits when every writer has closed the pipe
(the instance and everything it started have exited).

Standard library only, and run with ``-I -S``: starting it costs an interpreter and no
imports of the package.
"""

from __future__ import annotations

import os
import sys

CHUNK = 64 * 1024


def keep(source: int, path: str, limit: int) -> None:
    """Copy ``source`` to ``path`` until end of file, rotating at ``limit // 2`` bytes."""
    half = max(limit // 2, CHUNK)
    out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    size = os.fstat(out).st_size
    while chunk := os.read(source, CHUNK):
        if size + len(chunk) > half:
            cut = chunk.rfind(b"\n") + 1 or len(chunk)
            os.write(out, chunk[:cut])
            os.close(out)
            os.replace(path, path + ".1")
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o640)
            chunk, size = chunk[cut:], 0
        if chunk:
            os.write(out, chunk)
            size += len(chunk)
    os.close(out)


if __name__ == "__main__":
    keep(sys.stdin.fileno(), sys.argv[1], int(sys.argv[2]))
