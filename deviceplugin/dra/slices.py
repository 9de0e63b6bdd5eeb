"""The pool as partitionable devices, and those as ResourceSlice objects.

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
device without counters.

The ResourceSlices (``resource.k8s.io/v1``) follow the API's limits: the counter sets in
slices of their own (at most 8 sets each), devices in other slices, at most 128 per slice
and 64 where any device consumes counters or carries taints, a GPU's devices kept in one
slice. All slices of the node's pool (named after the node) carry the same generation and
the slice count. Attributes: ``type`` (``gpu``/``mig``), ``uuid`` (whole GPU) or
``parentUUID``, ``index``, ``productName``, ``profile``, ``placementStart``,
``placementSize``, engine counts, ``migCapable``, ``driverVersion`` and
``cudaDriverVersion`` (semantic versions); capacity ``memory``.

Pure: the objects are plain dicts in the API's JSON form.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.pool import GpuOffer, PoolPlan
from mig.catalog import ALL_ME_ENUMS, NO_ME_ENUMS, GpuInstanceProfile
from mig.inventory import Gpu, Inventory
from mig.layout import Placement

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES = 128
MAX_DEVICES_ADVANCED = 64  # any device with counters or taints in the slice
MAX_COUNTER_SETS = 8
UNHEALTHY_TAINT = f"{DRIVER_NAME}/unhealthy"

Json = dict[str, Any]


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


def semver(text: str) -> str | None:
    """A driver's version as a semantic version: ``535.104.05`` -> ``535.104.5``."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    numbers = [str(int(p)) for p in parts] + ["0"] * (3 - len(parts))
    return ".".join(numbers)


def cuda_semver(version: int | None) -> str | None:
    """NVML's CUDA driver version (``12040``) as ``12.4.0``."""
    if version is None or version <= 0:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}.0"


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
    common: Json = {}
    if (driver := semver(inventory.driver_version)) is not None:
        common["driverVersion"] = {"version": driver}
    if (cuda := cuda_semver(cuda_version)) is not None:
        common["cudaDriverVersion"] = {"version": cuda}
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


def _gpu_attributes(gpu: Gpu, common: Json) -> Json:
    return {
        "index": {"int": gpu.index},
        "productName": {"string": gpu.product[:64]},
        "migCapable": {"bool": gpu.mig_capable},
        **common,
    }


def _whole_gpu(gpu: Gpu, common: Json) -> DraDevice:
    attributes = {"type": {"string": "gpu"}, "uuid": {"string": gpu.uuid}, **_gpu_attributes(gpu, common)}
    if gpu.pci_bus_id:
        attributes["pciBusID"] = {"string": gpu.pci_bus_id[:64]}
    return DraDevice(
        name=device_name(gpu.index),
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        profile=None,
        placement=None,
        memory_mib=gpu.memory_mib,
        attributes=attributes,
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
                    attributes=_mig_attributes(gpu, profile, placement, common),
                    counter_set=set_name,
                    consumes=tuple((k, v) for k, v in consumes.items() if v > 0),
                )
            )
    return CounterSet(set_name, tuple(counters.items())), devices


def _slices(gpu: Gpu, profile: str) -> int:
    found = gpu.profile(profile)
    return found.slices if found else 0


def _mig_attributes(gpu: Gpu, profile: GpuInstanceProfile, placement: Placement, common: Json) -> Json:
    return {
        "type": {"string": "mig"},
        "parentUUID": {"string": gpu.uuid},
        "profile": {"string": profile.name},
        "placementStart": {"int": placement.start},
        "placementSize": {"int": placement.size},
        "computeSlices": {"int": profile.slices},
        "multiprocessors": {"int": profile.multiprocessors},
        "copyEngines": {"int": profile.copy_engines},
        "decoders": {"int": profile.decoders},
        "encoders": {"int": profile.encoders},
        "jpegEngines": {"int": profile.jpegs},
        "ofaEngines": {"int": profile.ofas},
        **_gpu_attributes(gpu, common),
    }


def quantity_mib(mib: int) -> str:
    """MiB as a Kubernetes quantity in the API server's canonical form (``40Gi``, ``9856Mi``)."""
    for suffix, size in (("Ti", 1 << 20), ("Gi", 1 << 10)):
        if mib and mib % size == 0:
            return f"{mib // size}{suffix}"
    return f"{mib}Mi"


