"""Where the config comes from, delivered as events to the agent.

:class:`FileConfigSource` watches ``--config``: a plain file, or a mounted
ConfigMap directory whose key is ``config.yaml``. The kubelet updates a
mounted ConfigMap by writing a new timestamped directory and atomically
swapping the ``..data`` symlink, so the source follows the path to its real
file each time and compares (inode, mtime, size), then the content itself. It sleeps
on inotify (:mod:`mig.fswatch`) until the directory changes, so an edit of
either kind reaches the agent at once while an idle node costs nothing; it still looks
every 5 s, and every 250 ms where inotify cannot be had. Identical content is not
re-delivered.

A config that exists but cannot be used as text -- larger than a ConfigMap can be,
not UTF-8, a directory, unreadable, gone between finding and reading it -- is
delivered as a :class:`ConfigText` with an ``error``, which the agent reports as a
failed config (the node keeps its layout); the same error is not delivered twice. A
file the system would not read (permission, I/O, a directory) is tried again on every
poll; one whose content is at fault (size, encoding) when its stat changes, ctime
included, so a ``chmod`` counts as a change. A file that vanishes between being found
and being opened (the kubelet's ``..data`` swap racing the poll) is no error: the next
poll reads what is there then.

The API-mode source (a watched ConfigMap) lives in :mod:`deviceplugin.cluster.configmap` and
delivers the same events.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from deviceplugin.config.limits import MAX_BYTES
from deviceplugin.config.yamlload import DocumentError, decode, too_large
from mig.fswatch import DirWatch

log = structlog.get_logger("fatia.config")

CONFIG_KEY = "config.yaml"
POLL_INTERVAL_S = 0.25  # without inotify
RESYNC_S = 5.0  # with inotify: a look now and then all the same
SETTLE_S = 0.05  # quiet time after a change before the file is read
SETTLE_MAX_S = 1.0


@dataclass(frozen=True)
class ConfigText:
    """A config document as found (``text`` is None when there is none).

    ``error`` says why a config that exists cannot be read (e.g. a ConfigMap
    without the ``config.yaml`` key); the agent treats it as an invalid config.
    """

    text: str | None
    origin: str
    error: str | None = None


class ConfigSink(Protocol):
    def config_changed(self, config: ConfigText) -> None: ...


class FileConfigSource:
    """Watches a file or ConfigMap directory and reports changed content."""

    def __init__(self, path: Path, *, interval: float = POLL_INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: DirWatch | None = None
        self._last_stat: tuple[int, ...] | None = None
        self._last_digest: str | None = None

    def _file(self) -> Path:
        return self.path / CONFIG_KEY if self.path.is_dir() else self.path

    def read(self) -> ConfigText | None:
        """The config if it changed since the last call, else None."""
        file = self._file()
        try:
            real = file.resolve(strict=True)
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError, RuntimeError):
            # No file: the defaults. A mounted ConfigMap without the key: an error.
            error = f"{self.path} has no key {CONFIG_KEY}" if self.path.is_dir() else None
            return self._deliver(f"missing:{error}", ConfigText(None, str(file), error=error))
        except OSError as exc:  # a directory on the way that we may not enter, say
            return self._unreadable(file, f"cannot read {file}: {exc.strerror or exc}")
        # ctime too: a chmod that makes an unreadable file readable changes nothing else.
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if key == self._last_stat:
            return None
        if st.st_size > MAX_BYTES:
            return self._unreadable(file, f"{file}: {too_large(st.st_size)}", retry=False, key=key)
        try:
            text = decode(_read_bounded(real))
        except DocumentError as exc:  # the content's fault: read again when it changes
            where = f"{file}:{exc.line}:{exc.column}:" if exc.line is not None else f"{file}:"
            return self._unreadable(file, f"{where} {exc.problem}", retry=False, key=key)
        except IsADirectoryError:
            return self._unreadable(file, f"{file} is a directory, not a file")
        except FileNotFoundError:
            # Gone between resolving and opening: a ConfigMap update swapping ..data, or
            # a file being replaced. The next poll finds what is there now.
            self._last_stat = None
            return None
        except OSError as exc:  # permission denied, an I/O error: may pass, try every poll
            return self._unreadable(file, f"cannot read {file}: {exc.strerror or exc}")
        self._last_stat = key
        return self._deliver(hashlib.sha256(text.encode()).hexdigest(), ConfigText(text, str(file)))

    def _unreadable(
        self, file: Path, error: str, *, retry: bool = True, key: tuple[int, ...] | None = None
    ) -> ConfigText | None:
        changed = self._deliver(f"error:{error}", ConfigText(None, str(file), error=error))
        self._last_stat = None if retry else key
        if changed is not None:
            log.warning("config_unreadable", path=str(file), error=error)
        return changed

    def _deliver(self, digest: str, config: ConfigText) -> ConfigText | None:
        if digest == self._last_digest:
            return None
        if config.text is None:
            self._last_stat = None
        self._last_digest = digest
        return config

    def start(self, sink: ConfigSink) -> None:
        first = self.read()
        sink.config_changed(first or ConfigText(None, str(self._file())))
        watched = {self.path if self.path.is_dir() else self.path.parent}
        watched.add(self.path.resolve().parent)  # a --config symlink's target directory
        watch = self._watch = DirWatch(watched)

        def poll() -> None:
            while not self._stop.is_set():
                if watch.wait(RESYNC_S if watch.event_driven else self.interval):
                    self._settle(watch)
                if self._stop.is_set():
                    break
                try:
                    changed = self.read()
                except Exception:
                    log.exception("config_poll_failed", path=str(self.path))
                    continue
                if changed is not None:
                    sink.config_changed(changed)
            watch.close()

        self._thread = threading.Thread(target=poll, name="config-watch", daemon=True)
        self._thread.start()

    def _settle(self, watch: DirWatch) -> None:
        """Let a write in progress finish: an in-place edit is a truncate, then writes; read
        the file once the directory has been quiet for SETTLE_S (at most SETTLE_MAX_S)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        while not self._stop.is_set() and time.monotonic() < deadline and watch.wait(SETTLE_S):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.wake()
        if self._thread is not None:
            self._thread.join(2)


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, or (when it is larger than a ConfigMap can be) the limit and one more."""
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1)
