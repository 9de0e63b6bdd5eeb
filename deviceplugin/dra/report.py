"""What the DRA driver says about itself: ``fatia status``, the Node's annotation, Events.

The driver's reconcile (its own thread) reports each pass's phase and message, the GPUs
and what waits; a report that changes nothing visible is not written again, so a quiet
node writes nothing every :data:`~.driver.REFRESH_S` seconds. The status goes to the
state directory's status file (``fatia status``) and to the :class:`Reporter` (the Node's
``fatia.dev/config.status`` annotation, ``mode: dra``); Events go to the Reporter only,
from whichever thread has one to tell (the config source's, the driver's).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import structlog

from deviceplugin.agent.status import AgentStatus, GpuStatus, Phase, write_status
from deviceplugin.config.schema import Config
from deviceplugin.dra import DRIVER_NAME
from mig.inventory import Gpu, Inventory

log = structlog.get_logger("fatia.dra")

RESOURCE = DRIVER_NAME  # what `fatia status` lists the published devices under


class Reporter(Protocol):
    def status(self, status: AgentStatus) -> None: ...

    def event(self, kind: str, reason: str, message: str) -> None: ...


class DriverReport:
    """The driver's latest status, written where it is read when it changes."""

    def __init__(self, *, state_dir: Path, reporter: Reporter | None) -> None:
        self.status = AgentStatus(mode="dra", message="starting")
        self._state_dir = state_dir
        self._reporter = reporter

    def update(
        self,
        phase: Phase,
        message: str,
        inventory: Inventory | None,
        waiting: tuple[str, ...],
        *,
        config: Config | None,
        config_source: str | None,
        unhealthy: Collection[str],
        devices: int = 0,
    ) -> None:
        previous = self.status
        status = replace(
            previous,
            phase=phase,
            message=message,
            applied_config=config.digest if config else None,
            desired_config=config.digest if config else None,
            config_source=config_source,
            gpus=[gpu_status(g) for g in inventory.gpus] if inventory is not None else previous.gpus,
            resources={RESOURCE: devices},
            unhealthy=sorted(unhealthy),
            waiting=list(waiting),
        )
        self.status = status
        same = (previous.phase, previous.message, previous.gpus, previous.unhealthy) == (
            status.phase,
            status.message,
            status.gpus,
            status.unhealthy,
        )
        if same and previous.resources == status.resources:
            return
        write_status(self._state_dir, status)
        if self._reporter is not None:
            self._reporter.status(status)
        if phase != previous.phase:
            log.info("phase", phase=str(phase), message=message)

    def event(self, kind: str, reason: str, message: str) -> None:
        if self._reporter is not None:
            self._reporter.event(kind, reason, message)


def gpu_status(gpu: Gpu) -> GpuStatus:
    """A GPU as ``fatia status`` shows it in DRA mode."""
    if gpu.lost:
        mig = "lost"
    elif not gpu.mig_capable:
        mig = "n/a"
    elif gpu.mig_enabled != gpu.mig_pending:
        mig = "pending enable" if gpu.mig_pending else "pending disable"
    else:
        mig = "enabled" if gpu.mig_enabled else "disabled"
    return GpuStatus(
        index=gpu.index,
        uuid=gpu.uuid,
        product=gpu.product,
        mig=mig,
        layout=[str(gi.placement) for gi in gpu.gpu_instances],
        memory_mib=gpu.memory_mib,
    )
