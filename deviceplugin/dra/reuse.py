"""Kept instances: MIG instances fatia cut for a claim and left in place for a later one.

Every prepare of a MIG device costs NVML work (a GPU and a compute instance created, the
pod's container waiting for them), and every unprepare more (both destroyed). When the
same shapes come and go, that work can be skipped: under ``dra: {reuse: identical}``
NodeUnprepareResources leaves the claim's instance in place, and the checkpoint records it
as *kept*:
fatia's own, held by no claim (:meth:`.Checkpoint.remove` with ``keep``, one write). Its
device is published as free, as any other. What then happens to it:

- a prepare of the same placement (same GPU, profile and start: the same device) adopts
  it: same MIG UUID, no NVML call (:meth:`Keeper.take`), the checkpoint's kept entry
  turning into the claim's intent in one write;
- a prepare of a placement it is in the way of (it overlaps, or it uses a shared counter the
  new device needs, e.g. the one media engine) destroys it first, then cuts (the scheduler
  counts kept instances as free, so this is how they are handed over);
- a pool config that no longer offers its GPU or profile, or ``reuse: never``, destroys it
  (:meth:`Keeper.destroy` through :meth:`.Preparer.release_kept`, from the driver's
  reconcile, with the reasons :func:`unwanted` gives).

Only an instance fatia cut is ever kept, and only a whole one that runs no process; a kept
entry counts only while its instance is there with the MIG UUID recorded, or without a
compute instance (a destruction cut short); else it is forgotten, and whatever is there is
someone else's. A SIGKILL between steps converges: a claim's intent is written before a
kept instance in its way is destroyed, and a kept entry is forgotten only after its
instance is destroyed, so a crash leaves a claim the kubelet retries, an entry whose
instance is half destroyed (finished by the next prepare or reconcile), or one whose
instance is gone (forgotten then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

import structlog

from deviceplugin.config.schema import ReusePolicy
from deviceplugin.dra.checkpoint import Checkpoint, PreparedDevice
from deviceplugin.dra.devices import DraDevice, PoolModel
from deviceplugin.dra.pool import PoolPlan
from mig.errors import FatiaError
from mig.inventory import Gpu, Inventory
from mig.layout import Placement

log = structlog.get_logger("fatia.dra")

Apply = Callable[[Gpu, tuple[Placement, ...]], object]  # the GPU to exactly these placements
Key = tuple[str | None, str]  # (counter set, counter)


def standing(gpu: Gpu, kept: Sequence[PreparedDevice]) -> list[PreparedDevice]:
    """The kept entries of ``gpu`` whose instance is still there: whole with the recorded MIG
    UUID, or without a compute instance (its destruction was cut short)."""
    there = {
        (gi.placement, ci.uuid) for gi in gpu.gpu_instances for ci in gi.compute_instances if gi.complete
    }
    bare = {gi.placement for gi in gpu.gpu_instances if not gi.compute_instances}
    return [
        k
        for k in kept
        if k.gpu_uuid == gpu.uuid and ((k.placement, k.mig_uuid) in there or k.placement in bare)
    ]


def adoptable(gpu: Gpu, kept: Sequence[PreparedDevice]) -> list[PreparedDevice]:
    """The standing kept entries of ``gpu`` that a claim of their placement can take as they are."""
    whole = {gi.placement for gi in gpu.gpu_instances if gi.complete}
    return [k for k in standing(gpu, kept) if k.placement in whole]


def in_the_way(
    model: PoolModel, demand: Sequence[str], kept: Sequence[PreparedDevice]
) -> list[PreparedDevice]:
    """The kept instances to destroy so that the devices named in ``demand`` (every claim's
    on the GPU, the new ones included) fit: those overlapping a demanded placement, then,
    while a shared counter would be exceeded, one by one those that consume it."""
    needed = [d for name in dict.fromkeys(demand) if (d := model.device(name)) is not None]
    out = [k for k in kept if any(_overlap(k.placement, d.placement) for d in needed)]
    rest = [k for k in kept if k not in out]
    capacity: dict[Key, int] = {(c.name, n): v for c in model.counter_sets for n, v in c.counters}

    def exceeded() -> set[Key]:
        used: Counter[Key] = Counter()
        for device in [*needed, *_devices(model, rest)]:
            used.update({(device.counter_set, name): value for name, value in device.consumes})
        return {key for key, value in used.items() if value > capacity.get(key, 0)}

    while full := exceeded():
        victim = next((k for k in rest if full & _counters(model, k)), None)
        if victim is None:
            break
        rest.remove(victim)
        out.append(victim)
    return out


def unwanted(kept: Sequence[PreparedDevice], plan: PoolPlan, reuse: ReusePolicy) -> dict[PreparedDevice, str]:
    """Kept instances the policy or the pool no longer wants, with the reason."""
    reasons = {}
    for k in kept:
        offer = next((o for o in plan.offers if o.uuid == k.gpu_uuid), None)
        profile = k.placement.profile if k.placement else ""
        if reuse == ReusePolicy.NEVER:
            reasons[k] = "the reuse policy is now never"
        elif offer is None or offer.whole:
            reasons[k] = f"GPU {k.gpu_index} is no longer offered as MIG partitions"
        elif profile not in offer.profiles:
            reasons[k] = f"{profile} is no longer offered on GPU {k.gpu_index}"
    return reasons


def _overlap(a: Placement | None, b: Placement | None) -> bool:
    return a is not None and b is not None and a.overlaps(b)


def _devices(model: PoolModel, kept: Sequence[PreparedDevice]) -> list[DraDevice]:
    return [d for k in kept if (d := model.device(k.device)) is not None and d.gpu_uuid == k.gpu_uuid]


def _counters(model: PoolModel, kept: PreparedDevice) -> set[Key]:
    return {(d.counter_set, name) for d in _devices(model, [kept]) for name, _ in d.consumes}


class Keeper:
    """The NVML side of kept instances; its caller holds the preparer's lock."""

    def __init__(
        self,
        *,
        checkpoint: Checkpoint,
        read: Callable[[], Inventory],
        apply: Apply,
        running: Callable[[Gpu], Collection[int]],
    ) -> None:
        self._checkpoint = checkpoint
        self._read = read
        self._apply = apply
        self._running = running

    def placements(self, gpu: Gpu) -> set[Placement]:
        """Where ``gpu`` has kept instances a prepare may adopt or destroy."""
        return {k.placement for k in standing(gpu, self._checkpoint.kept()) if k.placement is not None}

    def keepable(self, devices: Sequence[PreparedDevice]) -> list[PreparedDevice]:
        """The devices of an unprepared claim to keep: whole MIG instances running nothing."""
        found = []
        for gpu in self._read().gpus:
            mine = [d for d in devices if d.gpu_uuid == gpu.uuid and d.placement is not None]
            if not mine or not gpu.usable:
                continue
            try:
                busy = self._running(gpu)
            except FatiaError:
                continue  # unknown: destroyed as without the policy (which waits if it is in use)
            for gi in gpu.gpu_instances:
                device = next((d for d in mine if d.placement == gi.placement), None)
                if device is not None and gi.complete and gi.id not in busy:
                    found.append(replace(device, mig_uuid=gi.compute_instances[0].uuid))
        return found

    def take(
        self, model: PoolModel, wanted: Sequence[PreparedDevice]
    ) -> tuple[list[PreparedDevice], list[PreparedDevice]]:
        """(kept instances at a wanted placement: adopted; those in the way of one: to destroy)."""
        adopted: list[PreparedDevice] = []
        doomed: list[PreparedDevice] = []
        if not self._checkpoint.kept():
            return adopted, doomed  # no NVML read: the common case costs nothing
        mine = {(d.gpu_uuid, d.placement) for d in wanted}
        claimed = [d for r in self._checkpoint.records() for d in r.devices] + list(wanted)
        for gpu in self._read().gpus:
            kept = standing(gpu, self._checkpoint.kept())
            adopted += [k for k in adoptable(gpu, kept) if (k.gpu_uuid, k.placement) in mine]
            demand = [d.device for d in claimed if d.gpu_uuid == gpu.uuid]
            doomed += in_the_way(model, demand, [k for k in kept if k not in adopted])
        return adopted, doomed

    def destroy(self, doomed: Mapping[PreparedDevice, str]) -> tuple[list[str], list[str]]:
        """Destroy kept instances (each with its reason), and those whose destruction was cut
        short, and forget them; forget every kept entry whose instance is gone. (What was
        done, what failed), one line each."""
        done: list[str] = []
        failed: list[str] = []
        if not self._checkpoint.kept():
            return done, failed
        for gpu in self._read().gpus:
            kept = [k for k in self._checkpoint.kept() if k.gpu_uuid == gpu.uuid]
            if not kept or not gpu.usable:
                continue
            there = standing(gpu, kept)
            gone = [k for k in kept if k not in there]
            for k in gone:
                log.warning("kept_instance_gone", gpu=gpu.index, device=k.device, uuid=k.mig_uuid)
            self._checkpoint.unkeep(gone)
            whole = adoptable(gpu, there)  # the others' destruction was cut short: finished now
            reasons = {k: "its destruction was cut short" for k in there if k not in whole}
            reasons |= {k: why for k, why in doomed.items() if k in there}
            victims = list(reasons)
            if not victims:
                continue
            going = {k.placement for k in victims}
            try:
                self._apply(gpu, tuple(gi.placement for gi in gpu.gpu_instances if gi.placement not in going))
            except FatiaError as exc:
                failed.append(
                    f"GPU {gpu.index}: kept {', '.join(k.device for k in victims)} not destroyed: {exc}"
                )
                continue
            self._checkpoint.unkeep(victims)
            for k in victims:
                log.info("kept_instance_destroyed", gpu=gpu.index, device=k.device, uuid=k.mig_uuid,
                         reason=reasons[k])  # fmt: skip
                done.append(f"destroyed kept {k.device} ({k.mig_uuid}): {reasons[k]}")
        return done, failed
