"""Where MIG instances go on one GPU: turn profile counts into explicit placements.

NVML's implicit placement is order-sensitive (``3g + 2g + 2g`` fails when the 3g lands
at slice 0), so fatia never lets NVML choose: :func:`plan_gpu` decides the start slice
of every instance and the reconciler creates them *with* placement.

The rules come from the GPU's own profile table (from the catalog or read from NVML):
an instance occupies ``size`` memory slices from one of its profile's ``starts``;
instances do not overlap; a profile has at most ``max_count`` instances; the total of
compute slices does not exceed the largest profile's. With the start sets real GPUs
have, overlap plus caps is the whole hardware rule (see the MIG reference, section 2).

Among the valid plans the planner prefers, in this order: keeping as many *held*
instances (ones pods are using) exactly where they are, then keeping as many other
existing instances, then the lowest start slices, largest profiles placed first. So a
repartition destroys only what it must, and the same inputs always give the same plan.

The search is a depth-first branch and bound over instances, largest first, with the
instances of one profile taking increasing starts (they are interchangeable). A GPU has
at most 8 memory slices, so the tree is small: a plan takes about a millisecond at worst.
When nothing fits, the deepest dead end of the search names the profile that found no
place and what blocks it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mig.catalog import GpuInstanceProfile
from mig.errors import PlanError
from mig.layout import Layout, Placement, normalize

_TIMES = "\N{MULTIPLICATION SIGN}"  # as in "3g.20gb x2", the sign rather than a letter


def plan_gpu(
    profiles: Sequence[GpuInstanceProfile],
    desired: Mapping[str, int],
    *,
    existing: Sequence[Placement] = (),
    held: Collection[Placement] = (),
) -> Layout:
    """Explicit placements for ``desired`` (profile name -> count) on one GPU.

    ``profiles`` is that GPU's profile table; ``existing`` the instances on it now and
    ``held`` those of them that pods are using (one held instance outweighs any number
    of idle ones). Raises :class:`PlanError`, with a message naming the rule, when the
    counts cannot be placed; the message does not name the GPU, the caller does.
    """
    groups = _groups(profiles, desired)
    _check_memory(profiles, groups)
    search = _Search(groups, _keep_weights(existing, held))
    search.run()
    if search.best is None:
        raise PlanError(search.explain())
    # Never binds with real start sets (placement already rules it out), but a profile
    # table read from an unknown GPU might not be so kind.
    _check_compute(profiles, groups)
    return normalize(search.best)


def explain_starts(profile: GpuInstanceProfile) -> str:
    """A profile's start rule in words: ``2g.10gb can start only at memory slices 0, 2 or 4``."""
    return f"{profile.name} {_start_rule(profile)}"


def _start_rule(profile: GpuInstanceProfile) -> str:
    starts = sorted(profile.starts)
    if not starts:
        return "has no legal start on this GPU"
    if len(starts) == 1:
        return f"can start only at memory slice {starts[0]}"
    return f"can start only at memory slices {_spans(starts, last='or')}"


@dataclass(frozen=True)
class _Group:
    """The instances of one profile to place."""

    profile: GpuInstanceProfile
    count: int

    @property
    def name(self) -> str:
        return self.profile.name


def _groups(profiles: Sequence[GpuInstanceProfile], desired: Mapping[str, int]) -> list[_Group]:
    """Validated non-zero counts, largest profile first, then in table order."""
    order = {p.name: i for i, p in enumerate(profiles)}
    table = {p.name: p for p in profiles}
    groups = []
    for name, count in desired.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PlanError(f"the count of {name} must be a whole number >= 0, not {count!r}")
        if count == 0:
            continue
        profile = table.get(name)
        if profile is None and not profiles:
            raise PlanError(
                f"no MIG profiles are known for this GPU, so {name!r} cannot be placed: its product is "
                f"unknown to fatia's catalog and NVML lists no profiles while MIG is off; switch MIG "
                f"on first with no instances (mig-devices: {{}}); then NVML lists the profiles"
            )
        if profile is None:
            known = ", ".join(p.name for p in profiles)
            raise PlanError(f"unknown profile {name!r} for this GPU; its profiles are {known}")
        if count > profile.max_count:
            raise PlanError(
                f"at most {profile.max_count} instance{_s(profile.max_count)} of {name} "
                f"fit{'s' if profile.max_count == 1 else ''} on this GPU, {count} requested"
            )
        groups.append(_Group(profile, count))
    groups.sort(key=lambda g: (-g.profile.size, order[g.name]))
    return groups


def _check_memory(profiles: Sequence[GpuInstanceProfile], groups: list[_Group]) -> None:
    memory = max((p.size + max(p.starts) for p in profiles if p.starts), default=0)
    needed = sum(g.profile.size * g.count for g in groups)
    if needed > memory:
        parts = " + ".join(_each(g, g.profile.size) for g in groups)
        raise PlanError(f"the layout needs {needed} memory slices and the GPU has {memory}: {parts}")


def _check_compute(profiles: Sequence[GpuInstanceProfile], groups: list[_Group]) -> None:
    compute = max((p.slices for p in profiles), default=0)
    needed = sum(g.profile.slices * g.count for g in groups)
    if needed > compute:
        parts = " + ".join(_each(g, g.profile.slices) for g in groups)
        raise PlanError(f"the layout needs {needed} compute slices and the GPU has {compute}: {parts}")


