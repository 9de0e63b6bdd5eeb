"""A simulated NVML, shaped exactly like the ``pynvml`` module.

:class:`SimNvml` offers pynvml's function names with pynvml's parameters,
returns pynvml's ctypes structs, and raises pynvml's ``NVMLError_*``
exceptions; a test compares every signature with the real module. Handles are
real ``pynvml`` pointer types whose (never dereferenced) address encodes what
they point to, so code cannot tell them from the driver's.

It is exact, not permissive. Where each behaviour comes from (the reference is
``reference/mig-hardware.md``; "UG" is NVIDIA's MIG user guide):

- profiles, ids, caps, placements, SMs and memory per model: :mod:`mig.catalog`
  (its sources are listed there); placements are enforced, overlaps and full
  profiles raise INSUFFICIENT_RESOURCES, an unknown profile id INVALID_ARGUMENT,
  an enum past the end INVALID_ARGUMENT (nvml.h, reference §1.1, §10);
- GPU-instance ids follow the placement (:func:`gpu_instance_id`, UG examples);
  without a placement NVML chooses (:func:`_implicit_start`, UG examples);
- compute-instance profiles per GPU instance, with REV1 on double-memory 1g
  instances (:func:`_ci_profiles`, reference §4);
- destroying an instance with compute instances or processes raises IN_USE
  (nvml.h);
- MIG mode (UG getting-started, deployment considerations): the driver resets an
  Ampere GPU itself to change the mode, so on an idle bare-metal GPU the change is
  immediate; it stays pending (activation status IN_USE) while processes or other
  clients hold the GPU, and (NOT_SUPPORTED) in a VM without GPU reset, until a reset
  or reboot; Hopper and later change at once unless processes run; Ampere's mode
  survives a reboot, Hopper's does not (reference §5).

The state lives in a file (:mod:`mig.sim.state`); :class:`SimControl` is the
test and demo side: processes, other clients, faults, XIDs, lost GPUs, resets,
passthrough VMs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from mig.catalog import (
    ALL_ME_ENUMS,
    CI_1_SLICE,
    CI_1_SLICE_REV1,
    CI_7_SLICE_NVL,
    CI_ENUM_BY_SLICES,
    CI_PROFILE_COUNT,
    GI_1_SLICE,
    GI_1_SLICE_REV2,
    GI_PROFILE_COUNT,
    MODELS,
    NO_ME_ENUMS,
    GpuInstanceProfile,
    GpuModel,
)
from mig.devicenodes import write_mig_minors
from mig.fswatch import DirWatch
from mig.sim.state import (
    SIM_PROC_ROOT,
    STATE_FILE,
    SimComputeInstance,
    SimEvent,
    SimFault,
    SimGpu,
    SimGpuInstance,
    SimNode,
    SimProcess,
    SimStore,
    mig_uuid,
    new_node,
)

# Handle addresses: a tag in the high bits, then GPU index, GI id + 1, CI id + 1.
_TAG_DEVICE, _TAG_GI, _TAG_CI, _TAG_EVENT_SET = 0x7A1, 0x7A2, 0x7A3, 0x7A4
_UNATTRIBUTED = 0xFFFFFFFF
# How often a simulated event wait looks at the state file (one stat call).
_EVENT_POLL_S = 0.04

_MUTATING = frozenset(
    {
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstance",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceDestroy",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
    }
)

# Events a simulated GPU can deliver (pynvml masks).
SUPPORTED_EVENTS: int = (
    pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventMigConfigChange
)


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def _encode(tag: int, gpu: int, gi: int = -1, ci: int = -1) -> int:
    return (tag << 36) | (gpu << 20) | ((gi + 1) << 10) | (ci + 1)


def _decode(handle: Any, tag: int) -> tuple[int, int, int]:
    try:
        address = ctypes.cast(handle, ctypes.c_void_p).value or 0
    except (TypeError, ctypes.ArgumentError):
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT) from None
    if address >> 36 != tag:
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return (address >> 20) & 0xFFFF, ((address >> 10) & 0x3FF) - 1, (address & 0x3FF) - 1


def _pointer(kind: Any, address: int) -> Any:
    return ctypes.cast(ctypes.c_void_p(address), kind)


def _ref_value(ref: Any) -> ctypes.c_uint:
    """The ``c_uint`` behind ``byref(c_uint(n))`` or ``pointer(c_uint(n))``."""
    value = ref._obj if hasattr(ref, "_obj") else ref.contents
    assert isinstance(value, ctypes.c_uint)
    return value


def _answer_handles(handles: list[Any], handlesRef: Any, countRef: Any) -> int:
    """Answer a ``Get*Instances`` call as NVML does: ``handles`` into ``handlesRef`` and their
    number into ``countRef``; INSUFFICIENT_SIZE, with the number needed, where it is too short."""
    count = _ref_value(countRef)
    if count.value < len(handles):
        count.value = len(handles)
        raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    for i, handle in enumerate(handles):
        handlesRef[i] = handle
    count.value = len(handles)
    return int(pynvml.NVML_SUCCESS)


def gpu_instance_id(start: int, size: int, memory_slices: int) -> int:
    """The GPU-instance id a driver gives an instance at ``start:size``.

    A position in the binary tree of memory slices: the whole GPU is 0, its halves 1-2,
    quarters 3-6, eighths 7-14. On an 8-slot GPU a 7g is 0, a 3g or 4g at 0 is 1 and at
    4 is 2, a 2g (or double-memory 1g) at 4 is 5, a 1g at 6 is 13; on a 4-slot GPU (A30,
    RTX PRO 6000) the tree is one level shorter: 4g 0, 2g 1-2, 1g 3-6. This is what the
    MIG user guide's examples show on A100 (1g at 0..6 -> 7..13, 2g at 4:2 -> 5, 4g at
    0:4 -> 1, 3g at 4:4 -> 2) and users' outputs on A30 (1g at 0..3 -> 3..6); a 3g uses
    the id of the half its memory is in. (Outputs of older drivers, e.g. R510, show the
    halves numbered the other way round: 3g at 4:4 -> 1.)
    """
    level = (memory_slices // size).bit_length() - 1
    return (1 << level) - 1 + start // size


def _implicit_start(profile: GpuInstanceProfile, model: GpuModel, gpu: SimGpu) -> int | None:
    """Where NVML puts a GPU instance created without a placement.

    The free legal start that rules out the fewest placements still possible for any
    profile; of equals, the lowest. This reproduces every creation sequence in NVIDIA's
    MIG user guide and users' outputs: on an empty A100, 19,19,14,9 (1g,1g,2g,3g) puts
    the 1g's at 6 and 4 and the 2g at 0, so the 3g fails, while 9,19,14,19 puts the 3g at
    4 and succeeds; seven 1g land at 6, 4, 5, 0, 1, 2, 3; a first 2g lands at 4:2, a
    first 3g at 4:4; on an A30 1g's fill from slot 0.
    """
    free = [
        (start, other.size)
        for other in model.profiles
        for start in other.starts
        if _fits(gpu, start, other.size)
    ]

    def ruled_out(start: int) -> int:
        return sum(1 for s, n in free if s < start + profile.size and start < s + n)

    starts = [s for s in sorted(profile.starts) if _fits(gpu, s, profile.size)]
    return min(starts, key=ruled_out) if starts else None


def _fits(gpu: SimGpu, start: int, size: int) -> bool:
    return all(start + size <= gi.start or gi.start + gi.size <= start for gi in gpu.gpu_instances)


@dataclass(frozen=True)
class _CiProfile:
    enum: int
    slices: int
    count: int
    multiprocessors: int


def _ci_profiles(gi_profile: GpuInstanceProfile, model: GpuModel) -> list[_CiProfile]:
    """Compute-instance profiles a GPU instance offers.

    Every standard size that fits, each with its share of the instance's SMs. A
    double-memory 1g instance (1g.10gb on A100-40GB) also offers 1_SLICE_REV1, the one
    slice with all of its SMs, while its 1_SLICE has a plain 1g's SMs (reference §4); a
    7g instance of an NVL-rack GPU (GB200) also offers 7_SLICE_NVL [inferred from nvml.h].
    """
    found = [
        _CiProfile(
            enum,
            slices,
            gi_profile.slices // slices,
            gi_profile.multiprocessors * slices // gi_profile.slices,
        )
        for slices, enum in CI_ENUM_BY_SLICES.items()
        if slices <= gi_profile.slices
    ]
    if gi_profile.enum == GI_1_SLICE_REV2:
        plain = next((p for p in model.profiles if p.enum == GI_1_SLICE), gi_profile)
        found = [
            _CiProfile(CI_1_SLICE, 1, 1, plain.multiprocessors),
            _CiProfile(CI_1_SLICE_REV1, 1, 1, gi_profile.multiprocessors),
        ]
    if gi_profile.slices == 7 and model.nvl_compute_profile:
        found.append(_CiProfile(CI_7_SLICE_NVL, 7, 1, gi_profile.multiprocessors))
    return found


class SimNvml:
    """pynvml's functions over a simulated node. Construct with :func:`open_sim`."""

    def __init__(self, store: SimStore) -> None:
        self._store = store
        self._initialized = 0
        self._event_sets: dict[int, dict[int, int]] = {}  # set id -> {gpu: mask}
        self._event_cursor: dict[int, int] = {}  # set id -> last delivered seq
        self._next_event_set = 1
        self._watch: DirWatch | None = None  # for event waits: sleep until the state changes

    # -- plumbing ---------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self._store.path

    def _node(self) -> SimNode:
        if not self._initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        return self._store.read()

    def _check_faults(self, call: str, gpu: int | None, when: str) -> None:
        """Fire a matching injected fault: raise its error or kill this process."""
        matching = [f for f in self._store.read().faults if self._matches(f, call, gpu, when)]
        if not matching:
            return
        fired: SimFault | None = matching[0]
        if fired is not None and (fired.skip > 0 or fired.count is not None):  # it changes: write it
            fired = None
            with self._store.mutate() as node:
                for fault in node.faults:
                    if self._matches(fault, call, gpu, when):
                        if fault.skip > 0:
                            fault.skip -= 1
                            continue
                        if fault.count is not None:
                            fault.count -= 1
                        fired = fault
                        break
                node.faults = [f for f in node.faults if f.count is None or f.count > 0]
        if fired is None:
            return
        if fired.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise _error(fired.error)

    @staticmethod
    def _matches(fault: SimFault, call: str, gpu: int | None, when: str) -> bool:
        name_ok = fault.call == call or (fault.call == "mutating" and call in _MUTATING)
        return name_ok and fault.when == when and (fault.gpu is None or fault.gpu == gpu)

    def _gpu(self, node: SimNode, index: int) -> SimGpu:
        if not 0 <= index < len(node.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = node.gpus[index]
        if gpu.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _device(self, call: str, handle: Any) -> tuple[SimNode, SimGpu, SimComputeInstance | None]:
        """Resolve a device handle: the GPU, and the compute instance for a MIG handle."""
        index, gi_id, ci_id = _decode(handle, _TAG_DEVICE)
        self._check_faults(call, index, "before")
        node = self._node()
        gpu = self._gpu(node, index)
        if gi_id < 0:
            return node, gpu, None
        gi = next((g for g in gpu.gpu_instances if g.id == gi_id), None)
        ci = next((c for c in gi.compute_instances if c.id == ci_id), None) if gi else None
        if ci is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return node, gpu, ci

    def _whole(self, call: str, handle: Any) -> tuple[SimNode, SimGpu]:
        node, gpu, ci = self._device(call, handle)
        if ci is not None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return node, gpu

    def _gpu_instance(self, call: str, handle: Any) -> tuple[SimGpu, SimGpuInstance]:
        index, gi_id, _ = _decode(handle, _TAG_GI)
        self._check_faults(call, index, "before")
        gpu = self._gpu(self._node(), index)
        gi = next((g for g in gpu.gpu_instances if g.id == gi_id), None)
        if gi is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gi

    def _compute_instance(self, call: str, handle: Any) -> tuple[SimGpu, SimGpuInstance, SimComputeInstance]:
        index, gi_id, ci_id = _decode(handle, _TAG_CI)
        self._check_faults(call, index, "before")
        gpu = self._gpu(self._node(), index)
        gi = next((g for g in gpu.gpu_instances if g.id == gi_id), None)
        ci = next((c for c in gi.compute_instances if c.id == ci_id), None) if gi else None
        if gi is None or ci is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gi, ci

    @contextmanager
    def _mutating(self, call: str, index: int) -> Iterator[SimGpu]:
        """Change one GPU under the store's lock; faults fire before and after."""
        with self._store.mutate() as node:
            yield self._gpu(node, index)
        self._check_faults(call, index, "after")

    @contextmanager
    def _changing_instance(
        self, call: str, handle: Any, tag: int
    ) -> Iterator[tuple[SimGpu, SimGpuInstance, int]]:
        """Change what a GPU- (``_TAG_GI``) or compute-instance (``_TAG_CI``) handle names, under
        :meth:`_mutating`: yields its GPU, its GPU instance and the compute-instance id."""
        index, gi_id, ci_id = _decode(handle, tag)
        if tag == _TAG_GI:
            self._gpu_instance(call, handle)  # it exists
        else:
            self._compute_instance(call, handle)
        with self._mutating(call, index) as gpu:
            yield gpu, next(g for g in gpu.gpu_instances if g.id == gi_id), ci_id

    @staticmethod
    def _model(gpu: SimGpu) -> GpuModel:
        return MODELS[gpu.model]

    def _profile_by_id(self, gpu: SimGpu, profile_id: int) -> GpuInstanceProfile:
        profile = next((p for p in self._model(gpu).profiles if p.id == profile_id), None)
        if profile is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return profile

    def _require_mig(self, gpu: SimGpu) -> None:
        if gpu.mig_current != pynvml.NVML_DEVICE_MIG_ENABLE:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    @staticmethod
    def _device_handle(gpu: int, gi: int = -1, ci: int = -1) -> Any:
        return _pointer(pynvml.c_nvmlDevice_t, _encode(_TAG_DEVICE, gpu, gi, ci))

    @staticmethod
    def _gi_handle(gpu: int, gi: int) -> Any:
        return _pointer(pynvml.c_nvmlGpuInstance_t, _encode(_TAG_GI, gpu, gi))

    @staticmethod
    def _ci_handle(gpu: int, gi: int, ci: int) -> Any:
        return _pointer(pynvml.c_nvmlComputeInstance_t, _encode(_TAG_CI, gpu, gi, ci))

    # -- library ----------------------------------------------------------

    def nvmlInit(self) -> None:
        if not self._store.exists():
            raise _error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._initialized += 1

    def nvmlShutdown(self) -> None:
        if not self._initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._node().driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._node().cuda_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        return f"13.{self._node().driver_version}"

    # -- devices ----------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        return len(self._node().gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check_faults("nvmlDeviceGetHandleByIndex", index, "before")
        self._gpu(self._node(), index)
        return self._device_handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        node = self._node()
        for gpu in node.gpus:
            if gpu.uuid == wanted:
                return self._device_handle(self._gpu(node, gpu.index).index)
            for gi in gpu.gpu_instances:
                for ci in gi.compute_instances:
                    if ci.uuid == wanted:
                        return self._device_handle(self._gpu(node, gpu.index).index, gi.id, ci.id)
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._whole("nvmlDeviceGetIndex", handle)[1].index

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        _, gpu, ci = self._device("nvmlDeviceGetUUID", handle)
        return ci.uuid if ci else gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        _, gpu, ci = self._device("nvmlDeviceGetName", handle)
        product = self._model(gpu).product
        if ci is None:
            return product
        gi = next(g for g in gpu.gpu_instances if any(c is ci for c in g.compute_instances))
        return f"{product} MIG {self._profile_by_id(gpu, gi.profile_id).name}"

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        _, gpu, ci = self._device("nvmlDeviceGetMemoryInfo", handle)
        if ci is None:
            total = self._model(gpu).memory_mib
            used = sum(p.used_mib for p in gpu.processes)
        else:
            gi = next(g for g in gpu.gpu_instances if any(c is ci for c in g.compute_instances))
            total = self._profile_by_id(gpu, gi.profile_id).memory_mib
            used = sum(p.used_mib for p in gpu.processes if p.gpu_instance == gi.id)
        if version:
            memory = pynvml.c_nvmlMemory_v2_t()
            memory.version, memory.reserved = version, 0
        else:
            memory = pynvml.c_nvmlMemory_t()
        memory.total, memory.used, memory.free = total << 20, used << 20, (total - used) << 20
        return memory

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        _, gpu = self._whole("nvmlDeviceGetPciInfo", handle)
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()
        info.domain, info.bus, info.device = 0, int(gpu.bus_id[9:11], 16), 0
        info.pciDeviceId = self._model(gpu).pci_device_id
        info.pciSubSystemId = (0x1450 << 16) | 0x10DE
        return info

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._whole("nvmlDeviceGetMinorNumber", handle)[1].minor

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        return self._whole("nvmlDeviceGetNumaNodeId", handle)[1].numa_node

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return self._model(self._whole("nvmlDeviceGetCudaComputeCapability", handle)[1]).compute_capability

    def nvmlDeviceGetArchitecture(self, device: Any) -> int:
        return self._model(self._whole("nvmlDeviceGetArchitecture", device)[1]).architecture

    def nvmlDeviceGetTopologyCommonAncestor(self, device1: Any, device2: Any) -> int:
        """PCIe: GPUs in pairs behind one switch, the first half on NUMA node 0."""
        _, a = self._whole("nvmlDeviceGetTopologyCommonAncestor", device1)
        _, b = self._whole("nvmlDeviceGetTopologyCommonAncestor", device2)
        if a.index == b.index:
            return int(pynvml.NVML_TOPOLOGY_INTERNAL)
        if a.index // 2 == b.index // 2:
            return int(pynvml.NVML_TOPOLOGY_SINGLE)
        if a.numa_node == b.numa_node:
            return int(pynvml.NVML_TOPOLOGY_NODE)
        return int(pynvml.NVML_TOPOLOGY_SYSTEM)

    def nvmlDeviceGetP2PStatus(self, device1: Any, device2: Any, p2pIndex: int) -> int:
        _, a = self._whole("nvmlDeviceGetP2PStatus", device1)
        _, b = self._whole("nvmlDeviceGetP2PStatus", device2)
        if p2pIndex != pynvml.NVML_P2P_CAPS_INDEX_NVLINK:
            return int(pynvml.NVML_P2P_STATUS_OK)
        nvlink = self._model(a).nvlink
        linked = a.index != b.index and (
            nvlink == "switch" or (nvlink == "pairs" and a.index // 2 == b.index // 2)
        )
        return int(pynvml.NVML_P2P_STATUS_OK if linked else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        _, gpu, ci = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
        gi_id = None
        if ci is not None:
            gi_id = next(g.id for g in gpu.gpu_instances if any(c is ci for c in g.compute_instances))
        result = []
        for proc in gpu.processes:
            if ci is not None and (proc.gpu_instance, proc.compute_instance) != (gi_id, ci.id):
                continue
            info = pynvml.c_nvmlProcessInfo_v3_t()
            info.pid, info.usedGpuMemory = proc.pid, proc.used_mib << 20
            info.gpuInstanceId = _UNATTRIBUTED if proc.gpu_instance is None else proc.gpu_instance
            info.computeInstanceId = _UNATTRIBUTED if proc.compute_instance is None else proc.compute_instance
            result.append(pynvml.nvmlStructToFriendlyObject(info))
        return result

    # -- MIG mode ---------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        _, gpu = self._whole("nvmlDeviceGetMigMode", device)
        return [gpu.mig_current, gpu.mig_pending]

    def nvmlDeviceSetMigMode(self, device: Any, mode: int) -> int:
        """Returns the activation status; raises only if the call itself fails.

        The driver resets the GPU itself when the change needs it (Ampere) and it can:
        the change takes effect at once on an idle bare-metal GPU. It stays pending with
        IN_USE while processes or other clients hold the GPU, and with NOT_SUPPORTED in a
        VM whose hypervisor allows no GPU reset (then only a reboot applies it).
        """
        index = self._whole("nvmlDeviceSetMigMode", device)[1].index
        if mode not in (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        passthrough = self._node().passthrough
        with self._mutating("nvmlDeviceSetMigMode", index) as gpu:
            if gpu.gpu_instances and mode != gpu.mig_current:
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.mig_pending = mode
            needs_reset = self._model(gpu).mig_mode_needs_reset
            status: int
            if mode == gpu.mig_current:
                status = pynvml.NVML_SUCCESS
            elif gpu.processes or (needs_reset and gpu.clients):
                status = pynvml.NVML_ERROR_IN_USE
            elif needs_reset and passthrough:
                status = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                gpu.mig_current = mode
                status = pynvml.NVML_SUCCESS
        return status

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        _, gpu = self._whole("nvmlDeviceGetMaxMigDeviceCount", device)
        if gpu.mig_current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return 0
        return self._model(gpu).compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        _, gpu = self._whole("nvmlDeviceGetMigDeviceHandleByIndex", device)
        self._require_mig(gpu)
        if not 0 <= index < self._model(gpu).compute_slices:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        devices = [
            (gi.id, ci.id)
            for gi in sorted(gpu.gpu_instances, key=lambda g: g.id)
            for ci in sorted(gi.compute_instances, key=lambda c: c.id)
        ]
        if index >= len(devices):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return self._device_handle(gpu.index, *devices[index])

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> ctypes.c_uint:
        _, _, ci = self._device("nvmlDeviceIsMigDeviceHandle", device)
        return ctypes.c_uint(int(ci is not None))

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        _, gpu, ci = self._device("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
        if ci is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._device_handle(gpu.index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        _, gi_id, _ = _decode(device, _TAG_DEVICE)
        _, _, ci = self._device("nvmlDeviceGetGpuInstanceId", device)
        if ci is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gi_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        _, _, ci = self._device("nvmlDeviceGetComputeInstanceId", device)
        if ci is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ci.id

    # -- GPU instances ----------------------------------------------------

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: Any, profile: int, version: int = 2) -> Any:
        _, gpu = self._whole("nvmlDeviceGetGpuInstanceProfileInfo", device)
        if not 0 <= profile < GI_PROFILE_COUNT:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = next((p for p in self._model(gpu).profiles if p.enum == profile), None)
        if found is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _gi_profile_info(found, version)

    def nvmlDeviceGetGpuInstanceProfileInfoV(self, device: Any, profile: int, version: int = 2) -> Any:
        return self.nvmlDeviceGetGpuInstanceProfileInfo(device, profile, version)

    def nvmlDeviceGetGpuInstanceProfileInfoById(self, device: Any, profileId: int) -> Any:
        _, gpu = self._whole("nvmlDeviceGetGpuInstanceProfileInfoById", device)
        return _gi_profile_info(self._profile_by_id(gpu, profileId), 2)

    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, device: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        _, gpu = self._whole("nvmlDeviceGetGpuInstancePossiblePlacements", device)
        placements = self._profile_by_id(gpu, profileId).placements
        count = _ref_value(countRef)
        if placementsRef is None:
            count.value = len(placements)
            return int(pynvml.NVML_SUCCESS)
        if count.value < len(placements):
            count.value = len(placements)
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, (start, size) in enumerate(placements):
            placementsRef[i].start, placementsRef[i].size = start, size
        count.value = len(placements)
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: Any, profileId: int) -> int:
        _, gpu = self._whole("nvmlDeviceGetGpuInstanceRemainingCapacity", device)
        self._require_mig(gpu)
        profile = self._profile_by_id(gpu, profileId)
        existing = sum(1 for gi in gpu.gpu_instances if gi.profile_id == profileId)
        taken: list[tuple[int, int]] = [(gi.start, gi.size) for gi in gpu.gpu_instances]
        room = 0
        for start in profile.starts:
            if all(start + profile.size <= s or s + n <= start for s, n in taken):
                taken.append((start, profile.size))
                room += 1
        return max(0, min(room, profile.max_count - existing))

    def nvmlDeviceCreateGpuInstance(self, device: Any, profileId: int) -> Any:
        return self._create_gpu_instance("nvmlDeviceCreateGpuInstance", device, profileId, None)

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, device: Any, profileId: int, placement: Any) -> Any:
        wanted = placement._obj if hasattr(placement, "_obj") else placement.contents
        return self._create_gpu_instance(
            "nvmlDeviceCreateGpuInstanceWithPlacement", device, profileId, (wanted.start, wanted.size)
        )

    def _create_gpu_instance(
        self, call: str, device: Any, profile_id: int, placement: tuple[int, int] | None
    ) -> Any:
        index = self._whole(call, device)[1].index
        with self._mutating(call, index) as gpu:
            self._require_mig(gpu)
            profile = self._profile_by_id(gpu, profile_id)
            if placement is None:
                start = _implicit_start(profile, self._model(gpu), gpu)
            else:
                start, size = placement
                if size != profile.size or start not in profile.starts:
                    raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            same = sum(1 for gi in gpu.gpu_instances if gi.profile_id == profile_id)
            if start is None or same >= profile.max_count or not _fits(gpu, start, profile.size):
                raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
            if not self._media_engines_allow(gpu, profile):
                raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
            gi_id = gpu_instance_id(start, profile.size, self._model(gpu).memory_slices)
            gpu.gpu_instances.append(SimGpuInstance(gi_id, profile_id, start, profile.size))
        return self._gi_handle(index, gi_id)

    def _media_engines_allow(self, gpu: SimGpu, profile: GpuInstanceProfile) -> bool:
        """An all-media-engines (+me.all) instance admits only -me instances beside it (nvml.h)."""
        others = [self._profile_by_id(gpu, gi.profile_id).enum for gi in gpu.gpu_instances]
        if profile.enum in ALL_ME_ENUMS:
            return all(enum in NO_ME_ENUMS for enum in others)
        return profile.enum in NO_ME_ENUMS or not any(enum in ALL_ME_ENUMS for enum in others)

    def nvmlDeviceGetGpuInstances(
        self, device: Any, profileId: int, gpuInstancesRef: Any, countRef: Any
    ) -> int:
        _, gpu = self._whole("nvmlDeviceGetGpuInstances", device)
        self._require_mig(gpu)
        self._profile_by_id(gpu, profileId)
        found = sorted(gi.id for gi in gpu.gpu_instances if gi.profile_id == profileId)
        return _answer_handles(
            [self._gi_handle(gpu.index, gi_id) for gi_id in found], gpuInstancesRef, countRef
        )

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        _, gpu = self._whole("nvmlDeviceGetGpuInstanceById", device)
        self._require_mig(gpu)
        if not any(gi.id == gpuInstanceId for gi in gpu.gpu_instances):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return self._gi_handle(gpu.index, gpuInstanceId)

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        gpu, gi = self._gpu_instance("nvmlGpuInstanceGetInfo", gpuInstance)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.device = self._device_handle(gpu.index)
        info.id, info.profileId = gi.id, gi.profile_id
        info.placement.start, info.placement.size = gi.start, gi.size
        return info

    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> None:
        with self._changing_instance("nvmlGpuInstanceDestroy", gpuInstance, _TAG_GI) as (gpu, gi, _):
            if gi.compute_instances or any(p.gpu_instance == gi.id for p in gpu.processes):
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.gpu_instances.remove(gi)

    # -- compute instances ------------------------------------------------

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: Any, profile: int, engProfile: int, version: int = 2
    ) -> Any:
        gpu, gi = self._gpu_instance("nvmlGpuInstanceGetComputeInstanceProfileInfo", device)
        if not 0 <= profile < CI_PROFILE_COUNT or engProfile != 0:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gi_profile = self._profile_by_id(gpu, gi.profile_id)
        found = next((p for p in _ci_profiles(gi_profile, self._model(gpu)) if p.enum == profile), None)
        if found is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        info = _versioned(
            version, pynvml.c_nvmlComputeInstanceProfileInfo_t, pynvml.c_nvmlComputeInstanceProfileInfo_v2_t
        )
        info.id, info.sliceCount, info.instanceCount = found.enum, found.slices, found.count
        info.multiprocessorCount = found.multiprocessors
        info.sharedCopyEngineCount = gi_profile.copy_engines
        info.sharedDecoderCount, info.sharedEncoderCount = gi_profile.decoders, gi_profile.encoders
        info.sharedJpegCount, info.sharedOfaCount = gi_profile.jpegs, gi_profile.ofas
        if version == 2:
            prefix = "" if found.slices == gi_profile.slices else f"{found.slices}c."
            info.name = f"MIG {prefix}{gi_profile.name}".encode()
        return info

    def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self, gpuInstance: Any, profileId: int) -> int:
        gpu, gi = self._gpu_instance("nvmlGpuInstanceGetComputeInstanceRemainingCapacity", gpuInstance)
        ci_profile = self._ci_profile(gpu, gi, profileId)
        free = self._profile_by_id(gpu, gi.profile_id).slices - sum(c.slices for c in gi.compute_instances)
        same = sum(1 for c in gi.compute_instances if c.profile_id == profileId)
        return max(0, min(free // ci_profile.slices, ci_profile.count - same))

    def _ci_profile(self, gpu: SimGpu, gi: SimGpuInstance, profile_id: int) -> _CiProfile:
        gi_profile = self._profile_by_id(gpu, gi.profile_id)
        found = next((p for p in _ci_profiles(gi_profile, self._model(gpu)) if p.enum == profile_id), None)
        if found is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return found

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        call = "nvmlGpuInstanceCreateComputeInstance"
        with self._changing_instance(call, gpuInstance, _TAG_GI) as (gpu, gi, _):
            ci_profile = self._ci_profile(gpu, gi, profileId)
            used = sum(c.slices for c in gi.compute_instances)
            same = sum(1 for c in gi.compute_instances if c.profile_id == profileId)
            gi_slices = self._profile_by_id(gpu, gi.profile_id).slices
            if used + ci_profile.slices > gi_slices or same >= ci_profile.count:
                raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
            ci_id = min(set(range(8)) - {c.id for c in gi.compute_instances})
            gi.compute_instances.append(
                SimComputeInstance(ci_id, profileId, ci_profile.slices, mig_uuid(gpu))
            )
        return self._ci_handle(gpu.index, gi.id, ci_id)

    def nvmlGpuInstanceGetComputeInstances(
        self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any
    ) -> int:
        gpu, gi = self._gpu_instance("nvmlGpuInstanceGetComputeInstances", gpuInstance)
        self._ci_profile(gpu, gi, profileId)
        found = sorted(c.id for c in gi.compute_instances if c.profile_id == profileId)
        handles = [self._ci_handle(gpu.index, gi.id, ci_id) for ci_id in found]
        return _answer_handles(handles, computeInstancesRef, countRef)

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> Any:
        gpu, gi = self._gpu_instance("nvmlGpuInstanceGetComputeInstanceById", gpuInstance)
        if not any(c.id == computeInstanceId for c in gi.compute_instances):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return self._ci_handle(gpu.index, gi.id, computeInstanceId)

    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        gpu, gi, ci = self._compute_instance("nvmlComputeInstanceGetInfo", computeInstance)
        info = pynvml.c_nvmlComputeInstanceInfo_t()
        info.device = self._device_handle(gpu.index)
        info.gpuInstance = self._gi_handle(gpu.index, gi.id)
        info.id, info.profileId = ci.id, ci.profile_id
        offset = sum(c.slices for c in sorted(gi.compute_instances, key=lambda c: c.id) if c.id < ci.id)
        info.placement.start, info.placement.size = offset, ci.slices
        return info

    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> None:
        call = "nvmlComputeInstanceDestroy"
        with self._changing_instance(call, computeInstance, _TAG_CI) as (gpu, gi, ci_id):
            if any((p.gpu_instance, p.compute_instance) == (gi.id, ci_id) for p in gpu.processes):
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gi.compute_instances = [c for c in gi.compute_instances if c.id != ci_id]

    # -- events -----------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._check_faults("nvmlEventSetCreate", None, "before")
        self._node()
        set_id = self._next_event_set
        self._next_event_set += 1
        self._event_sets[set_id] = {}
        self._event_cursor[set_id] = self._node().event_seq
        return _pointer(pynvml.c_nvmlEventSet_t, _encode(_TAG_EVENT_SET, set_id))

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        set_id = _decode(eventSet, _TAG_EVENT_SET)[0]
        self._event_sets.pop(set_id, None)
        self._event_cursor.pop(set_id, None)

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._whole("nvmlDeviceGetSupportedEventTypes", handle)
        return SUPPORTED_EVENTS

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        _, gpu = self._whole("nvmlDeviceRegisterEvents", handle)
        set_id = _decode(eventSet, _TAG_EVENT_SET)[0]
        if set_id not in self._event_sets or eventTypes & ~SUPPORTED_EVENTS:
            raise _error(
                pynvml.NVML_ERROR_NOT_SUPPORTED
                if set_id in self._event_sets
                else pynvml.NVML_ERROR_INVALID_ARGUMENT
            )
        registered = self._event_sets[set_id]
        registered[gpu.index] = registered.get(gpu.index, 0) | eventTypes

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        """Wait for the next event on a registered GPU; a lost GPU ends the wait with GPU_IS_LOST."""
        set_id = _decode(eventSet, _TAG_EVENT_SET)[0]
        if set_id not in self._event_sets:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        deadline = time.monotonic() + timeoutms / 1000
        seen: tuple[int, int] | None = None
        while True:
            stamp = self._store.stamp()
            if stamp == seen:  # nothing changed on the node: sleep on
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _error(pynvml.NVML_ERROR_TIMEOUT)
                self._sleep_until_change(remaining)
                continue
            seen = stamp
            self._check_faults("nvmlEventSetWait_v2", None, "before")
            node = self._node()
            registered = self._event_sets[set_id]
            if any(node.gpus[i].lost for i in registered):
                raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
            for event in node.events:
                if event.seq > self._event_cursor[set_id] and event.event_type & registered.get(event.gpu, 0):
                    self._event_cursor[set_id] = event.seq
                    return self._event_data(event)
            if node.events:
                self._event_cursor[set_id] = max(self._event_cursor[set_id], node.events[-1].seq)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _error(pynvml.NVML_ERROR_TIMEOUT)
            self._sleep_until_change(remaining)

    def _sleep_until_change(self, seconds: float) -> None:
        """Until the state directory changes (inotify), or ``seconds``; polls only without it."""
        if self._watch is None:
            self._watch = DirWatch([self._store.path.parent])
        if self._watch.event_driven:
            self._watch.wait(seconds)
        else:
            time.sleep(min(_EVENT_POLL_S, seconds))

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def _event_data(self, event: SimEvent) -> Any:
        data = pynvml.c_nvmlEventData_t()
        data.device = self._device_handle(event.gpu)
        data.eventType, data.eventData = event.event_type, event.data
        data.gpuInstanceId, data.computeInstanceId = event.gpu_instance, event.compute_instance
        return data


def _versioned(version: int, v1: Any, v2: Any) -> Any:
    """The struct pynvml passes for ``version``; pynvml raises FUNCTION_NOT_FOUND for others."""
    if version == 1:
        return v1()
    if version == 2:
        return v2()
    raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


def _gi_profile_info(profile: GpuInstanceProfile, version: int) -> Any:
    info = _versioned(
        version, pynvml.c_nvmlGpuInstanceProfileInfo_t, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t
    )
    if version == 2:
        info.name = f"MIG {profile.name}".encode()
    info.id, info.isP2pSupported = profile.id, int(profile.slices >= 7)
    info.sliceCount, info.instanceCount = profile.slices, profile.max_count
    info.multiprocessorCount, info.copyEngineCount = profile.multiprocessors, profile.copy_engines
    info.decoderCount, info.encoderCount = profile.decoders, profile.encoders
    info.jpegCount, info.ofaCount = profile.jpegs, profile.ofas
    info.memorySizeMB = profile.memory_mib
    return info


def open_sim(models: list[str], *, state_dir: Path, node: str) -> SimNvml:
    """The simulated NVML of ``state_dir``, created if missing or if the models differ.

    A restarted daemon with the same spec finds the GPUs as it left them.
    """
    store = SimStore(state_dir / STATE_FILE)
    if not store.exists() or store.read().models != models or store.read().node != node:
        store.write(new_node(models, node=node))
        write_mig_minors(state_dir / SIM_PROC_ROOT, len(models))
    return SimNvml(store)


class SimControl:
    """What tests, the demo and ``fatia sim`` do to a simulated node from outside NVML."""

    def __init__(self, state_dir: Path) -> None:
        self.store = SimStore(state_dir / STATE_FILE)

    def node(self) -> SimNode:
        return self.store.read()

    def _change(self, fn: Callable[[SimNode], Any]) -> Any:
        with self.store.mutate() as node:
            return fn(node)

    def start_process(
        self,
        gpu: int,
        *,
        gpu_instance: int | None = None,
        compute_instance: int | None = None,
        used_mib: int = 1024,
    ) -> int:
        """Put a process on a GPU, or on one of its MIG devices; returns its pid."""

        def start(node: SimNode) -> int:
            target = node.gpus[gpu]
            if gpu_instance is not None:
                gi = next((g for g in target.gpu_instances if g.id == gpu_instance), None)
                wanted = compute_instance or 0
                if gi is None or not any(c.id == wanted for c in gi.compute_instances):
                    raise ValueError(f"GPU {gpu} has no MIG device {gpu_instance}/{wanted}")
            pid = node.next_pid
            node.next_pid += 1
            ci = None if gpu_instance is None else (compute_instance or 0)
            target.processes.append(SimProcess(pid, used_mib, gpu_instance, ci))
            return pid

        return int(self._change(start))

    def stop_process(self, pid: int) -> None:
        def stop(node: SimNode) -> None:
            for gpu in node.gpus:
                gpu.processes = [p for p in gpu.processes if p.pid != pid]

        self._change(stop)

    def inject_fault(self, fault: SimFault) -> None:
        self._change(lambda node: node.faults.append(fault))

    def clear_faults(self) -> None:
        self._change(lambda node: node.faults.clear())

    def inject_event(
        self,
        gpu: int,
        *,
        event_type: int = pynvml.nvmlEventTypeXidCriticalError,
        data: int = 0,
        gpu_instance: int = _UNATTRIBUTED,
        compute_instance: int = _UNATTRIBUTED,
    ) -> None:
        """Deliver an NVML event, e.g. an XID (``data`` = XID number), to GPU ``gpu``."""

        def inject(node: SimNode) -> None:
            node.event_seq += 1
            node.events.append(
                SimEvent(node.event_seq, gpu, event_type, data, gpu_instance, compute_instance)
            )
            del node.events[:-256]

        self._change(inject)

    def set_lost(self, gpu: int, lost: bool = True) -> None:
        def lose(node: SimNode) -> None:
            node.gpus[gpu].lost = lost

        self._change(lose)

    def reset_gpu(self, gpu: int) -> None:
        """A GPU reset (``nvidia-smi -r``): applies a pending MIG mode and clears all instances.

        Refused while processes or other clients hold the GPU, and in a VM whose
        hypervisor allows no reset (reboot it instead).
        """

        def reset(node: SimNode) -> None:
            target = node.gpus[gpu]
            if target.processes:
                raise ValueError(f"GPU {gpu} is in use by {len(target.processes)} process(es)")
            if target.clients:
                raise ValueError(f"GPU {gpu} is in use by {target.clients} other client(s)")
            if node.passthrough:
                raise ValueError(f"resetting GPU {gpu} is not supported in this VM; reboot it")
            target.mig_current = target.mig_pending
            target.gpu_instances = []
            target.lost = False

        self._change(reset)

    def set_clients(self, gpu: int, clients: int) -> None:
        """Other processes (DCGM, nvsm, ...) that hold the GPU open without compute work: on
        Ampere they keep a MIG mode change pending (IN_USE) and block a reset."""

        def set_clients(node: SimNode) -> None:
            node.gpus[gpu].clients = clients

        self._change(set_clients)

    def set_timeslice(self, gpu_uuid: str, interval: int) -> None:
        """What ``nvidia-smi compute-policy -i UUID --set-timeslice N`` does (:mod:`mig.timeslice`)."""
        from mig.timeslice import TimesliceError

        def set_timeslice(node: SimNode) -> None:
            gpu = next((g for g in node.gpus if g.uuid == gpu_uuid), None)
            if gpu is None or gpu.lost:
                raise TimesliceError(f"GPU {gpu_uuid}: {'lost' if gpu else 'no such GPU'}; no time slice set")
            gpu.timeslice = interval

        self._change(set_timeslice)

    def set_passthrough(self, passthrough: bool = True) -> None:
        """Make the node a VM with passed-through GPUs: Ampere MIG mode changes wait for a reboot."""

        def set_passthrough(node: SimNode) -> None:
            node.passthrough = passthrough

        self._change(set_passthrough)

    def reboot(self) -> None:
        """A node reboot: processes end, MIG instances vanish, time slices are Default again,
        Hopper+ MIG mode resets to off, Ampere's (kept in the InfoROM) becomes what was pending."""

        def reboot(node: SimNode) -> None:
            for gpu in node.gpus:
                gpu.processes, gpu.gpu_instances, gpu.lost = [], [], False
                gpu.timeslice = 0  # the driver's compute policy does not outlive a boot
                if not MODELS[gpu.model].mig_mode_needs_reset:
                    gpu.mig_pending = pynvml.NVML_DEVICE_MIG_DISABLE
                gpu.mig_current = gpu.mig_pending

        self._change(reboot)
