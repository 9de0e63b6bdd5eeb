"""Plain data for MIG layouts: what sits where on a GPU.

A *placement* is one GPU instance: its profile name and the memory slices it
occupies. A GPU's layout is a tuple of placements sorted by start slice, so two
layouts compare equal exactly when the same instances sit in the same places.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Placement:
    """A GPU instance of ``profile`` occupying memory slices ``start .. start+size-1``."""

    start: int
    size: int
    profile: str

    @property
    def slots(self) -> range:
        return range(self.start, self.start + self.size)

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.start + other.size and other.start < self.start + self.size

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}"


Layout = tuple[Placement, ...]


def normalize(placements: Iterable[Placement]) -> Layout:
    """A layout in canonical order (by start slice)."""
    return tuple(sorted(placements))


def profile_counts(layout: Layout) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in layout:
        counts[p.profile] = counts.get(p.profile, 0) + 1
    return counts
