"""What the kubelet is offered: the resources built from the GPUs as they are now.

The advertiser keeps what advertising depends on — the config in effect, the inventory
last read and the devices withheld while an apply may destroy them — and rebuilds the
whole ``resource -> devices`` map when any of it, or health, changes. The plugin manager
then acts on the difference, so a rebuild that changes nothing sends nothing.

What the status board says is served is what was handed to the manager, never a plan.

Owned by the agent's thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deviceplugin.agent.board import StatusBoard
from deviceplugin.agent.status import GpuStatus
from deviceplugin.config.schema import Config
from deviceplugin.health.monitor import HealthMonitor
from deviceplugin.plan.resources import Resource, build_resources
from deviceplugin.telemetry.metrics import Metrics
from mig.devicenodes import read_mig_minors
from mig.inventory import Gpu, Inventory


class Offer(Protocol):
    """Where resources are offered to the kubelet (the plugin manager)."""

    def update(self, resources: Mapping[str, Resource]) -> None: ...

    def ready(self) -> tuple[bool, str]: ...


@dataclass(eq=False, kw_only=True)
class Advertiser:
    manager: Offer
    metrics: Metrics
    board: StatusBoard
    health: HealthMonitor | None
    proc_root: Path
    _config: Config | None = field(default=None, init=False)
    _inventory: Inventory | None = field(default=None, init=False)
    _withheld: frozenset[str] = field(default=frozenset(), init=False)

    @property
    def inventory(self) -> Inventory | None:
        return self._inventory

    def serve(
        self, config: Config | None, inventory: Inventory | None, *, withheld: frozenset[str] = frozenset()
    ) -> None:
        """Offer what ``config`` makes of ``inventory`` (None: nothing), less ``withheld``."""
        self._config, self._inventory, self._withheld = config, inventory, withheld
        self.refresh()

    def withhold(self, uuids: frozenset[str]) -> None:
        """Stop offering ``uuids`` (and every replica of them) before they may be destroyed."""
        self._withheld = uuids
        self.refresh()

    def refresh(self) -> None:
        """Rebuild and hand the manager the full map (after a change of health, say)."""
        config, inventory = self._config, self._inventory
        if config is None or inventory is None:
            self._publish({}, inventory, frozenset())
            return
        unhealthy: frozenset[str] = frozenset()
        if self.health is not None:
            self.health.set_inventory(inventory)
            unhealthy = self.health.unhealthy()
        minors = read_mig_minors(self.proc_root) if config.plugin.pass_device_specs else {}
        resources = build_resources(
            inventory, config, unhealthy=unhealthy, withheld=self._withheld, mig_minors=minors
        )
        self.board.status.mig_strategy = config.mig_strategy
        self._publish(resources, inventory, unhealthy)

    def summary(self) -> str:
        counts = self.board.status.resources
        return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "nothing to advertise"

    def _publish(
        self, resources: dict[str, Resource], inventory: Inventory | None, unhealthy: frozenset[str]
    ) -> None:
        self.manager.update(resources)
        self.metrics.set_devices(
            dict(Counter((name, d.health) for name, r in resources.items() for d in r.devices))
        )
        status = self.board.status
        status.resources = {name: len(r.devices) for name, r in resources.items()}
        status.replicas = max(
            (d.replica + 1 for r in resources.values() for d in r.devices if d.replica is not None),
            default=1,
        )
        status.unhealthy = sorted(unhealthy)
        if inventory is not None:
            status.gpus = [gpu_status(g) for g in inventory.gpus]


def gpu_status(gpu: Gpu) -> GpuStatus:
    if gpu.lost:
        mig = "lost"
    elif gpu.fault is not None:
        mig = "unreadable"
    elif gpu.mig_enabled != gpu.mig_pending:
        mig = "pending " + ("enable" if gpu.mig_pending else "disable")
    else:
        mig = "enabled" if gpu.mig_enabled else ("disabled" if gpu.mig_capable else "n/a")
    return GpuStatus(gpu.index, gpu.uuid, gpu.product, mig, [str(p) for p in gpu.layout], gpu.memory_mib)
