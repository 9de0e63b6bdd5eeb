"""NodePrepareResources and NodeUnprepareResources: a claim's MIG slice, cut on demand.

The scheduler has allocated devices of this node's pool to a claim; preparing it makes
them real. For a MIG device that means creating exactly the GPU instance (and its one
compute instance) at the allocated placement, through the same apply engine as
device-plugin mode (:class:`mig.apply.Reconciler`: journaled, verified, rolled back on
failure). The target handed to the engine is the GPU's current layout plus that one
placement, so no other instance is ever touched: not one fatia cut for another claim
(those are also passed as held), not one someone else made.

Steps for a claim, one claim at a time (a lock serialises all NVML work):

1. recorded as prepared: answer the same devices again (idempotent);
2. read the claim from the API; its UID must be the one the kubelet named, and its
   allocation must name devices of this node's pool; its ``gpu.fatia.dev`` parameters
   (:mod:`.sharing`) must be valid, and give each device its sharing (a MIG device, or a
   device held with admin access, takes only the Default interval);
3. record the claim as *preparing*, with the placements it will take (the checkpoint
   makes an instance found after a crash fatia's own, see :mod:`.checkpoint`);
4. cut each MIG device: an instance already at the placement that belongs to this claim
   (a retry after a crash) is adopted or completed; one that belongs to another claim,
   or is someone else's, or an overlapping one, fails the claim with a message that says
   which; a GPU holding a half-made instance fatia did not make is not touched;
5. give each whole GPU whose claim asks for sharing the claim's time-slice interval
   (:mod:`mig.timeslice`);
6. write the CDI spec (:mod:`.cdi`, with the sharing as env) and record the claim as
   prepared.

A whole GPU is allocated to one claim at a time, so its interval is that claim's: every
pod sharing the claim shares it, and it is never another claim's to change. A claim without
sharing parameters leaves the interval as it is.

Under ``dra: {reuse: identical}`` step 4 first adopts a *kept* instance at the placement
(same MIG UUID, no NVML call) and destroys the kept ones in the way of it (:mod:`.reuse`;
the claim's intent is recorded first, so a crash leaves a claim to retry).

Unprepare (by UID only): destroy the claim's instances (the engine refuses to destroy one
that still runs a process: the claim then fails to unprepare, and the kubelet retries),
put its whole GPUs back to the Default interval, or, under ``reuse: identical``, keep the
whole ones that run nothing; remove the CDI spec; forget the claim (and record what is
kept, in the same write). The kubelet prepares a claim once per node however many pods
share it, and unprepares it when the last is gone; a repeated call is answered the same
(idempotent). An unknown UID is already unprepared.

Every error is a message for the claim (the kubelet reports it as the pod's event); the
others in the same call carry on.

The pieces: :mod:`.allocation` reads the claim and resolves its allocation (step 2, on the
gRPC thread, outside the lock); :mod:`.occupancy` checks that each placement is free;
:mod:`.instances` does the NVML work (steps 4 to 6 and their undoing); :mod:`.reuse` the
kept instances. This module is their order: the claim's lifecycle, prepare and unprepare,
and the checkpoint writes between the steps. The gRPC threads call :class:`Preparer`, and
the driver's thread calls :meth:`Preparer.release_kept`; the preparer's lock serialises
their NVML work and checkpoint changes (the driver's own MIG mode switches go through the
apply engine outside it; :meth:`Preparer.restore_intervals` runs at start, before the
gRPC service does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from deviceplugin.config.schema import ReusePolicy
from deviceplugin.dra.allocation import Allocations, ClaimReader, ClaimRef, PrepareError
from deviceplugin.dra.cdi import CdiWriter
from deviceplugin.dra.checkpoint import PREPARED, PREPARING, Checkpoint, ClaimRecord, PreparedDevice
from deviceplugin.dra.devices import PoolModel
from deviceplugin.dra.instances import Instances, placements
from deviceplugin.dra.occupancy import check_free, claimed_uuids
from deviceplugin.dra.reuse import Keeper
from mig.apply import Reconciler
from mig.inventory import InventoryReader
from mig.layout import Placement
from mig.timeslice import DEFAULT, Timeslicer

log = structlog.get_logger("fatia.dra")


@dataclass(frozen=True)
class Outcome:
    """A claim's answer: its prepared devices, or why it could not be prepared."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str | None = None


