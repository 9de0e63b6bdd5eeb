"""Who holds what on a GPU: the checks before a claim's instance is cut.

A placement may be cut for a claim only where nothing else is: an instance there (or one
overlapping it) is this claim's own (an interrupted prepare's, completed or adopted by the
retry), a kept one (:mod:`.reuse`: adopted or destroyed first), another claim's, or one
fatia did not cut; the last two fail the claim with a message that says which. A GPU that
holds a half-made instance fatia did not make is not touched at all, and a GPU in MIG mode
cannot be prepared whole. The apply engine, for its part, must never destroy the MIG device
of any other claim (:func:`claimed_uuids`).

Pure reads of the GPU as last read and of the checkpoint; the preparer calls them under
its lock, right before the cut, so that what they saw still holds when it is made.
"""

from __future__ import annotations

from collections.abc import Collection

from deviceplugin.dra.allocation import PrepareError
from deviceplugin.dra.checkpoint import Checkpoint, PreparedDevice
from mig.inventory import Gpu
from mig.layout import Placement


def check_free(
    gpu: Gpu, device: PreparedDevice, *, uid: str, kept: Collection[Placement], checkpoint: Checkpoint
) -> None:
    """Fail unless the device's placement on ``gpu`` is free, or taken by claim ``uid``'s own
    instance; ``kept``: the GPU's kept placements, adopted or destroyed before the cut."""
    if device.placement is None:
        if gpu.mig_enabled:
            raise PrepareError(f"GPU {gpu.index} ({gpu.uuid}) is in MIG mode; it cannot be used whole")
        return
    placement = device.placement
    for gi in gpu.gpu_instances:
        if not gi.placement.overlaps(placement) or gi.placement in kept:
            continue
        holder = checkpoint.holder(gpu.uuid, gi.placement)
        what = "sits at" if gi.placement == placement else "overlaps"
        if holder is None:
            raise PrepareError(
                f"GPU {gpu.index}: {gi.profile}@{gi.placement.start}, an instance fatia did not cut, "
                f"{what} {placement}; it is left alone"
            )
        if holder.uid != uid:
            raise PrepareError(
                f"GPU {gpu.index}: {gi.profile}@{gi.placement.start}, which claim "
                f"{holder.namespace}/{holder.name} holds, {what} {placement}"
            )
    half_made = [
        gi
        for gi in gpu.gpu_instances
        if not gi.complete and gi.placement not in kept and checkpoint.holder(gpu.uuid, gi.placement) is None
    ]
    if half_made:
        gi = half_made[0]
        raise PrepareError(
            f"GPU {gpu.index}: {gi.profile}@{gi.placement.start} has no compute instance and fatia "
            "did not make it; the GPU is left alone until it is complete or gone"
        )


def claimed_uuids(checkpoint: Checkpoint, *, but: str | None = None) -> frozenset[str]:
    """The devices (MIG or whole GPU) the recorded claims hold, but claim ``but``'s."""
    return frozenset(
        d.uuid for r in checkpoint.records() if r.uid != but for d in r.devices if d.uuid is not None
    )
