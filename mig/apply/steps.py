"""The NVML steps of a MIG apply, each journaled before it is taken.

Set the MIG mode; create a GPU instance *at its planned placement* and fill it with one
compute instance; destroy a GPU instance (its compute instances first). A step that
NVML refuses raises; the caller rolls back.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import pynvml

from mig.apply.journal import Journal
from mig.apply.result import Progress
from mig.errors import ApplyError
from mig.inventory import Gpu, GpuInstance
from mig.layout import Placement
from mig.nvml import Nvml

# (step, error): told about every NVML error of a step, e.g. for a metric.
OnNvmlError = Callable[[str, Exception], None]


class NvmlSteps:
    """One NVML call (or a few) per method, each recorded in ``journal`` first."""

    def __init__(self, nvml: Nvml, journal: Journal, on_nvml_error: OnNvmlError | None = None) -> None:
        self._nvml = nvml
        self._journal = journal
        self._on_nvml_error = on_nvml_error

    @contextlib.contextmanager
    def _step(self, op: str, gpu: int, **details: Any) -> Iterator[None]:
        with self._journal.step(op, gpu, **details):
            try:
                yield
            except pynvml.NVMLError as exc:
                if self._on_nvml_error is not None:
                    self._on_nvml_error(op, exc)
                raise

    def set_mode(self, handle: Any, gpu: Gpu, enable: bool, progress: Progress) -> bool:
        """Set the MIG mode; True when it took effect now."""
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enable else pynvml.NVML_DEVICE_MIG_DISABLE
        with self._step("set_mig_mode", gpu.index, mode=mode):
            status = self._nvml.nvmlDeviceSetMigMode(handle, mode)
        current, _pending = self._nvml.nvmlDeviceGetMigMode(handle)
        if current == mode:
            return True
        word = "on" if enable else "off"
        if status == pynvml.NVML_ERROR_IN_USE:
            why = "the GPU is in use by another client; it takes effect after a GPU reset"
        else:
            why = "it takes effect after a GPU reset or a node reboot"
        progress.reset_required.append(gpu.index)
        progress.wait(f"GPU {gpu.index}: MIG mode {word} is pending: {why}", uuids=[gpu.uuid])
        return False

    def destroy(self, handle: Any, gpu: Gpu, gi: GpuInstance, progress: Progress) -> None:
        nvml = self._nvml
        gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi.id)
        for ci in gi.compute_instances:
            with self._step("destroy_ci", gpu.index, gi=gi.id, ci=ci.id, uuid=ci.uuid):
                nvml.nvmlComputeInstanceDestroy(nvml.nvmlGpuInstanceGetComputeInstanceById(gi_handle, ci.id))
        with self._step("destroy_gi", gpu.index, gi=gi.id, placement=str(gi.placement)):
            nvml.nvmlGpuInstanceDestroy(gi_handle)
        progress.destroyed += 1

    def create(self, handle: Any, gpu: Gpu, placement: Placement, progress: Progress) -> None:
        nvml = self._nvml
        profile = gpu.profile(placement.profile)
        if profile is None:
            raise ApplyError(f"GPU {gpu.index}: it has no MIG profile {placement.profile}")
        spot = pynvml.c_nvmlGpuInstancePlacement_t()
        spot.start, spot.size = placement.start, placement.size
        with self._step("create_gi", gpu.index, placement=str(placement)):
            gi_handle = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile.id, ctypes.byref(spot))
        gi_id = nvml.nvmlGpuInstanceGetInfo(gi_handle).id
        progress.created += 1
        self.fill(handle, gpu, gi_id, placement)

    def fill(self, handle: Any, gpu: Gpu, gi_id: int, placement: Placement) -> None:
        """Create the one compute instance that fills a GPU instance."""
        nvml = self._nvml
        gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi_id)
        profile = gpu.profile(placement.profile)
        slices = profile.slices if profile else 0
        ci_profile = None
        for enum in range(9):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi_handle, enum, 0)
            except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
                continue
            if info.sliceCount == slices:
                ci_profile = info.id
                break
        if ci_profile is None:
            raise ApplyError(f"GPU {gpu.index}: no compute-instance profile fills {placement}")
        with self._step("create_ci", gpu.index, gi=gi_id, placement=str(placement)):
            nvml.nvmlGpuInstanceCreateComputeInstance(gi_handle, ci_profile)


def describe(exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError):
        return f"NVML: {exc}"
    return str(exc)
