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

Both are methods of :class:`ResourceIndex`, the resource's devices indexed once
(by the plugin server, whenever its resource changes) so that a call costs a
lookup per offered ID and not a pass over every device and replica:

- every device ID maps to its *unit*, the GPU or MIG device behind it (replicas
  of one unit are interchangeable; a node has a few dozen units at most);
- each unit keeps its IDs sorted, so a pick walks from the lowest ID until it
  meets one that is offered;
- each unit's ``ContainerAllocateResponse`` is built once: a request whose
  devices all sit on one unit (one replica, one GPU, one MIG device: the
  common case) is answered with it, and only a request that spans units builds
  one of its own;
- whole-GPU preferences, a search over sets of GPUs, are remembered per offer;
- every ID also has a *slot*, its place in one tuple of all IDs (unit by unit), and
  an offer is read as one flag per slot, by :mod:`~deviceplugin.kubelet._offer` in C
  straight from the request's bytes: with 896 IDs offered, making, hashing and
  comparing a Python object per ID would be nearly all the call (``_read_offer``
  is the same reading in Python, for where the C reader declines and for tests).

A unit is named by its UUID, which names one device on one physical GPU: every
``Device`` with the same ``uuid`` has the same ``gpu``, as
:func:`~deviceplugin.plan.resources.build_resources` makes them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.config.schema import AllocationPolicy, DeviceListStrategy, PluginOptions
from deviceplugin.kubelet import wire
from deviceplugin.kubelet._offer import OfferTable
from deviceplugin.plan.resources import Device, Resource
from mig.errors import AllocationError

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
CDI_KIND = "nvidia.com/gpu"
# Control device nodes handed over with passDeviceSpecs, when present on the host.
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
# Whole-GPU searches above this many candidate sets fall back to a greedy pick.
_MAX_COMBINATIONS = 20_000
# A unit's place in the pick order (see ResourceIndex._spread); it ends with the unit and its slot.
_Place = tuple[int, int, bool, int, bytes, int, int]
# Whole-GPU answers remembered per index (offers repeat: the free GPUs change rarely).
_REMEMBERED_OFFERS = 512


def container_response(
    resource: Resource,
    by_id: Mapping[str, Device],
    ids: Sequence[str],
    *,
    host_device_nodes: Sequence[str] = (),
) -> api_pb2.ContainerAllocateResponse:
    """The response for one container's request, or :class:`AllocationError`.

    Indexes the resource for this one call; a server keeps a :class:`ResourceIndex`.
    """
    index = ResourceIndex(resource, by_id=by_id, host_device_nodes=host_device_nodes)
    return index.container_response(ids)


