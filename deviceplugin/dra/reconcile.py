"""One pass of the DRA driver's pool reconcile: the GPUs and the config in, the pool out.

1. read the GPUs; destroy the kept instances (:mod:`.reuse`) the pool no longer offers, or
   all of them under ``dra: {reuse: never}``; switch MIG on for GPUs the pool offers as
   partitions (and off for GPUs offered whole that hold no instance, :mod:`.modes`),
   leaving a GPU whose switch waits (a reset on A100) unoffered until it is done;
2. build the pool's devices (:mod:`.devices`: instances named by the checkpoint, claimed or
   kept, are fatia's own, any other is left alone and never overlapped) and their taints
   from health (:func:`~.slices.unhealthy_taints`: an unhealthy GPU taints all its devices,
   an unhealthy MIG device its own) with the effect ``dra.taintEffect`` says:
   ``NoSchedule``, or ``NoExecute``, on which the cluster's device-taint eviction
   controller also evicts the pods using them;
3. the slices to publish, once the kubelet has registered the driver (devices published
   earlier would draw pods the kubelet cannot prepare yet, and they would wait out the
   kubelet's retry backoff), each device's health for the DRAResourceHealth stream, and the
   status (the message names the kept instances; each one destroyed is an Event).

:func:`reconcile_pool` holds no state and owns no thread: the driver's thread calls it with
the driver's :class:`Parts` and latest inputs, stores the pool it returns (the gRPC threads
resolve allocations in it) and only then hands on the health, the slices and the status.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deviceplugin.agent.status import Phase
from deviceplugin.config.schema import Config
from deviceplugin.dra.checkpoint import Checkpoint
from deviceplugin.dra.devices import PoolModel, pool_model
from deviceplugin.dra.modes import ready_offers, switch_modes
from deviceplugin.dra.plan import cuda_version
from deviceplugin.dra.pool import plan_pool
from deviceplugin.dra.prepare import Preparer
from deviceplugin.dra.reuse import unwanted
from deviceplugin.dra.slices import resource_slices, unhealthy_taints
from mig.apply import Reconciler
from mig.inventory import Inventory, InventoryReader
from mig.nvml import NVML_FAILURES, Nvml

if TYPE_CHECKING:
    from deviceplugin.health.monitor import HealthMonitor


@dataclass(frozen=True, kw_only=True)
class Parts:
    """What a pass works with, all of it the driver's."""

    nvml: Nvml
    reader: InventoryReader
    reconciler: Reconciler
    checkpoint: Checkpoint
    preparer: Preparer
    node_name: str
    registered: Callable[[], bool]  # has the kubelet registered the driver?
    event: Callable[[str, str, str], None]  # kind, reason, message


@dataclass(frozen=True)
class PoolPass:
    """What one pass found: the status, and the pool built (None: the pool stays as it was)."""

    phase: Phase
    message: str
    inventory: Inventory | None
    waiting: tuple[str, ...] = ()
    devices: int = 0  # how many were published
    model: PoolModel | None = None
    health: dict[str, str | None] | None = None  # device -> None (healthy) or why not
    slices: list[dict[str, Any]] | None = None  # None: nothing to publish (yet)


def reconcile_pool(
    parts: Parts,
    *,
    config: Config | None,
    config_error: str | None,
    unhealthy: Collection[str],
    health: HealthMonitor | None,
) -> PoolPass:
    try:
        inventory = parts.reader.read()
    except NVML_FAILURES as exc:
        return PoolPass(Phase.FAILED, f"reading the GPUs failed: {exc}", None)
    if health is not None:
        health.set_inventory(inventory)
    if config is None:
        return PoolPass(Phase.PENDING, "waiting for the pool config", inventory)
    if health is not None:
        health.set_policy(config.health)
    plan = plan_pool(inventory, config)
    destroyed, held_back = parts.preparer.release_kept(lambda kept: unwanted(kept, plan, config.dra.reuse))
    for line in destroyed:
        parts.event("Normal", "KeptInstanceDestroyed", line)
    inventory, waiting = switch_modes(parts.reconciler, inventory, plan)
    waiting = (*held_back, *waiting)
    model = pool_model(
        inventory,
        ready_offers(inventory, plan),
        owned=parts.checkpoint.owned(),
        cuda_version=cuda_version(parts.nvml),
    )
    taints = unhealthy_taints(model, inventory, unhealthy, effect=config.dra.taint_effect)
    device_health = {d.name: ("unhealthy" if d.name in taints else None) for d in model.devices}
    if not parts.registered():
        # Published devices would draw pods the kubelet cannot prepare yet.
        message = "waiting for the kubelet to register the DRA driver"
        return PoolPass(Phase.PENDING, message, inventory, model=model, health=device_health)
    slices = resource_slices(model, node_name=parts.node_name, generation=0, taints=taints)
    problems = [*plan.errors, *waiting]
    if config_error is not None:
        problems.insert(0, f"the latest config is not used: {config_error}")
    gpus = len({d.gpu_index for d in model.devices})
    summary = f"{len(model.devices)} devices on {gpus} GPUs published to the scheduler"
    if kept := parts.checkpoint.kept():
        summary += f"; kept for reuse: {', '.join(f'{k.device} ({k.mig_uuid})' for k in kept)}"
    phase = Phase.FAILED if config_error or plan.errors else Phase.WAITING if waiting else Phase.IDLE
    message = "; ".join([summary, *problems])
    devices = len(model.devices)
    return PoolPass(
        phase, message, inventory, waiting, devices, model=model, health=device_health, slices=slices
    )
