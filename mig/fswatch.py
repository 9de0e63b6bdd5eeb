"""Waiting for a change in a directory without polling it.

Two threads of ``fatia run`` wait for files to change: the plugin watcher (the kubelet
recreates ``kubelet.sock`` and deletes every socket when it restarts) and the config
source (the kubelet swaps a ConfigMap volume's ``..data`` symlink; a person edits a file).
Polling them every few hundred milliseconds costs a measurable share of a core on an idle
node, for nothing. :class:`DirWatch` uses Linux's inotify (through ``ctypes``: the
standard library has no binding) to sleep until an entry of a watched directory is
created, deleted, moved, written or has its attributes changed — or until :meth:`wake`
is called, or a timeout passes. Where inotify cannot be had (not Linux, no more watches
allowed), it degrades to the same timeout alone, so callers keep a periodic check as a
safety net and never depend on an event arriving.

A watch is on directories, not files: a file replaced by rename (the ConfigMap swap, an
editor's save) stays covered, and a directory that does not exist yet is watched once it
does (each :meth:`wait` adds the directories it can).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import threading
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger("fatia.fswatch")

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018  (present?)
    except (OSError, AttributeError):
        return None
    return libc


class DirWatch:
    """Sleeps until something changes in ``dirs`` (or :meth:`wake`). One thread waits."""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self._dirs = [Path(d) for d in dirs]
        self._watched: set[Path] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._libc = _libc()
        self._fd = -1
        if self._libc is not None:
            self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if self._fd < 0:
                log.warning("inotify_unavailable", error=os.strerror(ctypes.get_errno()))
        self._add_watches()

    @property
    def event_driven(self) -> bool:
        """Whether changes wake :meth:`wait` (False: only the timeout does)."""
        return self._fd >= 0 and bool(self._watched)

    def wait(self, timeout: float) -> bool:
        """Until a change, a :meth:`wake` or ``timeout`` seconds; True unless it timed out."""
        self._add_watches()
        fds = [self._wake_r] + ([self._fd] if self._fd >= 0 else [])
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            self._drain(fd)
        if self._fd in ready:
            self._watched = {d for d in self._watched if d.is_dir()}  # a watched dir may be gone
        return bool(ready)

    def wake(self) -> None:
        """Make a waiting (or the next) :meth:`wait` return now. Any thread."""
        with contextlib.suppress(OSError):  # full (already woken) or closed (stopped)
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._wake_r = self._wake_w = -1

    def _add_watches(self) -> None:
        if self._fd < 0 or self._libc is None:
            return
        for directory in self._dirs:
            if not directory.is_dir():  # again each time: a recreated dir needs a new watch
                continue
            if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), MASK) < 0:
                code = ctypes.get_errno()
                if code != errno.ENOENT:
                    log.warning("inotify_watch_failed", path=str(directory), error=os.strerror(code))
                continue
            self._watched.add(directory)

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 65536):
                pass
        except (BlockingIOError, OSError):
            pass
