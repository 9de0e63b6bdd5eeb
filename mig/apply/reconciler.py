"""Apply MIG layouts incrementally, crash-safely, without touching busy instances.

Given a target per GPU (MIG on or off, and the exact placements planned for
it), :class:`Reconciler` changes only the difference from what NVML reports:

1. GPU instances that the target keeps (same profile, same place) are left
   alone; an incomplete one (a GPU instance whose compute instance was never
   created, e.g. after a crash) is completed if kept, destroyed if not.
2. Instances to remove lose their compute instances first, then go.
3. New GPU instances are created *at their planned placement*, each with one
   compute instance filling it.
4. NVML is read back and compared with the target.

Busy instances are never destroyed: an instance whose MIG device a pod holds
(the caller passes the UUIDs the kubelet reports) or that runs a process
(NVML says) is *blocked*. The apply goes ahead with everything that does not
depend on it and reports what waits; the caller retries later.

MIG mode changes only happen on GPUs that need one. On Ampere they stay
pending until the GPU is reset, and the result says so rather than pretending.

Crash safety: before each NVML step the journal (``mig-journal.json`` in the
state directory) records the step and the layouts before and after. If the
process dies, the next start finds the journal: the agent reconciles again
(which finishes or undoes every half-made instance, since the diff sees GPU
instances without compute instances), and a failed apply can still roll back to
the layout recorded before the interrupted change. If an NVML call fails part
way, the GPUs touched are rolled back to their previous layout at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
import structlog

from mig.errors import ApplyError
from mig.inventory import Gpu, GpuInstance, Inventory, InventoryReader
from mig.layout import Layout, Placement, normalize
from mig.nvml import Nvml

log = structlog.get_logger("fatia.mig")

JOURNAL_FILE = "mig-journal.json"
LOCK_FILE = "mig.lock"


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
        return self.gpu.mig_enabled != self.target.mig_enabled

    @property
    def empty(self) -> bool:
        return not (self.mode_change or self.destroy or self.create or self.complete)


@dataclass(frozen=True)
class ApplyResult:
    inventory: Inventory  # as read back after the apply
    waiting: tuple[str, ...] = ()  # what could not be done yet, and why
    withheld: frozenset[str] = frozenset()  # UUIDs not to advertise (waiting to be destroyed)
    reset_required: tuple[int, ...] = ()  # GPUs whose MIG mode change awaits a reset
    created: int = 0
    destroyed: int = 0

    @property
    def done(self) -> bool:
        return not self.waiting and not self.reset_required


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
    except pynvml.NVMLError as exc:
        raise ApplyError(f"GPU {gpu.index}: cannot list its processes: {exc}") from exc
    return whole or bool(busy), busy


def _process_gpu_instances(nvml: Nvml, gpu: Gpu) -> list[int]:
    """The GPU instance of every process on the GPU (0xFFFFFFFF: not on a MIG device).

    Asked of the GPU itself; a driver that refuses that while MIG is on is asked
    MIG device by MIG device.
    """
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
    try:
        return [p.gpuInstanceId for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    except pynvml.NVMLError_NotSupported:
        if not gpu.mig_enabled:
            raise
    found = []
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
            continue
        if nvml.nvmlDeviceGetComputeRunningProcesses(mig):
            found.append(nvml.nvmlDeviceGetGpuInstanceId(mig))
    return found


class Reconciler:
    """Drives NVML from the current layout to target layouts, one journaled step at a time."""

    def __init__(
        self,
        nvml: Nvml,
        *,
        state_dir: Path,
        reader: InventoryReader | None = None,
        on_nvml_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self._nvml = nvml
        self._state_dir = state_dir
        self._reader = reader or InventoryReader(nvml)
        self._on_nvml_error = on_nvml_error  # (step, error), e.g. for a metric
        self._journal: dict[str, Any] | None = None

    # -- journal ------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self._state_dir / JOURNAL_FILE

    def interrupted(self) -> dict[str, Any] | None:
        """The journal of an apply that did not finish (the process died), if any."""
        try:
            return dict(json.loads(self.journal_path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("journal_unreadable", path=str(self.journal_path), error=str(exc))
            return None

    def _write_journal(self) -> None:
        assert self._journal is not None
        tmp = self.journal_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self._journal))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)

    def _begin(self, inventory: Inventory, changes: Sequence[GpuChange]) -> None:
        previous = self.interrupted()
        before = {
            c.gpu.uuid: {"index": c.gpu.index, "mig": c.gpu.mig_enabled, "layout": _dump(c.gpu.layout)}
            for c in changes
        }
        if previous is not None:
            # An interrupted apply: its "before" is the last layout known to be whole.
            before.update(previous.get("before", {}))
        self._journal = {
            "id": uuid.uuid4().hex[:12],
            "started": time.time(),
            "phase": "applying",
            "before": before,
            "target": {
                c.gpu.uuid: {"mig": c.target.mig_enabled, "layout": _dump(c.target.layout)} for c in changes
            },
            "steps": [],
        }
        self._write_journal()

    @contextlib.contextmanager
    def _step(self, op: str, gpu: int, **details: Any) -> Iterator[None]:
        assert self._journal is not None
        entry = {"op": op, "gpu": gpu, **details, "state": "started"}
        self._journal["steps"].append(entry)
        self._write_journal()
        log.info("mig_step", op=op, gpu=gpu, **details)
        try:
            yield
        except pynvml.NVMLError as exc:
            if self._on_nvml_error is not None:
                self._on_nvml_error(op, exc)
            raise
        entry["state"] = "done"
        self._write_journal()

    def _end(self) -> None:
        self._journal = None
        self.journal_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One MIG writer per node, even while an old and a new fatia overlap."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        with open(self._state_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- apply ----------------------------------------------------------------

    def apply(self, targets: Sequence[GpuTarget], *, held: Collection[str] = ()) -> ApplyResult:
        """Move the GPUs towards their targets; raises :class:`ApplyError` after a rollback."""
        with self._locked():
            try:
                inventory = self._reader.read()
            except pynvml.NVMLError as exc:
                raise ApplyError(f"reading the GPUs failed ({_describe(exc)}); nothing was changed") from exc
            changes = [diff_gpu(inventory.gpu(t.index), t) for t in targets]
            changes = [c for c in changes if not c.empty and not c.gpu.lost]
            if not changes:
                self._end()
                return ApplyResult(inventory=inventory)
            self._begin(inventory, changes)
            result = _Progress()
            try:
                for change in changes:
                    self._apply_gpu(change, held, result)
                after = self._reader.read()
                if not result.waiting and not result.reset_required:
                    self._verify(after, [c.target for c in changes])
            except (pynvml.NVMLError, ApplyError) as exc:
                self._rollback(exc)
            self._end()
            return ApplyResult(
                inventory=after,
                waiting=tuple(result.waiting),
                withheld=frozenset(result.withheld),
                reset_required=tuple(result.reset_required),
                created=result.created,
                destroyed=result.destroyed,
            )

    def _apply_gpu(self, change: GpuChange, held: Collection[str], result: _Progress) -> None:
        gpu = change.gpu
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        gpu_busy, busy = busy_instances(gpu, held, nvml)
        if change.mode_change:
            if gpu_busy:
                result.wait(
                    f"GPU {gpu.index}: MIG mode change waits until the GPU is no longer in use",
                    uuids=[gpu.uuid, *(ci.uuid for gi in gpu.gpu_instances for ci in gi.compute_instances)],
                )
                return
            if gpu.mig_enabled:  # switching MIG off: nothing may remain
                for gi in gpu.gpu_instances:
                    self._destroy(handle, gpu, gi, result)
            if not self._set_mode(handle, gpu, change.target.mig_enabled, result):
                return
            if not change.target.mig_enabled:
                return
            gpu = self._reader.read().gpu(gpu.index)
            change = diff_gpu(gpu, change.target)
        blocked = [gi for gi in change.destroy if gi.id in busy]
        for gi in change.destroy:
            if gi in blocked:
                result.wait(
                    f"GPU {gpu.index}: {gi.profile}@{gi.placement.start} is in use",
                    uuids=[ci.uuid for ci in gi.compute_instances],
                )
            else:
                self._destroy(handle, gpu, gi, result)
        for gi in change.complete:
            self._fill(handle, gpu, gi.id, gi.placement, result)
        for placement in change.create:
            blocker = next((gi for gi in blocked if gi.placement.overlaps(placement)), None)
            if blocker is not None:
                result.wait(
                    f"GPU {gpu.index}: {placement} waits for "
                    f"{blocker.profile}@{blocker.placement.start} to be free"
                )
                continue
            self._create(handle, gpu, placement, result)

    def _set_mode(self, handle: Any, gpu: Gpu, enable: bool, result: _Progress) -> bool:
        """Set the MIG mode; True when it took effect now."""
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enable else pynvml.NVML_DEVICE_MIG_DISABLE
        with self._step("set_mig_mode", gpu.index, mode=mode):
            status = self._nvml.nvmlDeviceSetMigMode(handle, mode)
        current, _pending = self._nvml.nvmlDeviceGetMigMode(handle)
        if current == mode:
            return True
        word = "on" if enable else "off"
        if status == pynvml.NVML_ERROR_IN_USE:
            why = "the GPU is in use by another client; it takes effect after a GPU reset"
        else:
            why = "it takes effect after a GPU reset or a node reboot"
        result.reset_required.append(gpu.index)
        result.wait(f"GPU {gpu.index}: MIG mode {word} is pending: {why}", uuids=[gpu.uuid])
        return False

    def _destroy(self, handle: Any, gpu: Gpu, gi: GpuInstance, result: _Progress) -> None:
        nvml = self._nvml
        gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi.id)
        for ci in gi.compute_instances:
            with self._step("destroy_ci", gpu.index, gi=gi.id, ci=ci.id, uuid=ci.uuid):
                nvml.nvmlComputeInstanceDestroy(nvml.nvmlGpuInstanceGetComputeInstanceById(gi_handle, ci.id))
        with self._step("destroy_gi", gpu.index, gi=gi.id, placement=str(gi.placement)):
            nvml.nvmlGpuInstanceDestroy(gi_handle)
        result.destroyed += 1

    def _create(self, handle: Any, gpu: Gpu, placement: Placement, result: _Progress) -> None:
        nvml = self._nvml
        profile = gpu.profile(placement.profile)
        if profile is None:
            raise ApplyError(f"GPU {gpu.index}: it has no MIG profile {placement.profile}")
        spot = pynvml.c_nvmlGpuInstancePlacement_t()
        spot.start, spot.size = placement.start, placement.size
        with self._step("create_gi", gpu.index, placement=str(placement)):
            gi_handle = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile.id, ctypes.byref(spot))
        gi_id = nvml.nvmlGpuInstanceGetInfo(gi_handle).id
        result.created += 1
        self._fill(handle, gpu, gi_id, placement, result)

    def _fill(self, handle: Any, gpu: Gpu, gi_id: int, placement: Placement, result: _Progress) -> None:
        """Create the one compute instance that fills a GPU instance."""
        nvml = self._nvml
        gi_handle = nvml.nvmlDeviceGetGpuInstanceById(handle, gi_id)
        profile = gpu.profile(placement.profile)
        slices = profile.slices if profile else 0
        ci_profile = None
        for enum in range(9):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi_handle, enum, 0)
            except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
                continue
            if info.sliceCount == slices:
                ci_profile = info.id
                break
        if ci_profile is None:
            raise ApplyError(f"GPU {gpu.index}: no compute-instance profile fills {placement}")
        with self._step("create_ci", gpu.index, gi=gi_id, placement=str(placement)):
            nvml.nvmlGpuInstanceCreateComputeInstance(gi_handle, ci_profile)

    def _verify(self, inventory: Inventory, targets: Sequence[GpuTarget]) -> None:
        for target in targets:
            gpu = inventory.gpu(target.index)
            if gpu.lost:
                raise ApplyError(f"GPU {target.index} was lost during the apply")
            if gpu.mig_enabled != target.mig_enabled:
                raise ApplyError(f"GPU {target.index}: MIG mode did not change as asked")
            if target.mig_enabled and (
                gpu.layout != normalize(target.layout) or not all(gi.complete for gi in gpu.gpu_instances)
            ):
                raise ApplyError(
                    f"GPU {target.index}: NVML reports {_show(gpu.layout)} after the apply, "
                    f"expected {_show(target.layout)}"
                )

    # -- rollback ---------------------------------------------------------------

    def _rollback(self, cause: Exception) -> None:
        """Restore the layouts recorded before this apply, then raise :class:`ApplyError`."""
        assert self._journal is not None
        self._journal["phase"] = "rolling-back"
        self._journal["error"] = str(cause)
        self._write_journal()
        log.error("mig_apply_failed", error=str(cause), rolling_back=True)
        try:
            self.restore(self._journal["before"])
        except (pynvml.NVMLError, ApplyError) as exc:
            self._end()
            raise ApplyError(
                f"applying the MIG layout failed ({_describe(cause)}) and the previous layout "
                f"could not be fully restored: {_describe(exc)}; check `fatia status` for what "
                f"is left"
            ) from exc
        self._end()
        raise ApplyError(
            f"applying the MIG layout failed ({_describe(cause)}); the previous layout was restored"
        ) from cause

    def restore(self, before: dict[str, Any]) -> None:
        """Bring every GPU named in ``before`` back to the recorded layout (no busy checks:
        only instances this apply created are destroyed, and those are new).

        Every GPU is tried even when one fails; raises :class:`ApplyError` naming each GPU
        that could not be restored (lost, failing, or a mode change that awaits a reset).
        """
        inventory = self._reader.read()
        # A lost GPU may not tell its UUID any more; the journal also records its index.
        recorded_indices = {entry.get("index") for entry in before.values()}
        problems: list[str] = []
        for gpu in inventory.gpus:
            named = gpu.uuid in before or (gpu.lost and gpu.index in recorded_indices)
            if not named:
                continue
            if gpu.lost:
                problems.append(f"GPU {gpu.index} was lost; its previous layout could not be restored")
                continue
            recorded = before[gpu.uuid]
            target = GpuTarget(gpu.index, gpu.uuid, recorded["mig"], _load(recorded["layout"]))
            try:
                problem = self._restore_gpu(gpu, target)
            except pynvml.NVMLError as exc:
                problem = f"GPU {gpu.index}: restoring its previous layout failed ({_describe(exc)})"
            except ApplyError as exc:
                problem = f"GPU {gpu.index}: restoring its previous layout failed ({exc})"
            if problem:
                problems.append(problem)
        if problems:
            raise ApplyError("; ".join(problems))
        log.info("mig_layout_restored", gpus=sorted(before))

    def _restore_gpu(self, gpu: Gpu, target: GpuTarget) -> str | None:
        """Restore one GPU; a message when its mode change has to wait for a reset."""
        change = diff_gpu(gpu, target)
        handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        progress = _Progress()
        if change.empty:
            if gpu.mig_capable and gpu.mig_pending != target.mig_enabled:
                # An Ampere mode change this apply asked for, still pending: take it back.
                self._set_mode(handle, gpu, target.mig_enabled, progress)
            return None
        for gi in change.destroy:
            self._destroy(handle, gpu, gi, progress)
        if change.mode_change and not self._set_mode(handle, gpu, target.mig_enabled, progress):
            return f"GPU {gpu.index}: its previous MIG mode returns only after a GPU reset"
        for gi in change.complete:
            self._fill(handle, gpu, gi.id, gi.placement, progress)
        for placement in change.create:
            self._create(handle, gpu, placement, progress)
        return None

    def recover(self) -> str | None:
        """At start: finish a rollback that a crash interrupted; report an interrupted apply."""
        journal = self.interrupted()
        if journal is None:
            return None
        if journal.get("phase") == "rolling-back":
            with self._locked():
                self._journal = journal
                try:
                    self.restore(journal["before"])
                except (pynvml.NVMLError, ApplyError) as exc:
                    return (
                        f"could not finish rolling back interrupted MIG apply "
                        f"{journal.get('id')} ({_describe(exc)}); reconciling again"
                    )
                finally:
                    self._end()
            return f"finished rolling back interrupted MIG apply {journal.get('id')}"
        steps = journal.get("steps", [])
        last = steps[-1] if steps else None
        where = f" at step {last['op']} on GPU {last['gpu']}" if last else ""
        return f"MIG apply {journal.get('id')} was interrupted{where}; reconciling again"


@dataclass
class _Progress:
    waiting: list[str] = field(default_factory=list)
    withheld: set[str] = field(default_factory=set)
    reset_required: list[int] = field(default_factory=list)
    created: int = 0
    destroyed: int = 0

    def wait(self, message: str, *, uuids: Sequence[str] = ()) -> None:
        self.waiting.append(message)
        self.withheld.update(uuids)


def _dump(layout: Layout) -> list[list[Any]]:
    return [[p.start, p.size, p.profile] for p in layout]


def _load(raw: list[list[Any]]) -> Layout:
    return normalize(Placement(int(s), int(n), str(p)) for s, n, p in raw)


def _show(layout: Sequence[Placement]) -> str:
    return ", ".join(str(p) for p in normalize(layout)) or "no instances"


def _describe(exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError):
        return f"NVML: {exc}"
    return str(exc)
