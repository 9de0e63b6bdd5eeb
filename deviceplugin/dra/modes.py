"""The MIG mode each GPU of the pool is offered in: switched, and ready or not yet.

A GPU the pool offers as MIG partitions needs MIG mode on, one offered whole needs it off;
the driver's reconcile (its own thread) switches them through the apply engine before it
builds the pool's devices, and offers a GPU only once its mode is what its offer needs. A
GPU to be offered whole that still holds MIG instances keeps them (they are a claim's, or
someone else's) and waits; a switch that waits for a GPU reset (on A100) waits too, and
each wait is a line of the driver's status.
"""

from __future__ import annotations

from deviceplugin.dra.pool import PoolPlan
from mig.apply import GpuTarget, Reconciler
from mig.errors import FatiaError
from mig.inventory import Inventory


def switch_modes(
    reconciler: Reconciler, inventory: Inventory, plan: PoolPlan
) -> tuple[Inventory, tuple[str, ...]]:
    """MIG on for GPUs offered as partitions, off for GPUs offered whole (if empty); the
    GPUs as they are then, and what waits."""
    targets, waiting = [], []
    for offer in plan.offers:
        gpu = inventory.gpu(offer.index)
        if not offer.whole and not gpu.mig_enabled:
            targets.append(GpuTarget(gpu.index, gpu.uuid, True, gpu.layout))
        elif offer.whole and gpu.mig_enabled:
            if gpu.gpu_instances:
                waiting.append(
                    f"GPU {gpu.index}: offered whole once its MIG instances are gone "
                    f"({', '.join(str(gi.placement) for gi in gpu.gpu_instances)})"
                )
            else:
                targets.append(GpuTarget(gpu.index, gpu.uuid, False))
    if not targets:
        return inventory, tuple(waiting)
    try:
        result = reconciler.apply(targets)
    except FatiaError as exc:
        return inventory, (*waiting, f"switching MIG mode failed: {exc}")
    waiting += list(result.waiting)
    waiting += [f"GPU {i}: the MIG mode change waits for a GPU reset" for i in result.reset_required]
    return result.inventory, tuple(waiting)


def ready_offers(inventory: Inventory, plan: PoolPlan) -> PoolPlan:
    """The plan's offers whose GPU is usable and in the mode its offer needs."""
    return PoolPlan(tuple(o for o in plan.offers if _ready(inventory, o.index, o.whole)), plan.errors)


def _ready(inventory: Inventory, index: int, whole: bool) -> bool:
    gpu = inventory.gpu(index)
    return gpu.usable and gpu.mig_enabled != whole
