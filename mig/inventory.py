"""What the node's GPUs are and how they are partitioned, read from NVML.

:func:`read_inventory` turns NVML's answers into frozen plain data: every GPU
with its identity, NUMA node and MIG state; each GPU instance with its profile,
placement and compute instances; and the pairwise topology scores that
GetPreferredAllocation uses. Everything above this module works on that data
and never calls NVML.

MIG profile tables (names, ids, placements) are read from NVML, not from the
catalog, so a GPU model fatia has never heard of still works. They never change
for a model, so a reader caches them per PCI device id.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pynvml

from mig.catalog import CI_PROFILE_COUNT, GI_PROFILE_COUNT, GpuInstanceProfile, model_for_product
from mig.layout import Layout, Placement, normalize
from mig.nvml import Nvml

# Pairwise link scores, as NVIDIA's gpuallocator weighs them.
_NVLINK_SCORE = 100
_PCIE_SCORES = {
    pynvml.NVML_TOPOLOGY_INTERNAL: 60,
    pynvml.NVML_TOPOLOGY_SINGLE: 50,
    pynvml.NVML_TOPOLOGY_MULTIPLE: 40,
    pynvml.NVML_TOPOLOGY_HOSTBRIDGE: 30,
    pynvml.NVML_TOPOLOGY_NODE: 20,
    pynvml.NVML_TOPOLOGY_SYSTEM: 10,
}


@dataclass(frozen=True)
class ComputeInstance:
    id: int
    uuid: str  # the MIG device's UUID ("MIG-...")
    slices: int


@dataclass(frozen=True)
class GpuInstance:
    id: int
    profile: str
    placement: Placement
    compute_instances: tuple[ComputeInstance, ...]
    slices: int  # compute slices of the GPU instance

    @property
    def complete(self) -> bool:
        """Exactly one compute instance filling the GPU instance, as fatia makes them."""
        return len(self.compute_instances) == 1 and self.compute_instances[0].slices == self.slices


@dataclass(frozen=True)
class MigDevice:
    """One MIG device (a compute instance) as the device plugin sees it."""

    uuid: str
    profile: str  # "3g.20gb", or "1c.3g.20gb" for a partial compute instance
    gpu_instance: int
    compute_instance: int
    placement: Placement
    memory_mib: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    product: str
    memory_mib: int
    pci_bus_id: str
    pci_device_id: int
    numa_node: int | None
    minor: int
    mig_capable: bool
    mig_enabled: bool  # current mode
    mig_pending: bool  # mode after the next reset
    gpu_instances: tuple[GpuInstance, ...] = ()
    profiles: tuple[GpuInstanceProfile, ...] = ()
    lost: bool = False

    @property
    def layout(self) -> Layout:
        return normalize(gi.placement for gi in self.gpu_instances)

    @property
    def mig_devices(self) -> tuple[MigDevice, ...]:
        by_name = {p.name: p for p in self.profiles}
        devices = []
        for gi in self.gpu_instances:
            for ci in gi.compute_instances:
                partial = ci.slices != gi.slices
                profile = by_name.get(gi.profile)
                devices.append(
                    MigDevice(
                        uuid=ci.uuid,
                        profile=f"{ci.slices}c.{gi.profile}" if partial else gi.profile,
                        gpu_instance=gi.id,
                        compute_instance=ci.id,
                        placement=gi.placement,
                        memory_mib=profile.memory_mib if profile else 0,
                    )
                )
        return tuple(devices)

    def profile(self, name: str) -> GpuInstanceProfile | None:
        return next((p for p in self.profiles if p.name == name), None)


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    gpus: tuple[Gpu, ...]
    # Link score for every ordered pair of GPU indices; higher is closer.
    topology: dict[tuple[int, int], int] = field(default_factory=dict)

    def gpu(self, index: int) -> Gpu:
        return self.gpus[index]


class InventoryReader:
    """Reads an :class:`Inventory` through the NVML seam, caching profile tables."""

    def __init__(self, nvml: Nvml, *, sysfs: Path = Path("/sys")) -> None:
        self._nvml = nvml
        self._sysfs = sysfs
        self._profiles: dict[int, tuple[GpuInstanceProfile, ...]] = {}
        self._topology: dict[tuple[str, ...], dict[tuple[int, int], int]] = {}

    def read(self) -> Inventory:
        nvml = self._nvml
        gpus = tuple(self._gpu(i) for i in range(nvml.nvmlDeviceGetCount()))
        key = tuple(g.uuid for g in gpus)
        if key not in self._topology:
            self._topology[key] = self._read_topology(gpus)
        return Inventory(
            driver_version=str(nvml.nvmlSystemGetDriverVersion()),
            gpus=gpus,
            topology=self._topology[key],
        )

    def _gpu(self, index: int) -> Gpu:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = str(nvml.nvmlDeviceGetUUID(handle))
        except pynvml.NVMLError_GpuIsLost:
            return Gpu(index, "", "", 0, "", 0, None, index, False, False, False, lost=True)
        try:
            return self._read_gpu(index, handle, uuid)
        except pynvml.NVMLError_GpuIsLost:
            return Gpu(index, uuid, "", 0, "", 0, None, index, False, False, False, lost=True)

    def _read_gpu(self, index: int, handle: object, uuid: str) -> Gpu:
        nvml = self._nvml
        pci = nvml.nvmlDeviceGetPciInfo(handle)
        try:
            current, pending = nvml.nvmlDeviceGetMigMode(handle)
            mig_capable = True
        except pynvml.NVMLError_NotSupported:
            current = pending = pynvml.NVML_DEVICE_MIG_DISABLE
            mig_capable = False
        product = str(nvml.nvmlDeviceGetName(handle))
        profiles = self._profile_table(handle, pci.pciDeviceId, product) if mig_capable else ()
        enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
        return Gpu(
            index=index,
            uuid=uuid,
            product=product,
            memory_mib=nvml.nvmlDeviceGetMemoryInfo(handle).total >> 20,
            pci_bus_id=str(pci.busId),
            pci_device_id=pci.pciDeviceId,
            numa_node=self._numa_node(handle, str(pci.busId)),
            minor=nvml.nvmlDeviceGetMinorNumber(handle),
            mig_capable=mig_capable,
            mig_enabled=enabled,
            mig_pending=pending == pynvml.NVML_DEVICE_MIG_ENABLE,
            gpu_instances=tuple(self._gpu_instances(handle, profiles)) if enabled else (),
            profiles=profiles,
        )

    def _numa_node(self, handle: object, bus_id: str) -> int | None:
        try:
            node = int(self._nvml.nvmlDeviceGetNumaNodeId(handle))
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
            path = self._sysfs / "bus/pci/devices" / bus_id[4:].lower() / "numa_node"
            try:
                node = int(path.read_text())
            except (OSError, ValueError):
                return None
        return node if node >= 0 else None

    def _profile_table(
        self, handle: object, pci_device_id: int, product: str
    ) -> tuple[GpuInstanceProfile, ...]:
        """The GPU's MIG profiles as NVML reports them.

        Some drivers (535 and older) list no profiles while MIG is off; then the
        catalog's table for the product stands in, so that MIG can be planned and
        switched on. It is not cached: once MIG is on, NVML's own table is read.
        """
        if pci_device_id in self._profiles:
            return self._profiles[pci_device_id]
        profiles = tuple(self._read_profiles(handle))
        if profiles:
            self._profiles[pci_device_id] = profiles
            return profiles
        model = model_for_product(product)
        return tuple(sorted(model.profiles, key=lambda p: p.enum)) if model else ()  # NVML's order

    def _read_profiles(self, handle: object) -> Iterator[GpuInstanceProfile]:
        nvml = self._nvml
        for enum in range(GI_PROFILE_COUNT):
            try:
                info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, enum)
            except pynvml.NVMLError_NotSupported:
                continue
            except pynvml.NVMLError_InvalidArgument:
                break
            count = ctypes.c_uint(0)
            nvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, info.id, None, ctypes.byref(count))
            placements = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
            nvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, info.id, placements, ctypes.byref(count))
            starts = tuple(sorted(p.start for p in placements[: count.value]))
            size = placements[0].size if count.value else 0
            yield GpuInstanceProfile(
                name=str(info.name).removeprefix("MIG "),
                enum=enum,
                id=info.id,
                max_count=info.instanceCount,
                size=size,
                starts=starts,
                slices=info.sliceCount,
                multiprocessors=info.multiprocessorCount,
                copy_engines=info.copyEngineCount,
                decoders=info.decoderCount,
                encoders=info.encoderCount,
                jpegs=info.jpegCount,
                ofas=info.ofaCount,
                memory_mib=info.memorySizeMB,
            )

    def _gpu_instances(
        self, handle: object, profiles: tuple[GpuInstanceProfile, ...]
    ) -> Iterator[GpuInstance]:
        nvml = self._nvml
        uuids = self._mig_uuids(handle)
        for profile in profiles:
            handles = (pynvml.c_nvmlGpuInstance_t * max(profile.max_count, 1))()
            count = ctypes.c_uint(len(handles))
            nvml.nvmlDeviceGetGpuInstances(handle, profile.id, handles, ctypes.byref(count))
            for gi in handles[: count.value]:
                info = nvml.nvmlGpuInstanceGetInfo(gi)
                yield GpuInstance(
                    id=info.id,
                    profile=profile.name,
                    placement=Placement(info.placement.start, info.placement.size, profile.name),
                    compute_instances=tuple(self._compute_instances(gi, info.id, uuids)),
                    slices=profile.slices,
                )

    def _compute_instances(
        self, gi: object, gi_id: int, uuids: dict[tuple[int, int], str]
    ) -> Iterator[ComputeInstance]:
        """Compute instances of one GPU instance, with the UUIDs of their MIG devices."""
        nvml = self._nvml
        for ci_enum in range(CI_PROFILE_COUNT):
            try:
                ci_info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_enum, 0)
            except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
                continue
            handles = (pynvml.c_nvmlComputeInstance_t * max(ci_info.instanceCount, 1))()
            count = ctypes.c_uint(len(handles))
            nvml.nvmlGpuInstanceGetComputeInstances(gi, ci_info.id, handles, ctypes.byref(count))
            for ci in handles[: count.value]:
                ci_id = nvml.nvmlComputeInstanceGetInfo(ci).id
                yield ComputeInstance(ci_id, uuids.get((gi_id, ci_id), ""), ci_info.sliceCount)

    def _mig_uuids(self, device: object) -> dict[tuple[int, int], str]:
        """``(gi, ci) -> MIG UUID`` from the MIG device handles of a GPU."""
        nvml = self._nvml
        found = {}
        for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(device)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i)
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                continue
            key = (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig))
            found[key] = str(nvml.nvmlDeviceGetUUID(mig))
        return found

    def _read_topology(self, gpus: tuple[Gpu, ...]) -> dict[tuple[int, int], int]:
        nvml = self._nvml
        scores: dict[tuple[int, int], int] = {}
        live = [g for g in gpus if not g.lost]
        for a, b in itertools.permutations(live, 2):
            if (b.index, a.index) in scores:
                scores[(a.index, b.index)] = scores[(b.index, a.index)]
                continue
            try:
                ha = nvml.nvmlDeviceGetHandleByIndex(a.index)
                hb = nvml.nvmlDeviceGetHandleByIndex(b.index)
                level = nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb)
                nvlink = nvml.nvmlDeviceGetP2PStatus(ha, hb, pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
            except pynvml.NVMLError:
                continue
            score = _PCIE_SCORES.get(level, 0)
            if nvlink == pynvml.NVML_P2P_STATUS_OK:
                score += _NVLINK_SCORE
            scores[(a.index, b.index)] = score
        return scores
