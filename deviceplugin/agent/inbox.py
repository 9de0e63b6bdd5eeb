"""What wakes the agent's thread: what other threads post, and the retry it set itself.

The agent serves one queue. Config sources, the health monitor and the daemon post to it
from their own threads; the agent's thread takes everything queued at once (so a burst of
edits costs one reconciliation, of the newest), or nothing once a retry it scheduled is
due. A retry's delay doubles with every failed attempt and starts over on a new config
or a success (:class:`~deviceplugin.retry.Backoff`).

Threads: :meth:`Inbox.post` from any thread (the queue is thread-safe); everything else,
the retry time and the backoff included, is the agent's thread's.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import structlog

from deviceplugin.config.source import ConfigText
from deviceplugin.retry import Backoff

log = structlog.get_logger("fatia.agent")


class Health:
    """Health changed: the advertiser asks the monitor for the unhealthy set itself."""


class Stop:
    pass


Event = ConfigText | Health | Stop


class Inbox:
    def __init__(self, backoff: Backoff, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queue: queue.Queue[Event] = queue.Queue()
        self._backoff = backoff
        self._retry_at: float | None = None

    def post(self, event: Event) -> None:
        self._queue.put(event)

    def take(self) -> list[Event]:
        """Everything posted, once something is; nothing, once a scheduled retry is due."""
        timeout = None if self._retry_at is None else max(0.0, self._retry_at - self._clock())
        try:
            events = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def retry_later(self, *, limit: float) -> None:
        """Schedule a retry after the next backoff delay, at most ``limit`` seconds."""
        delay = self._backoff.next(limit=limit)
        self._retry_at = self._clock() + delay
        log.info("retry_scheduled", seconds=delay)

    def retry_due(self) -> bool:
        """A scheduled retry is due (and no longer scheduled)."""
        if self._retry_at is None or self._clock() < self._retry_at:
            return False
        self._retry_at = None
        return True

    def start_over(self) -> None:
        """No retry pending and the next delay the shortest: a new config, or a success."""
        self._backoff.reset()
        self._retry_at = None
