"""Apply MIG layouts incrementally, crash-safely, without touching busy instances.

Given a target per GPU (MIG on or off, and the exact placements planned for it),
:class:`Reconciler` changes only the difference from what NVML reports
(:mod:`mig.apply.diff`): kept instances are left alone, instances to remove lose their
compute instances first, new ones are created at their planned placement
(:mod:`mig.apply.steps`), and NVML is read back and compared with the target.

Busy instances are never destroyed: an instance whose MIG device a pod holds (the
caller passes the UUIDs the kubelet reports) or that runs a process is *blocked*; the
apply does everything that does not depend on it and reports what waits. MIG mode
changes only happen on GPUs that need one; one that stays pending (until a GPU reset)
is reported as such.

Crash safety (:mod:`mig.apply.journal`): each step is journaled before it is taken. If
an NVML call fails part way, the GPUs touched are rolled back at once
(:mod:`mig.apply.rollback`); if the process dies, the next start finishes an interrupted
rollback, or reports the interrupted apply and the agent reconciles again (the diff sees
GPU instances without compute instances and finishes or undoes them).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from mig.apply.diff import GpuChange, GpuTarget, busy_instances, diff_gpu, verify
from mig.apply.journal import Journal, dump_layout
from mig.apply.result import ApplyResult, Progress
from mig.apply.rollback import Restorer
from mig.apply.steps import NvmlSteps, OnNvmlError, describe
from mig.errors import ApplyError
from mig.inventory import Gpu, InventoryReader
from mig.nvml import NVML_FAILURES, Nvml

_FAILURES: tuple[type[Exception], ...] = (*NVML_FAILURES, ApplyError)


class Reconciler:
    """Drives NVML from the current layout to target layouts, one journaled step at a time.

    Threads: one thread owns a reconciler and makes every call (in the daemon, the agent
    thread: :meth:`recover` at start, then :meth:`apply`). It keeps no state between calls
    but the journal file, which :meth:`apply` holds under an exclusive ``flock`` so that
    another process (an overlapping fatia) waits rather than interleaving its steps.
    """

    def __init__(
        self,
        nvml: Nvml,
        *,
        state_dir: Path,
        reader: InventoryReader | None = None,
        on_nvml_error: OnNvmlError | None = None,
    ) -> None:
        self._nvml = nvml
        self._reader = reader or InventoryReader(nvml)
        self._journal = Journal(state_dir)
        self._steps = NvmlSteps(nvml, self._journal, on_nvml_error)
        self._restorer = Restorer(nvml, reader=self._reader, journal=self._journal, steps=self._steps)

    @property
    def journal_path(self) -> Path:
        return self._journal.path

    def interrupted(self) -> dict[str, Any] | None:
        """The journal of an apply that did not finish (the process died), if any."""
        return self._journal.read()

    def apply(self, targets: Sequence[GpuTarget], *, held: Collection[str] = ()) -> ApplyResult:
        """Move the GPUs towards their targets; raises :class:`ApplyError` after a rollback."""
        with self._journal.locked():
            try:
                inventory = self._reader.read()
            except NVML_FAILURES as exc:
                raise ApplyError(f"reading the GPUs failed ({describe(exc)}); nothing was changed") from exc
            progress = Progress()
            for target in targets:  # one GPU NVML cannot read costs that GPU only
                problem = inventory.gpu(target.index).problem
                if problem is not None:
                    progress.wait(target.index, f"{problem}; it is left as it is until NVML reads it")
            changes = [diff_gpu(inventory.gpu(t.index), t) for t in targets]
            changes = [c for c in changes if not c.empty and c.gpu.usable]
            if not changes:
                self._journal.end()
                return progress.result(inventory)
            self._journal.begin(
                before={
                    c.gpu.uuid: {
                        "index": c.gpu.index,
                        "mig": c.gpu.mig_enabled,
                        "layout": dump_layout(c.gpu.layout),
                    }
                    for c in changes
                },
                target={
                    c.gpu.uuid: {"mig": c.target.mig_enabled, "layout": dump_layout(c.target.layout)}
                    for c in changes
                },
            )
            try:
                for change in changes:
                    self._apply_gpu(change, held, progress)
                after = self._reader.read()
                verify(after, [c.target for c in changes if c.target.index not in progress.waiting_gpus])
            except _FAILURES as exc:
                self._restorer.roll_back(exc)
            self._journal.end()
            return progress.result(after)

    def _apply_gpu(self, change: GpuChange, held: Collection[str], progress: Progress) -> None:
        gpu, steps = change.gpu, self._steps
        handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        if change.cancel_pending:  # takes effect at once: the mode asked for is the current one
            steps.set_mode(handle, gpu, change.target.mig_enabled, progress)
        gpu_busy, busy = busy_instances(gpu, held, self._nvml)
        if change.mode_change:
            if gpu_busy:
                progress.wait(
                    gpu.index,
                    f"GPU {gpu.index}: MIG mode change waits until the GPU is no longer in use",
                    uuids=[gpu.uuid, *(ci.uuid for gi in gpu.gpu_instances for ci in gi.compute_instances)],
                )
                return
            if gpu.mig_enabled:  # switching MIG off: nothing may remain
                for gi in gpu.gpu_instances:
                    steps.destroy(handle, gpu, gi, progress)
            if not steps.set_mode(handle, gpu, change.target.mig_enabled, progress):
                return
            if not change.target.mig_enabled:
                return
            gpu = self._reader.read().gpu(gpu.index)
            if gpu.problem is not None:
                raise ApplyError(f"{gpu.problem} after its MIG mode change")
            change = diff_gpu(gpu, change.target)
        blocked = [gi for gi in change.destroy if gi.id in busy]
        for gi in change.destroy:
            if gi in blocked:
                progress.wait(
                    gpu.index,
                    f"GPU {gpu.index}: {gi.profile}@{gi.placement.start} is in use",
                    uuids=[ci.uuid for ci in gi.compute_instances],
                )
            else:
                steps.destroy(handle, gpu, gi, progress)
        for gi in change.complete:
            steps.fill(handle, gpu, gi.id, gi.placement)
        for placement in change.create:
            blocker = next((gi for gi in blocked if gi.placement.overlaps(placement)), None)
            if blocker is not None:
                progress.wait(
                    gpu.index,
                    f"GPU {gpu.index}: {placement} waits for "
                    f"{blocker.profile}@{blocker.placement.start} to be free",
                )
                continue
            steps.create(handle, gpu, placement, progress)

    def running(self, gpu: Gpu) -> set[int]:
        """Ids of the GPU's instances that run a process; raises :class:`ApplyError`."""
        return busy_instances(gpu, (), self._nvml)[1]

    def restore(self, before: dict[str, Any]) -> None:
        """Bring every GPU named in ``before`` back to its recorded layout."""
        self._restorer.restore(before)

    def recover(self) -> str | None:
        """At start: finish a rollback that a crash interrupted; report an interrupted apply."""
        return self._restorer.recover()