class Preparer:
    """Prepares and unprepares claims. Called from gRPC threads; one claim at a time."""

    def __init__(
        self,
        *,
        reconciler: Reconciler,
        reader: InventoryReader,
        checkpoint: Checkpoint,
        cdi: CdiWriter,
        claims: ClaimReader,
        node_name: str,
        pool: Callable[[], PoolModel],
        timeslicer: Timeslicer,
        reuse: Callable[[], ReusePolicy] = lambda: ReusePolicy.NEVER,
        proc_root: Path = Path("/proc"),
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allocations = Allocations(claims=claims, node_name=node_name, pool=pool)
        self._instances = instances = Instances(
            reconciler=reconciler,
            reader=reader,
            checkpoint=checkpoint,
            cdi=cdi,
            timeslicer=timeslicer,
            proc_root=proc_root,
        )
        self._checkpoint = checkpoint
        self._pool = pool
        self._reuse = reuse
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self.keeper = Keeper(
            checkpoint=checkpoint,
            read=instances.read,
            apply=lambda gpu, layout: instances.apply(gpu, layout, exclude=""),
            running=reconciler.running,
        )
        self.latencies: list[float] = []  # seconds per claim that needed work (benchmarks)

    # -- prepare ----------------------------------------------------------------

    def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, Outcome]:
        results = {}
        for claim in claims:
            try:
                results[claim.uid] = Outcome(devices=self._prepare(claim))
            except PrepareError as exc:
                log.warning(
                    "claim_prepare_failed",
                    claim=f"{claim.namespace}/{claim.name}",
                    uid=claim.uid,
                    error=str(exc),
                )
                results[claim.uid] = Outcome(error=str(exc))
        return results

    def _prepare(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        record = self._checkpoint.get(ref.uid)
        if record is not None and record.state == PREPARED:
            return record.devices
        wanted = self._allocations.devices(ref)
        instances = self._instances
        with self._lock:
            start = self._clock()
            record = self._checkpoint.get(ref.uid)
            if record is not None and record.state == PREPARED:
                return record.devices
            if record is not None and placements(record.devices) != placements(wanted):
                # A retry of an interrupted prepare that now asks for other devices: the
                # old intent is undone first, so that nothing it began is left behind.
                instances.destroy(record)
            inventory = instances.read()  # one read of the node, then what each change read back
            for device in wanted:  # before the intent: it would make what is there look ours
                gpu = instances.usable(inventory, device)
                check_free(
                    gpu, device, uid=ref.uid, kept=self.keeper.placements(gpu), checkpoint=self._checkpoint
                )
            intent = ClaimRecord(ref.uid, ref.namespace, ref.name, PREPARING, wanted)
            adopted, doomed = self.keeper.take(self._pool(), wanted)
            self._checkpoint.put(intent, adopted=adopted)
            for k in adopted:
                log.info("kept_instance_adopted", claim=f"{ref.namespace}/{ref.name}", device=k.device,
                         uuid=k.mig_uuid)  # fmt: skip
            destroyed, failed = self.keeper.destroy(
                dict.fromkeys(doomed, f"in the way of claim {ref.namespace}/{ref.name}")
            )
            if failed:
                raise PrepareError("; ".join(failed))
            if destroyed:
                inventory = instances.read()
            cut = []
            for device in wanted:
                device, inventory = instances.cut(ref.uid, device, inventory)
                cut.append(device)
            for device in cut:
                instances.set_interval(device)
            done = instances.write_cdi(ref.uid, tuple(cut), inventory)
            self._checkpoint.put(intent.prepared(done))
            self.latencies.append(self._clock() - start)
        log.info(
            "claim_prepared",
            claim=f"{ref.namespace}/{ref.name}",
            uid=ref.uid,
            devices=[d.device for d in done],
            uuids=[d.uuid for d in done],
            sharing=[d.sharing.interval if d.sharing else None for d in done],
        )
        self._on_change()
        return done

    def restore_intervals(self) -> None:
        """Set the intervals of prepared claims again (at start: a reboot forgets them)."""
        for record in self._checkpoint.records():
            for device in record.devices:
                if (
                    record.state == PREPARED
                    and device.sharing is not None
                    and device.sharing.level != DEFAULT
                ):
                    try:
                        self._instances.set_interval(device)
                    except PrepareError as exc:
                        log.warning("timeslice_restore_failed", uid=record.uid, error=str(exc))

    # -- unprepare --------------------------------------------------------------

    def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for claim in claims:
            try:
                self._unprepare(claim.uid)
                results[claim.uid] = None
            except PrepareError as exc:
                log.warning("claim_unprepare_failed", uid=claim.uid, error=str(exc))
                results[claim.uid] = str(exc)
        return results

    def _unprepare(self, uid: str) -> None:
        with self._lock:
            record = self._checkpoint.get(uid)
            if record is None:
                return
            keep = self.keeper.keepable(record.devices) if self._reuse() == ReusePolicy.IDENTICAL else []
            self._instances.destroy(record, spare=keep)
            self._instances.cdi.remove(uid)
            self._checkpoint.remove(uid, keep=keep)
        for k in keep:
            log.info(
                "instance_kept", claim=f"{record.namespace}/{record.name}", device=k.device, uuid=k.mig_uuid
            )
        log.info("claim_unprepared", claim=f"{record.namespace}/{record.name}", uid=uid)
        self._on_change()

    # -- what others need to know ---------------------------------------------------

    def release_kept(
        self, reasons: Callable[[Sequence[PreparedDevice]], Mapping[PreparedDevice, str]]
    ) -> tuple[list[str], list[str]]:
        """Destroy the kept instances ``reasons`` names, forget those that are gone; (what was
        destroyed, what could not be), one line each."""
        with self._lock:
            return self.keeper.destroy(reasons(self._checkpoint.kept()))

    def owned(self) -> dict[str, set[Placement]]:
        return self._checkpoint.owned()

    def prepared_uuids(self) -> frozenset[str]:
        return claimed_uuids(self._checkpoint)
