"""Which devices are unhealthy, since when, and when they may heal: pure, with a clock.

:class:`HealthState` holds, per device UUID (a GPU's or a MIG device's), the time of the
last bad evidence about it. It does no I/O and reads no clock: every method is given
``now``, so recovery timing is tested without sleeping. Its owner (the health thread)
decides what counts as evidence; this class only remembers it and answers "who is due".

Every duration the health loop computes goes through :func:`clamp_seconds`, so no config
value (a huge or non-finite ``recoverySeconds`` that slipped past validation, say) can
make the loop wait forever, overflow, or spin.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

MIN_SECONDS = 0.01
MAX_SECONDS = 7 * 24 * 3600.0


def clamp_seconds(value: float, *, low: float = MIN_SECONDS, high: float = MAX_SECONDS) -> float:
    """``value`` within ``[low, high]``; NaN counts as ``high`` (never heal early)."""
    if math.isnan(value):
        return high
    return min(high, max(low, value))


class HealthState:
    """UUID -> time of the last bad evidence. Not thread-safe: one thread owns it."""

    def __init__(self) -> None:
        self._last_bad: dict[str, float] = {}

    def unhealthy(self) -> frozenset[str]:
        return frozenset(self._last_bad)

    def mark(self, uuids: Iterable[str], now: float) -> list[str]:
        """Record bad evidence about ``uuids``; returns those that were healthy until now."""
        new = []
        for uuid in uuids:
            if uuid not in self._last_bad:
                new.append(uuid)
            self._last_bad[uuid] = now
        return new

    def due(self, now: float, quiet: float) -> list[str]:
        """The devices whose last bad evidence is at least ``quiet`` seconds old."""
        quiet = clamp_seconds(quiet)
        return [uuid for uuid, last in self._last_bad.items() if now - last >= quiet]

    def heal(self, uuids: Iterable[str]) -> list[str]:
        """Forget ``uuids``; returns those that were unhealthy."""
        return [uuid for uuid in uuids if self._last_bad.pop(uuid, None) is not None]

    def keep_only(self, existing: Collection[str]) -> list[str]:
        """Forget devices that no longer exist (a destroyed MIG device cannot heal)."""
        return self.heal([uuid for uuid in self._last_bad if uuid not in existing])

    def next_recovery_in(self, now: float, quiet: float) -> float | None:
        """Seconds until the next device's quiet time ends; None when nothing is unhealthy."""
        quiet = clamp_seconds(quiet)
        if not self._last_bad:
            return None
        return clamp_seconds(min(last + quiet - now for last in self._last_bad.values()), low=0.0)
