"""One backoff for every retry loop: the agent, the API watchers, the health loop.

Delays double from ``low`` up to ``high`` and start again from ``low`` after a success.
The object only computes delays; each loop waits in its own way (an event's ``wait`` so
that a stop interrupts it, or a deadline on its queue).
"""

from __future__ import annotations


class Backoff:
    """Doubling delays within ``[low, high]``. Owned by one thread."""

    def __init__(self, low: float, high: float) -> None:
        if not 0 < low <= high:
            raise ValueError(f"backoff needs 0 < low <= high, not {low}, {high}")
        self.low, self.high = low, high
        self._next = low

    def next(self, *, limit: float | None = None) -> float:
        """The delay to wait now (at most ``limit``); the one after it is twice as long."""
        high = self.high if limit is None else min(self.high, limit)
        delay = min(self._next, high)
        self._next = min(delay * 2, high)
        return delay

    def reset(self) -> None:
        self._next = self.low
