"""What the node's GPUs are and how they are partitioned, read from NVML.

:class:`InventoryReader` turns NVML's answers into frozen plain data: every GPU
with its identity, NUMA node and MIG state; each GPU instance with its profile,
placement and compute instances; and the pairwise topology scores that
GetPreferredAllocation uses (read by :mod:`mig.topology`). Everything above this module
works on that data and never calls NVML.

One GPU's fault costs that GPU only: a GPU that falls off the bus is ``lost``, one
for which an NVML call fails carries the call and NVML's error as its ``fault``
(``Gpu.usable`` is false for both), and every other GPU is read as usual.

MIG profile tables (names, ids, placements) are read from NVML, not from the
catalog, so a GPU model fatia has never heard of still works. They never change
for a model, so a reader caches them per PCI device id.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from mig.catalog import CI_PROFILE_COUNT, GI_PROFILE_COUNT, GpuInstanceProfile, model_for_product
from mig.layout import Layout, Placement, normalize
from mig.nvml import (
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVML_FAILURES,
    Handle,
    Nvml,
    NVMLError_FunctionNotFound,
    NVMLError_GpuIsLost,
    NVMLError_InvalidArgument,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLLibraryMismatchError,
    c_nvmlComputeInstance_t,
    c_nvmlGpuInstance_t,
    c_nvmlGpuInstancePlacement_t,
    error_name,
)
from mig.topology import read_topology

log = structlog.get_logger("fatia.mig")


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
    lost: bool = False  # fell off the bus (GPU_IS_LOST)
    # The NVML call that failed for this GPU and its error, e.g. "nvmlDeviceGetGpuInstances:
    # NVML_ERROR_NOT_SUPPORTED (Not Supported)"; the fields read after it are defaults.
    fault: str | None = None

    @property
    def usable(self) -> bool:
        """Fully read and present: only such a GPU is planned, changed and advertised."""
        return not self.lost and self.fault is None

    @property
    def problem(self) -> str | None:
        """Why the GPU is not usable, in words (``None`` when it is)."""
        if self.lost:
            return f"GPU {self.index} ({self.uuid or 'no UUID'}) is lost"
        if self.fault is not None:
            return f"GPU {self.index} ({self.uuid or 'no UUID'}) cannot be read: {self.fault}"
        return None

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


class _CallFailed(Exception):
    """One NVML call about one GPU failed: the GPU carries it as its fault."""

    def __init__(self, call: str, error: Exception) -> None:
        super().__init__(f"{call}: {error_name(error)}")


@contextlib.contextmanager
def _calling(call: str) -> Iterator[None]:
    """Name the NVML call that fails; a lost GPU stays a lost GPU."""
    try:
        yield
    except NVMLError_GpuIsLost:
        raise
    except NVML_FAILURES as exc:
        raise _CallFailed(call, exc) from exc


# Errors that mean "this GPU or driver has no such thing": the call is skipped. A versioned
# symbol the driver lacks (pynvml's NVMLLibraryMismatchError) counts as NOT_SUPPORTED.
_ABSENT = (NVMLError_NotSupported, NVMLError_FunctionNotFound, NVMLLibraryMismatchError)


class InventoryReader:
    """Reads an :class:`Inventory` through the NVML seam, caching profile tables.

    One GPU's failure costs that GPU only: :meth:`read` raises only when NVML cannot say
    how many GPUs there are. A GPU that falls off the bus is ``lost``; one that NVML
    cannot fully read carries the failed call and error as its ``fault``.
    """

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
            self._topology[key] = read_topology(nvml, [g.index for g in gpus if g.usable])
        try:
            driver = str(nvml.nvmlSystemGetDriverVersion())
        except NVML_FAILURES:
            driver = "unknown"
        return Inventory(driver_version=driver, gpus=gpus, topology=self._topology[key])

    def _gpu(self, index: int) -> Gpu:
        nvml = self._nvml
        uuid = ""
        try:
            with _calling("nvmlDeviceGetHandleByIndex"):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            with _calling("nvmlDeviceGetUUID"):
                uuid = str(nvml.nvmlDeviceGetUUID(handle))
            return self._read_gpu(index, handle, uuid)
        except NVMLError_GpuIsLost:
            return Gpu(index, uuid, "", 0, "", 0, None, index, False, False, False, lost=True)
        except _CallFailed as exc:
            log.warning("gpu_unreadable", gpu=index, uuid=uuid, error=str(exc))
            return Gpu(index, uuid, "", 0, "", 0, None, index, False, False, False, fault=str(exc))

    def _read_gpu(self, index: int, handle: Handle, uuid: str) -> Gpu:
        nvml = self._nvml
        with _calling("nvmlDeviceGetPciInfo"):
            pci = nvml.nvmlDeviceGetPciInfo(handle)
        try:
            with _calling("nvmlDeviceGetMigMode"):
                current, pending = nvml.nvmlDeviceGetMigMode(handle)
            mig_capable = True
        except _CallFailed as exc:
            if not isinstance(exc.__cause__, _ABSENT):
                raise
            current = pending = NVML_DEVICE_MIG_DISABLE
            mig_capable = False
        with _calling("nvmlDeviceGetName"):
            product = str(nvml.nvmlDeviceGetName(handle))
        with _calling("nvmlDeviceGetMemoryInfo"):
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) >> 20
        with _calling("nvmlDeviceGetMinorNumber"):
            minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
        profiles = self._profile_table(handle, pci.pciDeviceId, product) if mig_capable else ()
        enabled = current == NVML_DEVICE_MIG_ENABLE
        return Gpu(
            index=index,
            uuid=uuid,
            product=product,
            memory_mib=memory,
            pci_bus_id=str(pci.busId),
            pci_device_id=pci.pciDeviceId,
            numa_node=self._numa_node(handle, str(pci.busId)),
            minor=minor,
            mig_capable=mig_capable,
            mig_enabled=enabled,
            mig_pending=pending == NVML_DEVICE_MIG_ENABLE,
            gpu_instances=tuple(self._gpu_instances(handle, profiles)) if enabled else (),
            profiles=profiles,
        )

    def _numa_node(self, handle: Handle, bus_id: str) -> int | None:
        """The NUMA node of the GPU's PCI device, as the kernel says (what NVIDIA's device
        plugin reads); NVML only where sysfs has no answer. On Grace systems (GH200, GB200)
        NVML names the GPU's own memory-only NUMA node instead. -1 means none."""
        try:
            node = int((self._sysfs / "bus/pci/devices" / sysfs_bus_id(bus_id) / "numa_node").read_text())
        except (OSError, ValueError):
            try:
                node = int(self._nvml.nvmlDeviceGetNumaNodeId(handle))
            except NVML_FAILURES:
                return None
        return node if node >= 0 else None

    def _profile_table(
        self, handle: Handle, pci_device_id: int, product: str
    ) -> tuple[GpuInstanceProfile, ...]:
        """The GPU's MIG profiles as NVML reports them.

        Some drivers (535 and older) list no profiles while MIG is off; then the
        catalog's table for the product's family stands in, so that MIG can be planned
        and switched on. It is not cached: once MIG is on, NVML's own table is read. An
        unknown product gets none until NVML lists them (MIG switched on first).
        """
        if pci_device_id in self._profiles:
            return self._profiles[pci_device_id]
        profiles = tuple(self._read_profiles(handle))
        if profiles:
            self._profiles[pci_device_id] = profiles
            return profiles
        model = model_for_product(product, pci_device_id)
        if model is None:
            log.info(
                "mig_profiles_unknown", product=product, reason="NVML lists none and the catalog has no entry"
            )
            return ()
        return tuple(sorted(model.profiles, key=lambda p: p.enum))  # NVML's order

    def _read_profiles(self, handle: Handle) -> Iterator[GpuInstanceProfile]:
        nvml = self._nvml
        for enum in range(GI_PROFILE_COUNT):
            try:
                with _calling("nvmlDeviceGetGpuInstanceProfileInfo"):
                    info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, enum)
            except _CallFailed as exc:
                if isinstance(exc.__cause__, _ABSENT):
                    continue
                if isinstance(exc.__cause__, NVMLError_InvalidArgument):
                    break  # past the end of this driver's enum
                raise
            with _calling("nvmlDeviceGetGpuInstancePossiblePlacements"):
                count = ctypes.c_uint(0)
                nvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, info.id, None, ctypes.byref(count))
                placements = (c_nvmlGpuInstancePlacement_t * count.value)()
                nvml.nvmlDeviceGetGpuInstancePossiblePlacements(
                    handle, info.id, placements, ctypes.byref(count)
                )
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
        self, handle: Handle, profiles: tuple[GpuInstanceProfile, ...]
    ) -> Iterator[GpuInstance]:
        nvml = self._nvml
        uuids = self._mig_uuids(handle)
        for profile in profiles:
            gpu_instances = self._instances(
                "nvmlDeviceGetGpuInstances", handle, profile.id, c_nvmlGpuInstance_t, profile.max_count
            )
            for gi in gpu_instances:
                with _calling("nvmlGpuInstanceGetInfo"):
                    info = nvml.nvmlGpuInstanceGetInfo(gi)
                yield GpuInstance(
                    id=info.id,
                    profile=profile.name,
                    placement=Placement(info.placement.start, info.placement.size, profile.name),
                    compute_instances=tuple(self._compute_instances(gi, info.id, uuids)),
                    slices=profile.slices,
                )

    def _compute_instances(
        self, gi: Handle, gi_id: int, uuids: dict[tuple[int, int], str]
    ) -> Iterator[ComputeInstance]:
        """Compute instances of one GPU instance, with the UUIDs of their MIG devices."""
        nvml = self._nvml
        for ci_enum in range(CI_PROFILE_COUNT):
            try:
                ci_info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_enum, 0)
            except (*_ABSENT, NVMLError_InvalidArgument):
                continue
            except NVML_FAILURES as exc:
                raise _CallFailed("nvmlGpuInstanceGetComputeInstanceProfileInfo", exc) from exc
            compute_instances = self._instances(
                "nvmlGpuInstanceGetComputeInstances",
                gi,
                ci_info.id,
                c_nvmlComputeInstance_t,
                ci_info.instanceCount,
            )
            for ci in compute_instances:
                with _calling("nvmlComputeInstanceGetInfo"):
                    ci_id = nvml.nvmlComputeInstanceGetInfo(ci).id
                yield ComputeInstance(ci_id, uuids.get((gi_id, ci_id), ""), ci_info.sliceCount)

    def _instances(
        self, call: str, parent: Handle, profile_id: int, handle_type: Any, most: int
    ) -> list[Handle]:
        """The instances of one profile in ``parent``, from ``nvmlDeviceGetGpuInstances`` or
        ``nvmlGpuInstanceGetComputeInstances`` (``handle_type`` the pointer type of their handles),
        given room for the ``most`` the profile allows."""
        handles = (handle_type * max(most, 1))()
        count = ctypes.c_uint(len(handles))
        with _calling(call):
            getattr(self._nvml, call)(parent, profile_id, handles, ctypes.byref(count))
        return list(handles[: count.value])

    def _mig_uuids(self, device: Handle) -> dict[tuple[int, int], str]:
        """``(gi, ci) -> MIG UUID`` from the MIG device handles of a GPU."""
        nvml = self._nvml
        found = {}
        with _calling("nvmlDeviceGetMaxMigDeviceCount"):
            count = nvml.nvmlDeviceGetMaxMigDeviceCount(device)
        for i in range(count):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i)
            except (NVMLError_NotFound, NVMLError_InvalidArgument):
                continue
            except NVML_FAILURES as exc:
                raise _CallFailed("nvmlDeviceGetMigDeviceHandleByIndex", exc) from exc
            with _calling("nvmlDeviceGetGpuInstanceId"):
                gi_id = nvml.nvmlDeviceGetGpuInstanceId(mig)
            with _calling("nvmlDeviceGetComputeInstanceId"):
                ci_id = nvml.nvmlDeviceGetComputeInstanceId(mig)
            with _calling("nvmlDeviceGetUUID"):
                found[(gi_id, ci_id)] = str(nvml.nvmlDeviceGetUUID(mig))
        return found


def sysfs_bus_id(bus_id: str) -> str:
    """NVML's ``00000000:07:00.0`` (or ``07:00.0``) as sysfs names the device: ``0000:07:00.0``."""
    parts = bus_id.strip().lower().split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    if len(parts) != 3:
        return bus_id.strip().lower()
    domain, bus, function = parts
    return f"{int(domain, 16):04x}:{bus}:{function}"