def preferred_devices(
    resource: Resource,
    by_id: Mapping[str, Device],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """The devices to prefer for one container, never failing on a bad ID.

    Indexes the resource for this one call; a server keeps a :class:`ResourceIndex`.
    """
    return ResourceIndex(resource, by_id=by_id).preferred_devices(available, must_include, size)


def host_control_devices(dev_root: Path = Path("/")) -> tuple[str, ...]:
    """The control device nodes that exist on this host (checked once, not per Allocate)."""
    return tuple(p for p in CONTROL_DEVICES if (dev_root / p.lstrip("/")).exists())


@dataclass(frozen=True)
class _Unit:
    """The GPU or MIG device behind one or more advertised devices (its replicas)."""

    uuid: str
    gpu: int
    total: int  # advertised devices on it
    ids: tuple[bytes, ...]  # their IDs, sorted: the lowest is picked first


class ResourceIndex:
    """A resource's devices indexed for Allocate and GetPreferredAllocation.

    Built once per resource (O(devices)); read-only afterwards, so the plugin
    server's worker threads share it without a lock. The one thing that grows
    is the memo of whole-GPU answers, a dict that threads may fill at once:
    the worst case is an answer computed twice.

    ``accelerated=False`` leaves the C offer reader out, so that tests can hold
    it to the Python one.
    """

    def __init__(
        self,
        resource: Resource,
        *,
        by_id: Mapping[str, Device] | None = None,
        host_device_nodes: Sequence[str] = (),
        accelerated: bool = True,
    ) -> None:
        self.resource = resource
        self.by_id: Mapping[str, Device] = resource.by_id() if by_id is None else by_id
        self._host_device_nodes = tuple(host_device_nodes)
        self._shared = any(d.replica is not None or d.mig is not None for d in resource.devices)
        self._packed = resource.options.allocation_policy is AllocationPolicy.PACKED

        unit_numbers: dict[str, int] = {}
        members: list[list[Device]] = []
        for device in (*resource.devices, *self.by_id.values()):
            if device.uuid not in unit_numbers:
                unit_numbers[device.uuid] = len(members)
                members.append([])
        for device in self.by_id.values():
            members[unit_numbers[device.uuid]].append(device)
        totals = resource.device_totals
        self._units = tuple(
            _Unit(uuid, found[0].gpu, totals[uuid], tuple(sorted(d.id.encode() for d in found)))
            for uuid, found in zip(unit_numbers, members, strict=True)
            if found
        )
        # Every ID (as bytes, as GetPreferredAllocation reads them) has a slot: unit by unit,
        # sorted within each, unit n's IDs in the slots range(*spans[n]). An offer is read
        # as one flag per slot.
        self._ids = tuple(i for unit in self._units for i in unit.ids)
        self._slot_of = {i: slot for slot, i in enumerate(self._ids)}
        self._device_of = tuple(self.by_id[i.decode()] for i in self._ids)
        self._unit_of_slot = [n for n, unit in enumerate(self._units) for _ in unit.ids]
        self._spans = list(itertools.pairwise([0, *itertools.accumulate(len(u.ids) for u in self._units)]))
        self._offers = OfferTable(self._ids, self._unit_of_slot) if accelerated else None
        # The units' fields as lists, for the pick loop.
        self._unit_totals = [unit.total for unit in self._units]
        self._gpu_of = [unit.gpu for unit in self._units]
        self._units_on: dict[int, list[int]] = {}  # GPU -> its units
        for n, unit in enumerate(self._units):
            self._units_on.setdefault(unit.gpu, []).append(n)
        # Advertised devices per physical GPU, with every GPU a unit sits on.
        self._gpu_totals = {d.gpu: 0 for d in self.by_id.values()} | dict(resource.gpu_totals)

        # One ready response per distinct (UUID, device nodes): what a request
        # whose devices all share them gets.
        fragments: dict[tuple[str, int, tuple[str, ...]], int] = {}
        self._fragment_of: dict[str, int] = {}
        responses: list[api_pb2.ContainerAllocateResponse] = []
        for device in self.by_id.values():
            key = (device.uuid, device.minor, device.caps)
            if key not in fragments:
                fragments[key] = len(responses)
                responses.append(self._build_response([device]))
            self._fragment_of[device.id] = fragments[key]
        self._responses = tuple(responses)
        self._allocate_responses = tuple(api_pb2.AllocateResponse(container_responses=[r]) for r in responses)
        self._closest_memo: dict[tuple[bytes, tuple[int, ...], int], list[str]] = {}

    # -- Allocate -------------------------------------------------------------

    def allocate_response(self, requests: Sequence[Sequence[str]]) -> api_pb2.AllocateResponse:
        """The response to an Allocate call, one container's device IDs per entry, or
        :class:`AllocationError`.

        A call for one container whose devices share a unit (the common case) gets a
        ready message, shared with other calls: never modify it.
        """
        if len(requests) == 1:
            ids = list(requests[0])
            fragment = self._fragment(ids)
            if fragment is not None:
                return self._allocate_responses[fragment]
        return api_pb2.AllocateResponse(
            container_responses=[self.container_response(ids) for ids in requests]
        )

    def container_response(self, ids: Sequence[str]) -> api_pb2.ContainerAllocateResponse:
        """The response for one container's request, or :class:`AllocationError`.

        The message may be shared with other calls: copy it (``append``), never modify it.
        """
        ids = list(ids)
        fragment = self._fragment(ids)
        if fragment is not None:
            return self._responses[fragment]
        by_id = self.by_id
        return self._build_response([by_id[i] for i in ids])

    def _fragment(self, ids: list[str]) -> int | None:
        """The ready response that answers ``ids`` (None if they span units), or
        :class:`AllocationError` for a request the resource cannot take."""
        fragment_of = self._fragment_of
        try:
            fragments = [fragment_of[i] for i in ids]
        except KeyError:
            unknown = [i for i in ids if i not in fragment_of]
            raise AllocationError(
                f"unknown device IDs for {self.resource.name}: {', '.join(unknown)}"
            ) from None
        resource = self.resource
        if resource.fail_requests_greater_than_one and len(ids) > 1 and any("::" in i for i in ids):
            raise AllocationError(
                f"invalid request for {resource.name}: maximum request size for shared resources "
                f"is 1; found {len(ids)} ({', '.join(ids)})"
            )
        if fragments and fragments.count(fragments[0]) == len(fragments):
            return fragments[0]
        return None

    def _build_response(self, devices: Sequence[Device]) -> api_pb2.ContainerAllocateResponse:
        uuids = list(dict.fromkeys(d.uuid for d in devices))
        options: PluginOptions = self.resource.options
        response = api_pb2.ContainerAllocateResponse()
        strategies = options.device_list_strategy
        if DeviceListStrategy.ENVVAR in strategies:
            response.envs[VISIBLE_DEVICES] = ",".join(uuids)
        if DeviceListStrategy.VOLUME_MOUNTS in strategies:
            response.envs[VISIBLE_DEVICES] = VOLUME_MOUNT_ROOT
            response.mounts.extend(
                api_pb2.Mount(
                    container_path=f"{VOLUME_MOUNT_ROOT}/{u}", host_path="/dev/null", read_only=True
                )
                for u in uuids
            )
        if DeviceListStrategy.CDI_CRI in strategies:
            response.cdi_devices.extend(api_pb2.CDIDevice(name=f"{CDI_KIND}={u}") for u in uuids)
        if options.pass_device_specs:
            response.devices.extend(
                api_pb2.DeviceSpec(container_path=path, host_path=path, permissions="rw")
                for path in _device_nodes(devices, self._host_device_nodes)
            )
        return response

    # -- GetPreferredAllocation -------------------------------------------------

    def preferred_devices(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """The devices to prefer for one container, never failing on a bad ID."""
        flags, counts, required = self._read_offer(
            [i.encode() for i in available], [i.encode() for i in must_include]
        )
        return [i.decode() for i in self._prefer(flags, counts, required, size)]

    def preferred_wire(self, request: bytes) -> list[bytes]:
        """:meth:`preferred_devices` for one serialized ``ContainerPreferredAllocationRequest``.

        The offer reader in C reads it; where it declines, protobuf does (and raises
        ``DecodeError`` if the request is not a message at all).
        """
        read = self._offers.read(request) if self._offers is not None else None
        if read is not None:
            flags, counts, required, size = read
            return self._prefer(flags, counts, required, size)
        parsed = wire.ContainerPreferredAllocationRequest.FromString(request)
        flags, counts, required = self._read_offer(parsed.available_deviceIDs, parsed.must_include_deviceIDs)
        return self._prefer(flags, counts, required, parsed.allocation_size)

    def _read_offer(
        self, available: Iterable[bytes], must_include: Iterable[bytes]
    ) -> tuple[bytes, list[int], list[int]]:
        """What :meth:`OfferTable.read <deviceplugin.kubelet._offer.OfferTable.read>` reads, in
        Python: a flag per slot (1: offered), offered IDs per unit, the slots of the known
        must-include IDs."""
        offered = set(available)
        flags = bytes(map(offered.__contains__, self._ids))
        counts = [flags.count(1, start, stop) for start, stop in self._spans]
        slot_of = self._slot_of
        return flags, counts, [slot_of[i] for i in must_include if i in slot_of]

    def _prefer(
        self, flags: bytes, counts: Sequence[int], must_include: Iterable[int], size: int
    ) -> list[bytes]:
        required = list(dict.fromkeys(must_include))
        size = max(size, len(required))
        ids = self._ids
        if size >= sum(counts):
            everything = dict.fromkeys([*(ids[s] for s in required), *itertools.compress(ids, flags)])
            return list(everything)[:size]
        if self._shared:
            return self._spread(flags, counts, required, size)
        return [i.encode() for i in self._closest(flags, required, size)]

    def _spread(self, flags: bytes, counts: Sequence[int], required: Sequence[int], size: int) -> list[bytes]:
        """Greedy pick: least allocated first (``distributed``), or most (``packed``).

        Load is counted twice: per unit (a GPU or MIG device, whose replicas
        share it) and per physical GPU, so replicas spread over devices and MIG
        devices spread over (or pack onto) GPUs. "Allocated" is known from the
        request alone, as in NVIDIA's plugin: what the kubelet does not offer as
        available is taken. Remaining ties go to the lower GPU index, then the
        lower ID.

        Replicas of one unit are interchangeable, so each pick compares units
        (a handful), not every replica.
        """
        ids, spans, gpu_of, unit_of_slot = self._ids, self._spans, self._gpu_of, self._unit_of_slot
        by_unit = [total - count for total, count in zip(self._unit_totals, counts, strict=True)]
        by_gpu = self._gpu_totals.copy()
        for gpu, count in zip(gpu_of, counts, strict=True):
            by_gpu[gpu] -= count
        chosen = [ids[slot] for slot in required]
        for slot in required:
            n = unit_of_slot[slot]
            by_unit[n] += 1
            by_gpu[gpu_of[n]] += 1
        taken = set(required)

        def next_offered(start: int, stop: int) -> int | None:
            """The first slot in ``range(start, stop)`` that is offered and not required."""
            slot = flags.find(1, start, stop)
            while slot in taken:
                slot = flags.find(1, slot + 1, stop)
            return None if slot < 0 else slot

        packed = self._packed
        sign = -1 if packed else 1
        used = {gpu_of[unit_of_slot[slot]] for slot in required}

        def place(n: int, slot: int) -> _Place:
            """Unit ``n``'s place in line with ``slot`` its next pick: the least (``packed``:
            most) loaded unit, then GPU; on equal load distributed prefers a GPU this
            container has no device on yet."""
            gpu = gpu_of[n]
            return (sign * by_unit[n], sign * by_gpu[gpu], (gpu in used) != packed, gpu, ids[slot], n, slot)

        line: dict[int, _Place] = {}  # unit -> its place
        for n, count in enumerate(counts):
            first = next_offered(*spans[n]) if count else None
            if first is not None:
                line[n] = place(n, first)
        while len(chosen) < size and line:
            *_, n, slot = min(line.values())
            chosen.append(ids[slot])
            gpu = gpu_of[n]
            used.add(gpu)
            by_unit[n] += 1
            by_gpu[gpu] += 1
            following = next_offered(slot + 1, spans[n][1])
            if following is None:
                del line[n]
            else:
                line[n] = place(n, following)
            for other in self._units_on[gpu]:  # their GPU's load changed too
                if other != n and other in line:
                    line[other] = place(other, line[other][-1])
        return chosen

    def _closest(self, flags: bytes, required: Sequence[int], size: int) -> list[str]:
        """Whole GPUs, remembered per offer: the answer depends on nothing else."""
        key = (flags, tuple(required), size)
        answer = self._closest_memo.get(key)
        if answer is None:
            devices = self._device_of
            candidates = list(itertools.compress(devices, flags))
            chosen = _closest(self.resource.topology, candidates, [devices[s] for s in required], size)
            answer = [d.id for d in chosen]
            if len(self._closest_memo) >= _REMEMBERED_OFFERS:
                self._closest_memo.clear()
            self._closest_memo[key] = answer
        return list(answer)


def _device_nodes(devices: Iterable[Device], host_device_nodes: Sequence[str]) -> list[str]:
    """Control nodes present on the host, then each GPU's node and its MIG capability nodes."""
    paths = list(host_device_nodes)
    for device in devices:
        paths.append(f"/dev/nvidia{device.minor}")
        paths.extend(device.caps)
    return list(dict.fromkeys(paths))


def _closest(
    topology: Mapping[tuple[int, int], int],
    candidates: Sequence[Device],
    required: Sequence[Device],
    size: int,
) -> list[Device]:
    """Whole GPUs: the set with the highest pairwise link score that holds the required ones.

    The score of a set is the sum of its pairs' links; the required GPUs'
    links among themselves are the same for every set, so only links to them
    and among the added GPUs are summed, from tables built once per search.
    """
    required_ids = {r.id for r in required}
    rest = [d for d in candidates if d.id not in required_ids]
    need = size - len(required)
    links = [[topology.get((a.gpu, b.gpu), 0) for b in rest] for a in rest]
    to_required = [sum(topology.get((r.gpu, d.gpu), 0) for r in required) for d in rest]

    if math.comb(len(rest), need) <= _MAX_COMBINATIONS:
        lower_first = [-d.gpu for d in rest]

        def key(extra: tuple[int, ...]) -> tuple[int, list[int]]:
            score = sum(to_required[i] for i in extra)
            score += sum(links[i][j] for i, j in itertools.combinations(extra, 2))
            return (score, [lower_first[i] for i in extra])

        best = max(itertools.combinations(range(len(rest)), need), key=key)
        return [*required, *(rest[i] for i in best)]
    chosen = list(required)
    pool = list(range(len(rest)))
    gain = list(to_required)  # each pool GPU's links to the chosen ones
    while len(chosen) < size:
        best_position = max(pool, key=lambda i: (gain[i], -rest[i].gpu))
        pool.remove(best_position)
        chosen.append(rest[best_position])
        for i in pool:
            gain[i] += links[best_position][i]
    return chosen
