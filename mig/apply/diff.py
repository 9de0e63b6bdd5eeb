"""What has to change on one GPU, and what on it is busy.

Pure over the inventory's frozen data, except :func:`busy_instances`, which asks NVML
which instances run processes. A GPU instance the target keeps (same profile, same
place) is kept; an incomplete one (no compute instance, e.g. after a crash) is completed
if kept, destroyed if not; what the target has and NVML does not is created.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from mig.errors import ApplyError
from mig.inventory import Gpu, GpuInstance, Inventory
from mig.layout import Layout, Placement, normalize
from mig.nvml import (
    NVML_FAILURES,
    Nvml,
    NVMLError_InvalidArgument,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLLibraryMismatchError,
    error_name,
)


@dataclass(frozen=True)
class GpuTarget:
    """What one GPU should become: MIG off, or MIG on with exactly ``layout``."""

    index: int
    uuid: str
    mig_enabled: bool
    layout: Layout = ()


@dataclass(frozen=True)
class GpuChange:
    """The difference between a GPU and its target."""

    gpu: Gpu
    target: GpuTarget
    destroy: tuple[GpuInstance, ...]  # existing instances the target does not keep
    create: tuple[Placement, ...]  # planned instances that do not exist yet
    complete: tuple[GpuInstance, ...]  # kept instances that lack their compute instance

    @property
    def mode_change(self) -> bool:
        """The current MIG mode is not the target's."""
        return self.gpu.mig_enabled != self.target.mig_enabled

    @property
    def cancel_pending(self) -> bool:
        """The current mode is the target's, but another one is pending (an earlier change
        that waited for a reset): it must be taken back, or the next GPU reset applies it."""
        return (
            not self.mode_change and self.gpu.mig_capable and self.gpu.mig_pending != self.target.mig_enabled
        )

    @property
    def empty(self) -> bool:
        return not (self.mode_change or self.cancel_pending or self.destroy or self.create or self.complete)


def diff_gpu(gpu: Gpu, target: GpuTarget) -> GpuChange:
    """Keep what the target keeps; destroy the rest; create what is missing."""
    wanted = set(target.layout) if target.mig_enabled else set()
    existing = gpu.gpu_instances if gpu.mig_enabled else ()
    kept = [gi for gi in existing if gi.placement in wanted]
    destroy = tuple(gi for gi in existing if gi.placement not in wanted)
    have = {gi.placement for gi in kept}
    return GpuChange(
        gpu=gpu,
        target=target,
        destroy=destroy,
        create=tuple(p for p in normalize(wanted) if p not in have),
        complete=tuple(gi for gi in kept if not gi.complete),
    )


def verify(inventory: Inventory, targets: Sequence[GpuTarget]) -> None:
    """Raise :class:`ApplyError` unless NVML reports exactly the targets."""
    for target in targets:
        gpu = inventory.gpu(target.index)
        if gpu.problem is not None:
            raise ApplyError(f"{gpu.problem} after the apply")
        if gpu.mig_enabled != target.mig_enabled:
            raise ApplyError(f"GPU {target.index} ({gpu.uuid}): MIG mode did not change as asked")
        if gpu.mig_capable and gpu.mig_pending != target.mig_enabled:
            raise ApplyError(
                f"GPU {target.index} ({gpu.uuid}): a MIG mode change the target does not want is pending"
            )
        if target.mig_enabled and (
            gpu.layout != normalize(target.layout) or not all(gi.complete for gi in gpu.gpu_instances)
        ):
            raise ApplyError(
                f"GPU {target.index}: NVML reports {_show(gpu.layout)} after the apply, "
                f"expected {_show(target.layout)}"
            )


def _show(layout: Sequence[Placement]) -> str:
    return ", ".join(str(p) for p in normalize(layout)) or "no instances"


def busy_instances(gpu: Gpu, held: Collection[str], nvml: Nvml) -> tuple[bool, set[int]]:
    """(whole GPU busy, ids of busy GPU instances): held by a pod, or running a process."""
    whole = gpu.uuid in held
    busy = {gi.id for gi in gpu.gpu_instances if any(ci.uuid in held for ci in gi.compute_instances)}
    ids = {gi.id for gi in gpu.gpu_instances}
    try:
        for gi_id in _process_gpu_instances(nvml, gpu):
            if gi_id in ids:
                busy.add(gi_id)
            else:
                whole = True
    except NVML_FAILURES as exc:
        raise ApplyError(
            f"GPU {gpu.index} ({gpu.uuid}): cannot list its processes: {error_name(exc)}"
        ) from exc
    return whole or bool(busy), busy


def _process_gpu_instances(nvml: Nvml, gpu: Gpu) -> list[int]:
    """The GPU instance of every process on the GPU (0xFFFFFFFF: not on a MIG device).

    Asked of the GPU itself; a driver that refuses that while MIG is on is asked
    MIG device by MIG device.
    """
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
    try:
        return [p.gpuInstanceId for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    except (NVMLError_NotSupported, NVMLLibraryMismatchError):
        if not gpu.mig_enabled:
            raise
    found = []
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except (NVMLError_NotFound, NVMLError_InvalidArgument):
            continue
        if nvml.nvmlDeviceGetComputeRunningProcesses(mig):
            found.append(nvml.nvmlDeviceGetGpuInstanceId(mig))
    return found
