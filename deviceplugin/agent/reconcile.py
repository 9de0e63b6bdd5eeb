"""One reconciliation: a config in, the node brought to it (or a reason why not) out.

    parse -> read NVML -> plan -> (withhold, ask PodResources, apply) -> advertise

:func:`reconcile_once` holds no state and owns no thread: it is given the latest config
text, the config in effect and its collaborators, does one pass and returns an
:class:`Outcome` for the loop to act on (keep the config, retry later, report). A config
that does not parse or cannot be planned changes nothing. Before anything is destroyed,
the devices concerned stop being offered and the kubelet's PodResources is asked who
holds what; held devices are never destroyed, the outcome says what waits.

Nothing is offered ahead of an apply that nothing was offered before: on a fresh start
whose first apply fails, the kubelet is not shown devices that are then taken away again
on every retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from deviceplugin.agent.advertiser import Advertiser
from deviceplugin.agent.board import StatusBoard
from deviceplugin.agent.status import Phase
from deviceplugin.config.schema import Config, parse_config
from deviceplugin.config.source import ConfigText
from deviceplugin.plan.node import errors, plan_node, targets
from deviceplugin.plan.warnings import config_warnings
from deviceplugin.telemetry.metrics import Metrics
from mig.apply import Reconciler, diff_gpu
from mig.errors import ApplyError, ConfigError, FatiaError, PodResourcesUnavailable
from mig.inventory import Inventory, InventoryReader
from mig.layout import Placement


class Result(StrEnum):
    APPLIED = "applied"
    WAITING = "waiting"
    INVALID = "invalid"
    FAILED = "failed"  # NVML refused the apply; it was rolled back

    @property
    def metric(self) -> str:
        """The ``outcome`` label of the reconfiguration metrics."""
        return {"applied": "success", "waiting": "waiting"}.get(self.value, "failed")


@dataclass(frozen=True)
class Outcome:
    result: Result
    message: str
    config: Config | None = None  # the config now in effect (APPLIED, WAITING)
    waiting: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()  # GPUs on the node that are not served, and why
    warnings: tuple[str, ...] = ()  # valid, but likely not what was meant


class PodResources(Protocol):
    """Which devices pods hold (the kubelet's PodResources API)."""

    def held_uuids(self) -> set[str]: ...


@dataclass(frozen=True)
class Parts:
    """The collaborators one reconciliation works with."""

    reader: InventoryReader
    reconciler: Reconciler
    pod_resources: PodResources | None
    advertiser: Advertiser
    board: StatusBoard
    metrics: Metrics


def reconcile_once(
    desired: ConfigText, in_effect: Config | None, parts: Parts, *, retry: bool = False
) -> Outcome:
    """One pass; a ``retry`` keeps the status saying what it waits for until it is done."""
    try:
        if desired.error:
            raise ConfigError(desired.error)
        config = (
            Config(digest="defaults")
            if desired.text is None
            else parse_config(desired.text, source=desired.origin)
        )
    except ConfigError as exc:
        return Outcome(Result.INVALID, str(exc))
    parts.board.status.desired_config = config.digest
    try:
        waiting, refused = _apply(config, in_effect, parts, announce=not retry)
    except FatiaError as exc:
        # Serve what the config in effect makes of the GPUs as they are now (an apply may
        # have stopped offering devices); with none in effect, serve nothing.
        parts.advertiser.serve(in_effect, parts.reader.read() if in_effect is not None else None)
        return Outcome(Result.FAILED if isinstance(exc, ApplyError) else Result.INVALID, str(exc))
    lost = unavailable(parts.advertiser.inventory)
    warnings = tuple(config_warnings(config, parts.board.status.resources))
    if refused:  # in effect on every other GPU; the refused ones are not offered, and retried
        served = f"the other GPUs serve config {config.digest}: {parts.advertiser.summary()}"
        message = "; ".join([*refused, served, *waiting, *lost])
        return Outcome(Result.FAILED, message, config, tuple(waiting), tuple(lost), warnings)
    if waiting:
        message = "; ".join(waiting + lost)
        return Outcome(Result.WAITING, message, config, tuple(waiting), tuple(lost), warnings)
    message = "; ".join([f"config {config.digest} applied: {parts.advertiser.summary()}", *lost])
    return Outcome(Result.APPLIED, message, config, (), tuple(lost), warnings)


def _apply(
    config: Config, in_effect: Config | None, parts: Parts, *, announce: bool
) -> tuple[list[str], list[str]]:
    """Plan and apply ``config``; returns what still waits, and what NVML refused, per GPU."""
    inventory = parts.reader.read()
    plans = plan_node(inventory, config, held=_held_placements(inventory, parts.pod_resources))
    problems = errors(plans)
    if problems:
        raise ConfigError("; ".join(problems))
    wanted = targets(plans)
    changes = [diff_gpu(inventory.gpu(t.index), t) for t in wanted]
    changes = [c for c in changes if not c.empty and c.gpu.usable]
    if not changes:
        parts.advertiser.serve(config, inventory)
        return [], []
    leaving = frozenset({ci.uuid for c in changes for gi in c.destroy for ci in gi.compute_instances})
    leaving |= {c.gpu.uuid for c in changes if c.mode_change}
    if announce:
        parts.board.phase(Phase.APPLYING, f"applying config {config.digest}")
    if in_effect is not None:  # stop offering what is about to go
        parts.advertiser.serve(config, inventory, withheld=leaving)
    try:
        held = parts.pod_resources.held_uuids() if leaving and parts.pod_resources else set()
    except PodResourcesUnavailable as exc:
        # Without knowing what pods hold, nothing is destroyed; try again later.
        parts.advertiser.serve(config, inventory, withheld=leaving)
        return [f"{exc}; nothing is changed until it answers"], []
    # One GPU's refusal costs that GPU only: the apply (rolled back whole by the reconciler)
    # runs again without it, and its devices are not offered until a retry succeeds.
    refused: dict[int, str] = {}
    while True:
        try:
            result = parts.reconciler.apply([t for t in wanted if t.index not in refused], held=held)
            break
        except ApplyError as exc:
            if exc.gpu is None or exc.gpu in refused:
                raise
            refused[exc.gpu] = str(exc)
    parts.metrics.gpu_instances.labels("created").inc(result.created)
    parts.metrics.gpu_instances.labels("destroyed").inc(result.destroyed)
    off = {result.inventory.gpu(index).uuid for index in refused}
    parts.advertiser.serve(config, result.inventory, withheld=result.withheld | off)
    return list(result.waiting), list(refused.values())


def _held_placements(inventory: Inventory, pod_resources: PodResources | None) -> dict[int, set[Placement]]:
    """Per GPU, the instances pods hold now (so the planner keeps them in place)."""
    if pod_resources is None or not any(g.gpu_instances for g in inventory.gpus):
        return {}
    try:
        held = pod_resources.held_uuids()
    except PodResourcesUnavailable:
        return {}
    return {
        gpu.index: {
            gi.placement for gi in gpu.gpu_instances if any(ci.uuid in held for ci in gi.compute_instances)
        }
        for gpu in inventory.gpus
    }


def unavailable(inventory: Inventory | None) -> list[str]:
    """A sentence for each GPU that is on the node but cannot be served."""
    if inventory is None:
        return []
    return [f"{g.problem}: not served" for g in inventory.gpus if g.problem is not None]