def _each(group: _Group, amount: int) -> str:
    if group.count == 1:
        return f"{group.name} ({amount})"
    return f"{group.name} {_TIMES}{group.count} ({amount} each)"


def _keep_weights(existing: Sequence[Placement], held: Collection[Placement]) -> dict[Placement, int]:
    """What keeping each current instance is worth: one held outweighs all others."""
    current = set(existing) | set(held)
    held_weight = len(current) + 1
    return {p: held_weight if p in held else 1 for p in current}


class _Option(NamedTuple):
    """One legal placement of a group's profile, as a bit mask of memory slices."""

    placement: Placement
    mask: int
    weight: int


@dataclass(frozen=True)
class _DeadEnd:
    """A partial layout after which ``profile`` had no free legal start."""

    profile: GpuInstanceProfile
    placed: tuple[Placement, ...]


class _Search:
    """Branch and bound for the best plan; ``best`` is ``None`` when nothing fits."""

    def __init__(self, groups: list[_Group], weights: Mapping[Placement, int]) -> None:
        self.groups = groups
        self.options = [
            [
                _Option(p, ((1 << p.size) - 1) << p.start, weights.get(p, 0))
                for p in (Placement(s, g.profile.size, g.name) for s in sorted(g.profile.starts))
            ]
            for g in groups
        ]
        # Instance i belongs to group owner[i]; instances of a group are consecutive.
        self.owner = [gi for gi, g in enumerate(groups) for _ in range(g.count)]
        # ... of which left[i] remain from instance i on.
        self.left = [self.owner[i:].count(gi) for i, gi in enumerate(self.owner)]
        self.placed: list[Placement] = []
        self.best: list[Placement] | None = None
        self.best_score = -1
        self.dead_end: _DeadEnd | None = None

    def run(self) -> None:
        self._place(0, 0, 0, 0)

    def _place(self, i: int, occupied: int, score: int, first: int) -> None:
        """Place instance ``i`` and the rest; ``first`` is its lowest allowed option."""
        if i == len(self.owner):
            if score > self.best_score:
                self.best, self.best_score = list(self.placed), score
            return
        if self.best is not None and score + self._potential(i, occupied, first) <= self.best_score:
            return
        gi = self.owner[i]
        options = self.options[gi]
        fits = False
        for k in range(first, len(options)):
            option = options[k]
            if option.mask & occupied:
                continue
            fits = True
            self.placed.append(option.placement)
            same = i + 1 < len(self.owner) and self.owner[i + 1] == gi
            self._place(i + 1, occupied | option.mask, score + option.weight, k + 1 if same else 0)
            self.placed.pop()
        if not fits and not any(o.mask & occupied == 0 for o in options):
            self._note_dead_end(self.groups[gi].profile)

    def _potential(self, i: int, occupied: int, first: int) -> int:
        """An upper bound on what instances ``i`` onwards can still add to the score."""
        total = 0
        gi = self.owner[i]
        for g in range(gi, len(self.groups)):
            options = self.options[g][first:] if g == gi else self.options[g]
            weights = sorted((o.weight for o in options if o.weight and not o.mask & occupied), reverse=True)
            total += sum(weights[: self.left[i] if g == gi else self.groups[g].count])
        return total

    def _note_dead_end(self, profile: GpuInstanceProfile) -> None:
        if self.dead_end is None or len(self.placed) > len(self.dead_end.placed):
            self.dead_end = _DeadEnd(profile, tuple(self.placed))

    def explain(self) -> str:
        if self.dead_end is None:  # cannot happen: the deepest branch always ends in one
            return "these profiles cannot be placed together without overlapping"
        profile, placed = self.dead_end.profile, self.dead_end.placed
        legal = [Placement(s, profile.size, profile.name) for s in profile.starts]
        blockers = normalize(p for p in placed if any(p.overlaps(q) for q in legal))
        why = f"no place for {profile.name}: it {_start_rule(profile)}"
        return f"{why}, but {_taken(blockers)}" if blockers else why


def _taken(blockers: Layout) -> str:
    """``4g.20gb takes 0-3 and 1g.10gb x2 take 4-5 and 6-7`` (with a real times sign)."""
    by_profile: dict[str, list[Placement]] = {}
    for p in blockers:
        by_profile.setdefault(p.profile, []).append(p)
    parts = []
    for name, ps in by_profile.items():
        where = _join([_slices(p) for p in ps], last="and")
        if len(ps) == 1:
            parts.append(f"{name} takes {where}")
        else:
            parts.append(f"{name} {_TIMES}{len(ps)} take {where}")
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2 and " and " not in parts[0]:
        return f"{parts[0]} and {parts[1]}"
    return f"{', '.join(parts[:-1])}, and {parts[-1]}"  # the comma keeps the lists apart


def _slices(p: Placement) -> str:
    return str(p.start) if p.size == 1 else f"{p.start}-{p.start + p.size - 1}"


def _spans(numbers: list[int], *, last: str) -> str:
    """``0, 2 or 4``; a run of three or more consecutive numbers as ``0-6``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    words: list[str] = []
    for run in runs:
        if len(run) >= 3:
            words.append(f"{run[0]}-{run[-1]}")
        else:
            words.extend(str(n) for n in run)
    return _join(words, last=last)


def _join(words: list[str], *, last: str) -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def _s(n: int) -> str:
    return "" if n == 1 else "s"
