"""Where the config comes from, delivered as events to the agent.

:class:`FileConfigSource` watches ``--config``: a plain file, or a mounted
ConfigMap directory whose key is ``config.yaml``. The kubelet updates a
mounted ConfigMap by writing a new timestamped directory and atomically
swapping the ``..data`` symlink, so the source follows the path to its real
file each time and compares (inode, mtime, size), then the content itself; an
edit of either kind reaches the agent within one poll (250 ms). Identical
content is not re-delivered.

The API-mode source (a watched ConfigMap) lives in :mod:`deviceplugin.cluster.kube` and
delivers the same events.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger("fatia.config")

CONFIG_KEY = "config.yaml"
POLL_INTERVAL_S = 0.25


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
    """Polls a file or ConfigMap directory and reports changed content."""

    def __init__(self, path: Path, *, interval: float = POLL_INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_stat: tuple[int, int, int] | None = None
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
            if self._last_digest == f"missing:{error}":
                return None
            self._last_digest, self._last_stat = f"missing:{error}", None
            return ConfigText(None, str(file), error=error)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._last_stat:
            return None
        self._last_stat = key
        try:
            text = real.read_text()
        except OSError as exc:
            log.warning("config_unreadable", path=str(file), error=str(exc))
            return None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._last_digest:
            return None
        self._last_digest = digest
        return ConfigText(text, str(file))

    def start(self, sink: ConfigSink) -> None:
        first = self.read()
        sink.config_changed(first or ConfigText(None, str(self._file())))

        def poll() -> None:
            while not self._stop.wait(self.interval):
                try:
                    changed = self.read()
                except Exception:
                    log.exception("config_poll_failed", path=str(self.path))
                    continue
                if changed is not None:
                    sink.config_changed(changed)

        self._thread = threading.Thread(target=poll, name="config-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
