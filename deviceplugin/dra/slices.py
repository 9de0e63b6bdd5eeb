"""The pool's devices (:mod:`.devices`) as ResourceSlice objects, with their taints.

The ResourceSlices (``resource.k8s.io/v1``) follow the API's limits: the counter sets in
slices of their own (at most 8 sets each), devices in other slices, at most 128 per slice
and 64 where any device consumes counters or carries taints, a GPU's devices kept in one
slice. All slices of the node's pool (named after the node) carry the same generation and
the slice count. A device that is unhealthy carries the taint :data:`UNHEALTHY_TAINT`
(:func:`unhealthy_taints`).

Pure: the objects are plain dicts in the API's JSON form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.attributes import Json
from deviceplugin.dra.devices import CounterSet, DraDevice, PoolModel
from mig.inventory import Inventory

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES = 128
MAX_DEVICES_ADVANCED = 64  # any device with counters or taints in the slice
MAX_COUNTER_SETS = 8
UNHEALTHY_TAINT = f"{DRIVER_NAME}/unhealthy"


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
