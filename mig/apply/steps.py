"""The NVML steps of a MIG apply, each journaled before it is taken.

Set the MIG mode; create a GPU instance *at its planned placement* and fill it with one
compute instance; destroy a GPU instance (its compute instances first). A step that
NVML refuses raises :class:`StepFailed`, whose message names the GPU (index and UUID),
the step in words and NVML's error (``NVML_ERROR_NOT_SUPPORTED (Not Supported)``); the
caller rolls back.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any

from mig.apply.journal import Journal
from mig.apply.result import Progress
from mig.catalog import CI_PROFILE_COUNT
from mig.errors import ApplyError, StepFailed
from mig.inventory import Gpu, GpuInstance
from mig.layout import Placement
from mig.nvml import (
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_IN_USE,
    NVML_FAILURES,
    NVML_SUCCESS,
    Handle,
    Nvml,
    NVMLError,
    NVMLError_InvalidArgument,
    NVMLError_NotSupported,
    NVMLLibraryMismatchError,
    c_nvmlGpuInstancePlacement_t,
    error_name,
)

# (step, error): told about every NVML error of a step, e.g. for a metric.
OnNvmlError = Callable[[str, Exception], None]


class NvmlSteps:
    """One NVML change (and the reads it needs) per method, each recorded in ``journal`` first."""

    def __init__(self, nvml: Nvml, journal: Journal, on_nvml_error: OnNvmlError | None = None) -> None:
        self._nvml = nvml
        self._journal = journal
        self._on_nvml_error = on_nvml_error

    @contextlib.contextmanager
    def _doing(self, gpu: Gpu, step: str, op: str) -> Iterator[None]:
        """NVML failures of the body become :class:`StepFailed` for ``step``."""
        try:
            yield
        except NVML_FAILURES as exc:
            if self._on_nvml_error is not None:
                self._on_nvml_error(op, exc)
            raise StepFailed(gpu=gpu.index, uuid=gpu.uuid, step=step, nvml_error=error_name(exc)) from exc

    @contextlib.contextmanager
    def _step(self, gpu: Gpu, step: str, op: str, **details: Any) -> Iterator[None]:
        """A journaled change: recorded before the body runs, named when it fails."""
        with self._doing(gpu, step, op), self._journal.step(op, gpu.index, step=step, **details):
            yield

    def set_mode(self, handle: Handle, gpu: Gpu, enable: bool, progress: Progress) -> bool:
        """Set the MIG mode; True when it took effect now (a pending change is reported)."""
        mode = NVML_DEVICE_MIG_ENABLE if enable else NVML_DEVICE_MIG_DISABLE
        word = "on" if enable else "off"
        with self._step(gpu, f"set MIG mode {word}", "set_mig_mode", mode=mode):
            status = self._nvml.nvmlDeviceSetMigMode(handle, mode)
        with self._doing(gpu, "read the MIG mode", "set_mig_mode"):
            current, _pending = self._nvml.nvmlDeviceGetMigMode(handle)
        if current == mode:
            return True
        if status == NVML_ERROR_IN_USE:
            why = "the GPU is in use by another client; fatia asks again, or a GPU reset applies it"
        else:
            said = f"{error_name(NVMLError(status))}; " if status != NVML_SUCCESS else ""
            why = f"{said}it takes effect after a GPU reset or a node reboot"
        progress.reset_required.append(gpu.index)
        progress.wait(gpu.index, f"GPU {gpu.index}: MIG mode {word} is pending: {why}", uuids=[gpu.uuid])
        return False

    def destroy(self, handle: Handle, gpu: Gpu, gi: GpuInstance, progress: Progress) -> None:
        nvml, where = self._nvml, f"{gi.profile} at {gi.placement.start}"
        with self._doing(gpu, f"find GPU instance {where}", "destroy_gi"):
            gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi.id)
        for ci in gi.compute_instances:
            step = f"destroy compute instance {ci.id} of GPU instance {where}"
            with self._step(gpu, step, "destroy_ci", gi=gi.id, ci=ci.id, uuid=ci.uuid):
                nvml.nvmlComputeInstanceDestroy(nvml.nvmlGpuInstanceGetComputeInstanceById(gi_handle, ci.id))
        with self._step(
            gpu, f"destroy GPU instance {where}", "destroy_gi", gi=gi.id, placement=str(gi.placement)
        ):
            nvml.nvmlGpuInstanceDestroy(gi_handle)
        progress.destroyed += 1

    def create(self, handle: Handle, gpu: Gpu, placement: Placement, progress: Progress) -> None:
        nvml = self._nvml
        step = f"create GPU instance {placement.profile} at slice {placement.start}"
        profile = gpu.profile(placement.profile)
        if profile is None:
            raise ApplyError(
                f"GPU {gpu.index} ({gpu.uuid}): {step}: it has no MIG profile {placement.profile}"
            )
        spot = c_nvmlGpuInstancePlacement_t()
        spot.start, spot.size = placement.start, placement.size
        with self._step(gpu, step, "create_gi", placement=str(placement)):
            gi_handle = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile.id, ctypes.byref(spot))
        with self._doing(gpu, step, "create_gi"):
            gi_id = nvml.nvmlGpuInstanceGetInfo(gi_handle).id
        progress.created += 1
        self.fill(handle, gpu, gi_id, placement)

    def fill(self, handle: Handle, gpu: Gpu, gi_id: int, placement: Placement) -> None:
        """Create the one compute instance that fills a GPU instance: the first profile (in
        NVML's order) the instance offers with all of its compute slices."""
        nvml = self._nvml
        step = f"create compute instance in GPU instance {placement.profile} at slice {placement.start}"
        profile = gpu.profile(placement.profile)
        slices = profile.slices if profile else 0
        ci_profile = None
        with self._doing(gpu, step, "create_ci"):
            gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi_id)
            for enum in range(CI_PROFILE_COUNT):
                try:
                    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi_handle, enum, 0)
                except (
                    NVMLError_NotSupported,
                    NVMLError_InvalidArgument,
                    NVMLLibraryMismatchError,
                ):
                    continue
                if info.sliceCount == slices:
                    ci_profile = info.id
                    break
        if ci_profile is None:
            raise ApplyError(f"GPU {gpu.index} ({gpu.uuid}): {step}: no compute-instance profile fills it")
        with self._step(gpu, step, "create_ci", gi=gi_id, placement=str(placement)):
            nvml.nvmlGpuInstanceCreateComputeInstance(gi_handle, ci_profile)


def describe(exc: BaseException) -> str:
    """An error as a person reads it; NVML's with its name (``NVML_ERROR_IN_USE (In use ...)``)."""
    return error_name(exc) if isinstance(exc, NVML_FAILURES) else str(exc)