def unhealthy_taints(
    model: PoolModel, inventory: Inventory, unhealthy: Collection[str], *, effect: str = "NoSchedule"
) -> dict[str, list[Json]]:
    """Device name -> taints for what is unhealthy: a GPU UUID taints all of that GPU's
    devices, a MIG UUID the device of its instance's placement."""
    bad_gpus = {g.uuid for g in inventory.gpus if g.uuid in unhealthy}
    bad_placements = {
        (g.uuid, gi.placement)
        for g in inventory.gpus
        for gi in g.gpu_instances
        if any(ci.uuid in unhealthy for ci in gi.compute_instances)
    }
    taint = {"key": UNHEALTHY_TAINT, "value": "true", "effect": effect}
    return {
        d.name: [dict(taint)]
        for d in model.devices
        if d.gpu_uuid in bad_gpus or (d.gpu_uuid, d.placement) in bad_placements
    }


def slice_prefix(node_name: str) -> str:
    """The name all of a node's slices start with (a DNS subdomain, short enough for a suffix)."""
    prefix = f"{node_name}-{DRIVER_NAME.replace('.', '-')}"
    if len(prefix) > 220:
        digest = hashlib.sha256(node_name.encode()).hexdigest()[:10]
        prefix = f"{node_name[:200].rstrip('.-')}-{digest}"
    return prefix


def resource_slices(
    model: PoolModel,
    *,
    node_name: str,
    generation: int,
    taints: Mapping[str, Sequence[Json]] | None = None,
    owner: Json | None = None,
) -> list[Json]:
    """The ResourceSlice objects for the pool: counter slices first, then device slices."""
    taints = taints or {}
    prefix = slice_prefix(node_name)
    specs: list[tuple[str, Json]] = []
    for n, sets in enumerate(_chunks(model.counter_sets, MAX_COUNTER_SETS)):
        specs.append((f"{prefix}-counters-{n}", {"sharedCounters": [_counter_set(c) for c in sets]}))
    for n, chunk in enumerate(_device_chunks(model.devices, taints)):
        specs.append(
            (f"{prefix}-devices-{n}", {"devices": [_device(d, taints.get(d.name, ())) for d in chunk]})
        )
    slices = []
    for name, spec in specs:
        metadata: Json = {"name": name, "labels": {f"{DRIVER_NAME}/node": node_name[:63]}}
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        slices.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceSlice",
                "metadata": metadata,
                "spec": {
                    "driver": DRIVER_NAME,
                    "nodeName": node_name,
                    "pool": {"name": node_name, "generation": generation, "resourceSliceCount": len(specs)},
                    **spec,
                },
            }
        )
    return slices


def node_owner(node_name: str, node_uid: str) -> Json:
    """The owner reference that makes a node's slices go with its Node object."""
    return {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}


def _counter_set(counters: CounterSet) -> Json:
    return {"name": counters.name, "counters": {k: {"value": str(v)} for k, v in counters.counters}}


def _device(device: DraDevice, taints: Sequence[Json]) -> Json:
    out: Json = {
        "name": device.name,
        "attributes": device.attributes,
        "capacity": {"memory": {"value": quantity_mib(device.memory_mib)}},
    }
    if device.counter_set is not None:
        out["consumesCounters"] = [
            {"counterSet": device.counter_set, "counters": {k: {"value": str(v)} for k, v in device.consumes}}
        ]
    if taints:
        out["taints"] = [dict(t) for t in taints]
    return out


def _chunks(items: Sequence[CounterSet], size: int) -> Iterable[Sequence[CounterSet]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _device_chunks(
    devices: Sequence[DraDevice], taints: Mapping[str, Sequence[Json]]
) -> list[list[DraDevice]]:
    """Devices in slices within the limits, each GPU's devices together where they fit."""
    groups: dict[int, list[DraDevice]] = {}
    for device in devices:
        groups.setdefault(device.gpu_index, []).append(device)

    def advanced(chunk: Sequence[DraDevice]) -> bool:
        return any(d.counter_set is not None or taints.get(d.name) for d in chunk)

    def limit(chunk: Sequence[DraDevice]) -> int:
        return MAX_DEVICES_ADVANCED if advanced(chunk) else MAX_DEVICES

    chunks: list[list[DraDevice]] = []
    current: list[DraDevice] = []
    for group in groups.values():
        if current and len(current) + len(group) > limit([*current, *group]):
            chunks.append(current)
            current = []
        for device in group:  # a group larger than a slice (not seen on real GPUs) is split
            if current and len(current) + 1 > limit([*current, device]):
                chunks.append(current)
                current = []
            current.append(device)
    if current:
        chunks.append(current)
    return chunks
