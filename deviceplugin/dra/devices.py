"""The pool as partitionable devices: what the scheduler may allocate on this node.

Every legal placement of every offered MIG profile is a device of its own
(``gpu-1-mig-1g-10gb-3`` is a 1g.10gb instance starting at memory slice 3 of GPU 1), so
the scheduler chooses the *placement* and fatia cuts exactly that one. Overlap is made
impossible by shared counters (KEP-4815): each MIG GPU has a counter set ``gpu-<index>``
with

- ``memory-slice-<k>`` = 1 for each memory slice: a device consumes the slices its
  placement occupies, so two overlapping placements can never both be allocated;
- ``compute-slices`` = the GPU's compute slices: a device consumes its profile's;
- ``profile-<name>`` where fewer instances of a profile may exist than it has placements
  (the hardware's ``instanceCount``, e.g. one ``+me`` instance, or a count from the
  config): each of its devices consumes 1;
- ``media-engines`` where a ``+me.all`` profile is offered: it consumes them all, a
  ``-me`` instance none and any other instance 1, so ``+me.all`` sits beside ``-me``
  instances only, as NVML requires.

Placements that overlap an instance fatia did not cut are not offered (that instance is
left alone), and the per-profile limits count such instances. A GPU offered whole is one
device without counters. Each device's capacity is its ``memory``; its attributes are
:mod:`.attributes`'.

Pure. :class:`PoolModel` is what the driver's reconcile builds (:mod:`.reconcile`) and the
preparer resolves allocations in; :mod:`.slices` renders it as ResourceSlice objects.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from deviceplugin.dra.attributes import Json, mig_attributes, node_attributes, whole_gpu_attributes
from deviceplugin.dra.pool import GpuOffer, PoolPlan
from mig.catalog import ALL_ME_ENUMS, NO_ME_ENUMS
from mig.inventory import Gpu, Inventory
from mig.layout import Placement


@dataclass(frozen=True)
class CounterSet:
    name: str
    counters: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class DraDevice:
    """One published device, and what preparing it means."""

    name: str
    gpu_index: int
    gpu_uuid: str
    profile: str | None  # None: the whole GPU
    placement: Placement | None
    memory_mib: int
    attributes: Json = field(compare=False)
    counter_set: str | None = None
    consumes: tuple[tuple[str, int], ...] = ()

    @property
    def mig(self) -> bool:
        return self.placement is not None


@dataclass(frozen=True)
class PoolModel:
    devices: tuple[DraDevice, ...] = ()
    counter_sets: tuple[CounterSet, ...] = ()

    def device(self, name: str) -> DraDevice | None:
        return next((d for d in self.devices if d.name == name), None)

    def for_gpu(self, uuid: str) -> tuple[DraDevice, ...]:
        return tuple(d for d in self.devices if d.gpu_uuid == uuid)


def device_name(gpu_index: int, profile: str | None = None, start: int = 0) -> str:
    """``gpu-0`` for a whole GPU; ``gpu-0-mig-1g-10gb-me-3`` for a placement (a DNS label)."""
    if profile is None:
        return f"gpu-{gpu_index}"
    return f"gpu-{gpu_index}-mig-{profile_slug(profile)}-{start}"


def profile_slug(profile: str) -> str:
    """A profile name as DNS-label text: ``1g.10gb+me`` -> ``1g-10gb-me``, ``1g.24gb-me`` ->
    ``1g-24gb-no-me``, ``1g.24gb+me.all`` -> ``1g-24gb-me-all``."""
    base, plus, attrs = profile.lower().partition("+")
    if not plus and base.endswith("-me"):
        base, attrs = base[: -len("-me")], "no-me"
    slug = base if not attrs else f"{base}-{attrs}"
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-")


def pool_model(
    inventory: Inventory,
    plan: PoolPlan,
    *,
    owned: Mapping[str, Collection[Placement]] | None = None,
    cuda_version: int | None = None,
) -> PoolModel:
    """The devices and counter sets the offers make, given the instances fatia cut (``owned``,
    by GPU UUID): every other existing instance is foreign and never overlapped."""
    owned = owned or {}
    common = node_attributes(inventory.driver_version, cuda_version)
    devices: list[DraDevice] = []
    counter_sets: list[CounterSet] = []
    for offer in plan.offers:
        gpu = next((g for g in inventory.gpus if g.index == offer.index and g.uuid == offer.uuid), None)
        if gpu is None or not gpu.usable:
            continue
        if offer.whole:
            devices.append(_whole_gpu(gpu, common))
            continue
        foreign = [
            gi.placement for gi in gpu.gpu_instances if gi.placement not in set(owned.get(gpu.uuid, ()))
        ]
        counters, mig = _mig_devices(gpu, offer, foreign, common)
        if mig:
            counter_sets.append(counters)
            devices.extend(mig)
    return PoolModel(tuple(devices), tuple(counter_sets))


def _whole_gpu(gpu: Gpu, common: Json) -> DraDevice:
    return DraDevice(
        name=device_name(gpu.index),
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        profile=None,
        placement=None,
        memory_mib=gpu.memory_mib,
        attributes=whole_gpu_attributes(gpu, common),
    )


def memory_slices(gpu: Gpu) -> int:
    """How many memory slices the GPU has (the end of its widest placement)."""
    return max((start + p.size for p in gpu.profiles for start in p.starts), default=0)


def _mig_devices(
    gpu: Gpu, offer: GpuOffer, foreign: Sequence[Placement], common: Json
) -> tuple[CounterSet, list[DraDevice]]:
    set_name = f"gpu-{gpu.index}"
    slots = memory_slices(gpu)
    compute = max((p.slices for p in gpu.profiles), default=0)
    compute -= sum(_slices(gpu, f.profile) for f in foreign)
    profiles = [p for name in offer.profiles if (p := gpu.profile(name)) is not None]
    counters: dict[str, int] = {f"memory-slice-{k}": 1 for k in range(slots)}
    counters["compute-slices"] = max(compute, 0)
    caps: dict[str, int] = {}
    for profile in profiles:
        limit = min(profile.max_count, offer.cap(profile.name) or profile.max_count)
        limit -= sum(1 for f in foreign if f.profile == profile.name)
        if limit < len(profile.starts):
            caps[profile.name] = limit
    media = any(p.enum in ALL_ME_ENUMS for p in profiles)
    if media:
        counters["media-engines"] = slots
    for name, limit in caps.items():
        if limit > 0:
            counters[f"profile-{profile_slug(name)}"] = limit
    devices = []
    for profile in profiles:
        if caps.get(profile.name, 1) <= 0 or profile.slices > compute:
            continue
        for start in profile.starts:
            placement = Placement(start, profile.size, profile.name)
            if any(placement.overlaps(f) for f in foreign):
                continue
            consumes = {f"memory-slice-{k}": 1 for k in placement.slots}
            consumes["compute-slices"] = profile.slices
            if profile.name in caps:
                consumes[f"profile-{profile_slug(profile.name)}"] = 1
            if media:
                consumes["media-engines"] = (
                    slots if profile.enum in ALL_ME_ENUMS else 0 if profile.enum in NO_ME_ENUMS else 1
                )
            devices.append(
                DraDevice(
                    name=device_name(gpu.index, profile.name, start),
                    gpu_index=gpu.index,
                    gpu_uuid=gpu.uuid,
                    profile=profile.name,
                    placement=placement,
                    memory_mib=profile.memory_mib,
                    attributes=mig_attributes(gpu, profile, placement, common),
                    counter_set=set_name,
                    consumes=tuple((k, v) for k, v in consumes.items() if v > 0),
                )
            )
    return CounterSet(set_name, tuple(counters.items())), devices


def _slices(gpu: Gpu, profile: str) -> int:
    found = gpu.profile(profile)
    return found.slices if found else 0
