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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from deviceplugin.config.schema import ReusePolicy
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.cdi import CdiDevice, CdiWriter, cdi_name
from deviceplugin.dra.checkpoint import PREPARED, PREPARING, Checkpoint, ClaimRecord, PreparedDevice
from deviceplugin.dra.reuse import Keeper
from deviceplugin.dra.sharing import claim_sharing
from deviceplugin.dra.slices import PoolModel
from mig.apply import GpuTarget, Reconciler
from mig.devicenodes import read_mig_minors
from mig.errors import ConfigError, FatiaError
from mig.inventory import Gpu, Inventory, InventoryReader
from mig.layout import Placement
from mig.nvml import NVML_FAILURES
from mig.timeslice import DEFAULT, INTERVALS, Timeslicer

log = structlog.get_logger("fatia.dra")


class PrepareError(FatiaError):
    """A claim that cannot be prepared or unprepared; the message says why."""


class ClaimReader(Protocol):
    """Reads a ResourceClaim (as the API's JSON) by namespace and name."""

    def get(self, namespace: str, name: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class Outcome:
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
        self._reconciler = reconciler
        self._reader = reader
        self._checkpoint = checkpoint
        self._cdi = cdi
        self._claims = claims
        self._node = node_name
        self._pool = pool
        self._timeslicer = timeslicer
        self._reuse = reuse
        self._proc_root = proc_root
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self.keeper = Keeper(
            checkpoint=checkpoint,
            read=self._read,
            apply=lambda gpu, layout: self._apply(gpu, layout, exclude=""),
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
        claim = self._read_claim(ref)
        wanted = self._allocated(ref, claim)
        with self._lock:
            start = self._clock()
            record = self._checkpoint.get(ref.uid)
            if record is not None and record.state == PREPARED:
                return record.devices
            if record is not None and _placements(record.devices) != _placements(wanted):
                # A retry of an interrupted prepare that now asks for other devices: the
                # old intent is undone first, so that nothing it began is left behind.
                self._destroy(record)
            for device in wanted:  # before the intent: it would make what is there look ours
                self._check_free(ref, device)
            intent = ClaimRecord(ref.uid, ref.namespace, ref.name, PREPARING, wanted)
            adopted, doomed = self.keeper.take(self._pool(), wanted)
            self._checkpoint.put(intent, adopted=adopted)
            for k in adopted:
                log.info("kept_instance_adopted", claim=f"{ref.namespace}/{ref.name}", device=k.device,
                         uuid=k.mig_uuid)  # fmt: skip
            _, failed = self.keeper.destroy(
                dict.fromkeys(doomed, f"in the way of claim {ref.namespace}/{ref.name}")
            )
            if failed:
                raise PrepareError("; ".join(failed))
            done = tuple(self._cut(ref, device) for device in wanted)
            for device in done:
                self._set_interval(device)
            done = self._write_cdi(ref.uid, done)
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

    def _read_claim(self, ref: ClaimRef) -> Mapping[str, Any]:
        try:
            return self._claims.get(ref.namespace, ref.name)
        except Exception as exc:  # the API's error, whatever the client raises
            raise PrepareError(f"cannot read ResourceClaim {ref.namespace}/{ref.name}: {exc}") from exc

    def _allocated(self, ref: ClaimRef, claim: Mapping[str, Any]) -> tuple[PreparedDevice, ...]:
        """This driver's allocated devices of the claim, resolved in the pool."""
        where = f"ResourceClaim {ref.namespace}/{ref.name}"
        uid = claim.get("metadata", {}).get("uid")
        if uid != ref.uid:
            raise PrepareError(f"{where} has UID {uid}, not {ref.uid} as the kubelet asked (recreated?)")
        allocation = (claim.get("status") or {}).get("allocation") or {}
        results = [
            r
            for r in (allocation.get("devices") or {}).get("results") or []
            if r.get("driver") == DRIVER_NAME
        ]
        if not results:
            raise PrepareError(f"{where} has no device of driver {DRIVER_NAME} allocated")
        try:
            sharing = claim_sharing(claim)
        except ConfigError as exc:
            raise PrepareError(f"{where}: {exc}") from exc
        pool = self._pool()
        devices = []
        for result in results:
            name, pool_name = str(result.get("device")), str(result.get("pool"))
            if pool_name != self._node:
                raise PrepareError(
                    f"{where}: device {name} is from pool {pool_name}, not this node's ({self._node})"
                )
            device = pool.device(name)
            if device is None:
                raise PrepareError(f"{where}: device {name} is not (or no longer) in this node's pool")
            request = str(result.get("request"))
            chosen = sharing.for_request(request)
            if chosen is not None and chosen.level != DEFAULT and device.placement is not None:
                raise PrepareError(
                    f"{where}: {chosen.path}: {chosen.interval} cannot be set for {name} (request "
                    f"{request}): a MIG device is time-sliced at the Default interval only"
                )
            if chosen is not None and chosen.level != DEFAULT and result.get("adminAccess"):
                raise PrepareError(
                    f"{where}: {chosen.path}: {chosen.interval} cannot be set for {name} (request "
                    f"{request}) with admin access: the device is another claim's"
                )
            devices.append(
                PreparedDevice(
                    device=name,
                    request_names=(request,),
                    pool=pool_name,
                    gpu_uuid=device.gpu_uuid,
                    gpu_index=device.gpu_index,
                    placement=device.placement,
                    share_id=result.get("shareID"),
                    sharing=chosen,
                )
            )
        return tuple(devices)

    def _check_free(self, ref: ClaimRef, device: PreparedDevice) -> None:
        """Fail unless the device's placement is free, or taken by this claim's own instance."""
        gpu = self._gpu(device)
        if device.placement is None:
            if gpu.mig_enabled:
                raise PrepareError(f"GPU {gpu.index} ({gpu.uuid}) is in MIG mode; it cannot be used whole")
            return
        placement = device.placement
        kept = self.keeper.placements(gpu)  # adopted or destroyed before the cut
        for gi in gpu.gpu_instances:
            if not gi.placement.overlaps(placement) or gi.placement in kept:
                continue
            holder = self._checkpoint.holder(gpu.uuid, gi.placement)
            what = "sits at" if gi.placement == placement else "overlaps"
            if holder is None:
                raise PrepareError(
                    f"GPU {gpu.index}: {gi.profile}@{gi.placement.start}, an instance fatia did not cut, "
                    f"{what} {placement}; it is left alone"
                )
            if holder.uid != ref.uid:
                raise PrepareError(
                    f"GPU {gpu.index}: {gi.profile}@{gi.placement.start}, which claim "
                    f"{holder.namespace}/{holder.name} holds, {what} {placement}"
                )
        half_made = [
            gi
            for gi in gpu.gpu_instances
            if not gi.complete
            and gi.placement not in kept
            and self._checkpoint.holder(gpu.uuid, gi.placement) is None
        ]
        if half_made:
            gi = half_made[0]
            raise PrepareError(
                f"GPU {gpu.index}: {gi.profile}@{gi.placement.start} has no compute instance and fatia "
                "did not make it; the GPU is left alone until it is complete or gone"
            )

    def _cut(self, ref: ClaimRef, device: PreparedDevice) -> PreparedDevice:
        """Make the device's instance exist (a whole GPU needs nothing); its MIG UUID.

        :meth:`_check_free` has passed: an instance at the placement is this claim's own
        (from an interrupted prepare) and is adopted, completed if it lacks its compute
        instance."""
        if device.placement is None:
            return device
        gpu = self._gpu(device)
        placement = device.placement
        existing = next((gi for gi in gpu.gpu_instances if gi.placement == placement), None)
        if existing is None or not existing.complete:
            others = [gi.placement for gi in gpu.gpu_instances if gi.placement != placement]
            layout = (*others, placement)
            self._apply(gpu, layout, exclude=ref.uid)
            gpu = self._gpu(device)
            existing = next((gi for gi in gpu.gpu_instances if gi.placement == placement), None)
        if existing is None or not existing.complete:
            raise PrepareError(f"GPU {gpu.index}: {placement} was not created")
        ci = existing.compute_instances[0]
        return replace(device, mig_uuid=ci.uuid)

    def _set_interval(self, device: PreparedDevice, interval: int | None = None) -> None:
        """Give a whole GPU the interval its claim asks for (``interval``: this one instead).

        A GPU whose claim has no sharing parameters is left as it is."""
        if device.placement is not None or device.sharing is None:
            return
        level = device.sharing.level if interval is None else interval
        try:
            self._timeslicer.set_timeslice(device.gpu_uuid, level)
        except FatiaError as exc:
            raise PrepareError(f"device {device.device}: {exc}") from exc
        log.info("timeslice_set", gpu=device.gpu_index, uuid=device.gpu_uuid, interval=INTERVALS[level])

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
                        self._set_interval(device)
                    except PrepareError as exc:
                        log.warning("timeslice_restore_failed", uid=record.uid, error=str(exc))

    def _write_cdi(self, uid: str, devices: tuple[PreparedDevice, ...]) -> tuple[PreparedDevice, ...]:
        inventory = self._read()
        minors = read_mig_minors(self._proc_root)
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
        self._cdi.write(uid, cdi_devices, mig_minors=minors)
        return tuple(done)

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
            self._destroy(record, spare=keep)
            self._cdi.remove(uid)
            self._checkpoint.remove(uid, keep=keep)
        for k in keep:
            log.info(
                "instance_kept", claim=f"{record.namespace}/{record.name}", device=k.device, uuid=k.mig_uuid
            )
        log.info("claim_unprepared", claim=f"{record.namespace}/{record.name}", uid=uid)
        self._on_change()

    def _destroy(self, record: ClaimRecord, *, spare: Sequence[PreparedDevice] = ()) -> None:
        """Destroy the instances a record names (those that exist, but those to ``spare``),
        and put its whole GPUs back to the Default interval."""
        by_gpu: dict[str, set[Placement]] = {}
        kept = _placements(spare)
        for device in record.devices:
            if device.placement is None:
                if device.sharing is not None and device.sharing.level != DEFAULT:
                    self._set_interval(device, DEFAULT)
            elif (device.gpu_uuid, device.placement) not in kept:
                by_gpu.setdefault(device.gpu_uuid, set()).add(device.placement)
        for uuid, placements in by_gpu.items():
            gpu = next((g for g in self._read().gpus if g.uuid == uuid), None)
            if gpu is None or not gpu.usable:
                raise PrepareError(
                    f"GPU {uuid} is gone or cannot be read; its instances wait to be destroyed"
                )
            if not any(gi.placement in placements for gi in gpu.gpu_instances):
                continue
            layout = tuple(gi.placement for gi in gpu.gpu_instances if gi.placement not in placements)
            self._apply(gpu, layout, exclude=record.uid)

    # -- NVML through the apply engine ------------------------------------------------

    def _apply(self, gpu: Gpu, layout: tuple[Placement, ...], *, exclude: str) -> None:
        held = self._held(exclude)
        try:
            result = self._reconciler.apply([GpuTarget(gpu.index, gpu.uuid, True, layout)], held=held)
        except FatiaError as exc:
            raise PrepareError(str(exc)) from exc
        if result.reset_required:
            raise PrepareError(f"GPU {gpu.index}: switching MIG on waits for a GPU reset")
        if result.waiting:
            raise PrepareError("; ".join(result.waiting))

    def _held(self, exclude: str) -> Collection[str]:
        """MIG devices of every other claim: the engine must never destroy them."""
        return {
            d.uuid
            for r in self._checkpoint.records()
            if r.uid != exclude
            for d in r.devices
            if d.uuid is not None
        }

    def _read(self) -> Inventory:
        try:
            return self._reader.read()
        except NVML_FAILURES as exc:
            raise PrepareError(f"reading the GPUs failed: {exc}") from exc

    def _gpu(self, device: PreparedDevice) -> Gpu:
        gpu = next((g for g in self._read().gpus if g.uuid == device.gpu_uuid), None)
        if gpu is None or not gpu.usable:
            problem = gpu.problem if gpu is not None else f"GPU {device.gpu_uuid} is not on this node"
            raise PrepareError(f"device {device.device}: {problem}")
        return gpu

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
        return frozenset(d.uuid for r in self._checkpoint.records() for d in r.devices if d.uuid is not None)


def _placements(devices: Sequence[PreparedDevice]) -> set[tuple[str, Placement | None]]:
    return {(d.gpu_uuid, d.placement) for d in devices}
