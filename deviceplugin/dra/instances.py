"""What is behind a claim's devices, made and unmade: MIG instances, intervals, CDI specs.

The NVML side of a prepare and an unprepare (steps 4 to 6 of :mod:`.prepare`, and their
undoing), through the same apply engine as device-plugin mode
(:class:`mig.apply.Reconciler`: journaled, verified, rolled back on failure). The target
handed to the engine is always the GPU's current layout with one change (this placement
added, those removed), and every other claim's MIG device is passed as held, so no other
instance is ever touched. A whole GPU's time-slice interval goes through
:mod:`mig.timeslice`.

:class:`Instances` holds no state of its own; the preparer calls it under its lock (one
claim's NVML work at a time), and it raises :class:`~.allocation.PrepareError` for every
failure, with the message the claim's pod gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from deviceplugin.dra.allocation import PrepareError
from deviceplugin.dra.cdi import CdiDevice, CdiWriter, cdi_name
from deviceplugin.dra.checkpoint import Checkpoint, ClaimRecord, PreparedDevice
from deviceplugin.dra.occupancy import claimed_uuids
from mig.apply import GpuTarget, Reconciler
from mig.devicenodes import read_mig_minors
from mig.errors import FatiaError
from mig.inventory import Gpu, Inventory, InventoryReader
from mig.layout import Placement
from mig.nvml import NVML_FAILURES
from mig.timeslice import DEFAULT, INTERVALS, Timeslicer

log = structlog.get_logger("fatia.dra")


@dataclass(frozen=True, kw_only=True)
class Instances:
    """The GPUs behind the pool's devices, changed one claim's devices at a time."""

    reconciler: Reconciler
    reader: InventoryReader
    checkpoint: Checkpoint
    cdi: CdiWriter
    timeslicer: Timeslicer
    proc_root: Path = Path("/proc")

    def cut(self, uid: str, device: PreparedDevice, inventory: Inventory) -> tuple[PreparedDevice, Inventory]:
        """Make the device's instance exist (a whole GPU needs nothing): the device with its
        MIG UUID, and the node as it is now (``inventory``, or what the engine read back).

        :func:`~.occupancy.check_free` has passed: an instance at the placement is claim
        ``uid``'s own (from an interrupted prepare) and is adopted, completed if it lacks
        its compute instance."""
        if device.placement is None:
            return device, inventory
        gpu = self.usable(inventory, device)
        placement = device.placement
        existing = next((gi for gi in gpu.gpu_instances if gi.placement == placement), None)
        if existing is None or not existing.complete:
            others = [gi.placement for gi in gpu.gpu_instances if gi.placement != placement]
            inventory = self.apply(gpu, (*others, placement), exclude=uid)
            gpu = self.usable(inventory, device)
            existing = next((gi for gi in gpu.gpu_instances if gi.placement == placement), None)
        if existing is None or not existing.complete:
            raise PrepareError(f"GPU {gpu.index}: {placement} was not created")
        return replace(device, mig_uuid=existing.compute_instances[0].uuid), inventory

    def destroy(self, record: ClaimRecord, *, spare: Sequence[PreparedDevice] = ()) -> None:
        """Destroy the instances a record names (those that exist, but those to ``spare``),
        and put its whole GPUs back to the Default interval."""
        by_gpu: dict[str, set[Placement]] = {}
        kept = placements(spare)
        for device in record.devices:
            if device.placement is None:
                if device.sharing is not None and device.sharing.level != DEFAULT:
                    self.set_interval(device, DEFAULT)
            elif (device.gpu_uuid, device.placement) not in kept:
                by_gpu.setdefault(device.gpu_uuid, set()).add(device.placement)
        if not by_gpu:
            return
        inventory = self.read()
        for uuid, going in by_gpu.items():
            gpu = next((g for g in inventory.gpus if g.uuid == uuid), None)
            if gpu is None or not gpu.usable:
                raise PrepareError(
                    f"GPU {uuid} is gone or cannot be read; its instances wait to be destroyed"
                )
            if not any(gi.placement in going for gi in gpu.gpu_instances):
                continue
            layout = tuple(gi.placement for gi in gpu.gpu_instances if gi.placement not in going)
            inventory = self.apply(gpu, layout, exclude=record.uid)

    def set_interval(self, device: PreparedDevice, interval: int | None = None) -> None:
        """Give a whole GPU the interval its claim asks for (``interval``: this one instead).

        A GPU whose claim has no sharing parameters is left as it is."""
        if device.placement is not None or device.sharing is None:
            return
        level = device.sharing.level if interval is None else interval
        try:
            self.timeslicer.set_timeslice(device.gpu_uuid, level)
        except FatiaError as exc:
            raise PrepareError(f"device {device.device}: {exc}") from exc
        log.info("timeslice_set", gpu=device.gpu_index, uuid=device.gpu_uuid, interval=INTERVALS[level])

    def write_cdi(
        self, uid: str, devices: tuple[PreparedDevice, ...], inventory: Inventory
    ) -> tuple[PreparedDevice, ...]:
        """Write claim ``uid``'s CDI spec (the sharing as env) for its devices as they are in
        ``inventory``; the devices with their CDI ids."""
        minors = read_mig_minors(self.proc_root)
        cdi_devices, done = [], []
        for device in devices:
            gpu = next(g for g in inventory.gpus if g.uuid == device.gpu_uuid)
            mig = None
            if device.placement is not None:
                gi = next(gi for gi in gpu.gpu_instances if gi.placement == device.placement)
                mig = (gi.id, gi.compute_instances[0].id)
            env = device.sharing.env() if device.sharing is not None else ()
            entry = CdiDevice(cdi_name(uid, device.device), device.uuid or gpu.uuid, gpu.minor, mig, env)
            cdi_devices.append(entry)
            done.append(replace(device, cdi_ids=(entry.id,)))
        self.cdi.write(uid, cdi_devices, mig_minors=minors)
        return tuple(done)

    # -- NVML through the apply engine ------------------------------------------------

    def apply(self, gpu: Gpu, layout: tuple[Placement, ...], *, exclude: str) -> Inventory:
        """Bring ``gpu`` to exactly ``layout``, sparing the devices of every claim but
        ``exclude``; the node as the engine read it back afterwards."""
        held = claimed_uuids(self.checkpoint, but=exclude)
        try:
            result = self.reconciler.apply([GpuTarget(gpu.index, gpu.uuid, True, layout)], held=held)
        except FatiaError as exc:
            raise PrepareError(str(exc)) from exc
        if result.reset_required:
            raise PrepareError(f"GPU {gpu.index}: switching MIG on waits for a GPU reset")
        if result.waiting:
            raise PrepareError("; ".join(result.waiting))
        return result.inventory

    def read(self) -> Inventory:
        try:
            return self.reader.read()
        except NVML_FAILURES as exc:
            raise PrepareError(f"reading the GPUs failed: {exc}") from exc

    @staticmethod
    def usable(inventory: Inventory, device: PreparedDevice) -> Gpu:
        """The device's GPU in ``inventory``; it must be there and usable."""
        gpu = next((g for g in inventory.gpus if g.uuid == device.gpu_uuid), None)
        if gpu is None or not gpu.usable:
            problem = gpu.problem if gpu is not None else f"GPU {device.gpu_uuid} is not on this node"
            raise PrepareError(f"device {device.device}: {problem}")
        return gpu


def placements(devices: Sequence[PreparedDevice]) -> set[tuple[str, Placement | None]]:
    """(GPU UUID, placement) of each device; a whole GPU's placement is None."""
    return {(d.gpu_uuid, d.placement) for d in devices}
