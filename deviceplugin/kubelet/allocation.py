"""Allocation policy: what a container gets, and which devices to prefer.

Pure functions over a :class:`~deviceplugin.plan.resources.Resource`; the gRPC layer
only converts. Allocate must be fast and free of side effects (a slow Allocate
holds up admission of every pod on the node), so everything here works on data
prepared when the resource was built.

- :func:`container_response` validates one container request and builds its
  ``ContainerAllocateResponse`` for the configured device-list strategies.
- :func:`preferred_devices` answers GetPreferredAllocation: replicas and MIG
  devices spread over physical GPUs (``distributed``, least-allocated first) or
  packed onto as few as possible (``packed``); whole GPUs chosen to be closest
  in the topology. Unknown or vanished IDs are skipped, never an error.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.plan.resources import Device, Resource
from mig.errors import FatiaError

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
CDI_KIND = "nvidia.com/gpu"
# Control device nodes handed over with passDeviceSpecs, when present on the host.
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
# Whole-GPU searches above this many candidate sets fall back to a greedy pick.
_MAX_COMBINATIONS = 20_000


class AllocationError(FatiaError):
    """A request the kubelet must not be granted; the message names the offending IDs."""


def container_response(
    resource: Resource,
    by_id: dict[str, Device],
    ids: Sequence[str],
    *,
    host_device_nodes: Sequence[str] = (),
) -> api_pb2.ContainerAllocateResponse:
    """The response for one container's request, or :class:`AllocationError`."""
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise AllocationError(f"unknown device IDs for {resource.name}: {', '.join(unknown)}")
    if resource.fail_requests_greater_than_one and len(ids) > 1 and any("::" in i for i in ids):
        raise AllocationError(
            f"invalid request for {resource.name}: maximum request size for shared resources "
            f"is 1; found {len(ids)} ({', '.join(ids)})"
        )
    devices = [by_id[i] for i in ids]
    uuids = list(dict.fromkeys(d.uuid for d in devices))
    response = api_pb2.ContainerAllocateResponse()
    strategies = resource.options.device_list_strategy
    if "envvar" in strategies:
        response.envs[VISIBLE_DEVICES] = ",".join(uuids)
    if "volume-mounts" in strategies:
        response.envs[VISIBLE_DEVICES] = VOLUME_MOUNT_ROOT
        response.mounts.extend(
            api_pb2.Mount(container_path=f"{VOLUME_MOUNT_ROOT}/{u}", host_path="/dev/null", read_only=True)
            for u in uuids
        )
    if "cdi-cri" in strategies:
        response.cdi_devices.extend(api_pb2.CDIDevice(name=f"{CDI_KIND}={u}") for u in uuids)
    if resource.options.pass_device_specs:
        response.devices.extend(
            api_pb2.DeviceSpec(container_path=path, host_path=path, permissions="rw")
            for path in _device_nodes(devices, host_device_nodes)
        )
    return response


def _device_nodes(devices: Iterable[Device], host_device_nodes: Sequence[str]) -> list[str]:
    """Control nodes present on the host, then each GPU's node and its MIG capability nodes."""
    paths = list(host_device_nodes)
    for device in devices:
        paths.append(f"/dev/nvidia{device.minor}")
        paths.extend(device.caps)
    return list(dict.fromkeys(paths))


def host_control_devices(dev_root: Path = Path("/")) -> tuple[str, ...]:
    """The control device nodes that exist on this host (checked once, not per Allocate)."""
    return tuple(p for p in CONTROL_DEVICES if (dev_root / p.lstrip("/")).exists())


def preferred_devices(
    resource: Resource,
    by_id: dict[str, Device],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """The devices to prefer for one container, never failing on a bad ID."""
    candidates = [by_id[i] for i in dict.fromkeys(available) if i in by_id]
    required = [by_id[i] for i in dict.fromkeys(must_include) if i in by_id]
    size = max(size, len(required))
    if size >= len(candidates):
        return [d.id for d in _union(required, candidates)][:size]
    shared = any(d.replica is not None or d.mig is not None for d in resource.devices)
    if shared:
        chosen = _spread(resource, candidates, required, size)
    else:
        chosen = _closest(resource, candidates, required, size)
    return [d.id for d in chosen]


def _union(first: Sequence[Device], second: Sequence[Device]) -> list[Device]:
    return list({d.id: d for d in [*first, *second]}.values())


def _spread(
    resource: Resource, candidates: Sequence[Device], required: Sequence[Device], size: int
) -> list[Device]:
    """Greedy pick: least allocated first (``distributed``), or most (``packed``).

    Load is counted twice: per underlying device (a GPU or MIG device, whose
    replicas share it) and per physical GPU, so replicas spread over devices and
    MIG devices spread over (or pack onto) GPUs. "Allocated" is known from the
    request alone, as in NVIDIA's plugin: what the kubelet does not offer as
    available is taken. Remaining ties go to the lower GPU index, then the lower ID.

    Replicas of one device are interchangeable, so each pick compares devices
    (a handful), not every replica.
    """
    by_device = Counter(resource.device_totals)
    by_gpu = Counter(resource.gpu_totals)
    for d in candidates:
        by_device[d.uuid] -= 1
        by_gpu[d.gpu] -= 1
    chosen = list(required)
    taken = {d.id for d in chosen}
    for d in chosen:
        by_device[d.uuid] += 1
        by_gpu[d.gpu] += 1
    groups: dict[str, list[Device]] = {}
    for d in sorted(candidates, key=lambda d: d.id, reverse=True):
        if d.id not in taken:
            groups.setdefault(d.uuid, []).append(d)  # lowest ID last, popped first
    packed = resource.options.allocation_policy == "packed"
    sign = -1 if packed else 1
    used = {d.gpu for d in chosen}

    def rank(uuid: str) -> tuple[int, int, bool, int, str]:
        d = groups[uuid][-1]
        # On equal load, distributed prefers a GPU this container has no device on yet.
        return (sign * by_device[uuid], sign * by_gpu[d.gpu], (d.gpu in used) != packed, d.gpu, d.id)

    while len(chosen) < size and groups:
        best = groups[min(groups, key=rank)]
        pick = best.pop()
        if not best:
            del groups[pick.uuid]
        chosen.append(pick)
        used.add(pick.gpu)
        by_device[pick.uuid] += 1
        by_gpu[pick.gpu] += 1
    return chosen


def _closest(
    resource: Resource, candidates: Sequence[Device], required: Sequence[Device], size: int
) -> list[Device]:
    """Whole GPUs: the set with the highest pairwise link score that holds the required ones."""
    rest = [d for d in candidates if d.id not in {r.id for r in required}]
    need = size - len(required)

    def score(group: Sequence[Device]) -> int:
        return sum(resource.topology.get((a.gpu, b.gpu), 0) for a, b in itertools.combinations(group, 2))

    if math.comb(len(rest), need) <= _MAX_COMBINATIONS:
        best = max(
            itertools.combinations(rest, need),
            key=lambda extra: (score([*required, *extra]), [-d.gpu for d in extra]),
        )
        return [*required, *best]
    chosen = list(required)
    pool = list(rest)
    while len(chosen) < size:
        best_device = max(pool, key=lambda d: (score([*chosen, d]), -d.gpu))
        pool.remove(best_device)
        chosen.append(best_device)
    return chosen
