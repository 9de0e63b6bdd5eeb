"""One start/stop protocol for the long-running parts of ``fatia run``.

Each part that runs on its own thread (the plugin manager and its servers, the health
monitor, the config source, the Node reporter, the metrics endpoint) is a
:class:`Service`: ``start`` returns once it runs, ``stop`` returns promptly (a thread
blocked in a call it cannot interrupt, such as an NVML or API-server wait, is a daemon
thread and ends with the process). The :class:`Supervisor` starts them in order and
stops them in reverse, each stop on its own, so that one that fails does not keep the
others running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("fatia.daemon")


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Hooks:
    """A service made of two callables (for parts whose start takes arguments)."""

    on_start: Callable[[], None]
    on_stop: Callable[[], None]

    def start(self) -> None:
        self.on_start()

    def stop(self) -> None:
        self.on_stop()


class Supervisor:
    """Owned by the main thread."""

    def __init__(self) -> None:
        self._running: list[tuple[str, Service]] = []

    def start(self, name: str, service: Service) -> None:
        service.start()
        self._running.append((name, service))

    def stop(self) -> None:
        while self._running:
            name, service = self._running.pop()
            try:
                service.stop()
            except Exception:  # stopping the rest matters more than this one
                log.exception("stop_failed", service=name)
