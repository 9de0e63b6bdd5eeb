"""Files that must never be seen half-written, and one writer at a time.

Three files carry state across a crash: the MIG journal, the simulated node, and the
agent's status. Each is replaced whole (:func:`atomic_write`: write a temporary file
beside it, optionally fsync, rename over), so a reader sees the old content or the new,
never a torn one. :func:`exclusive_lock` serialises writers across processes (an old and
a new fatia overlapping during a rolling update, or the simulator and a test) with an
``flock`` on a side file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def atomic_write(
    path: Path, data: str | bytes, *, durable: bool = False, mtime_ns: int | None = None
) -> None:
    """Replace ``path`` with ``data`` in one rename.

    ``durable`` fsyncs the data before the rename (the journal: it must survive a power
    loss, not only a crash); ``mtime_ns`` stamps the new file (the simulator's change
    detection reads it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
