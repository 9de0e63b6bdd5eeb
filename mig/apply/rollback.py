"""Back to the layouts a journal recorded before an apply.

Used when a step fails part way (at once, :meth:`Restorer.roll_back`) and at start when
a crash interrupted a rollback (:meth:`Restorer.recover`). No busy checks: only
instances the failed apply created are destroyed, and those are new. Every GPU is tried
even when one fails, and the error names each GPU that could not be restored.
"""

from __future__ import annotations

from typing import Any, NoReturn

import structlog

from mig.apply.diff import GpuTarget, diff_gpu
from mig.apply.journal import Journal, load_layout
from mig.apply.result import Progress
from mig.apply.steps import NvmlSteps, describe
from mig.errors import ApplyError, StepFailed
from mig.inventory import Gpu, InventoryReader
from mig.nvml import NVML_FAILURES, Nvml

log = structlog.get_logger("fatia.mig")


_FAILURES: tuple[type[Exception], ...] = (*NVML_FAILURES, ApplyError)


class Restorer:
    """Restores recorded layouts through the same journaled steps as an apply."""

    def __init__(self, nvml: Nvml, *, reader: InventoryReader, journal: Journal, steps: NvmlSteps) -> None:
        self._nvml = nvml
        self._reader = reader
        self._journal = journal
        self._steps = steps

    def roll_back(self, cause: Exception) -> NoReturn:
        """Restore the layouts recorded before the running apply, then raise :class:`ApplyError`."""
        self._journal.rolling_back(describe(cause))
        where = (
            {"gpu": cause.gpu, "uuid": cause.uuid, "step": cause.step, "nvml_error": cause.nvml_error}
            if isinstance(cause, StepFailed)
            else {}
        )
        log.error("mig_apply_failed", error=describe(cause), rolling_back=True, **where)
        try:
            self.restore(self._journal.before)
        except _FAILURES as exc:
            self._journal.end()
            raise ApplyError(
                f"applying the MIG layout failed ({describe(cause)}) and the previous layout "
                f"could not be fully restored: {describe(exc)}; check `fatia status` for what "
                f"is left"
            ) from exc
        self._journal.end()
        raise ApplyError(
            f"applying the MIG layout failed ({describe(cause)}); the previous layout was restored",
            gpu=cause.gpu if isinstance(cause, StepFailed) else None,
        ) from cause

    def recover(self) -> str | None:
        """At start: finish a rollback that a crash interrupted; report an interrupted apply."""
        journal = self._journal.read()
        if journal is None:
            return None
        if journal.get("phase") == "rolling-back":
            with self._journal.locked():
                self._journal.resume(journal)
                try:
                    self.restore(journal["before"])
                except _FAILURES as exc:
                    return (
                        f"could not finish rolling back interrupted MIG apply "
                        f"{journal.get('id')} ({describe(exc)}); reconciling again"
                    )
                finally:
                    self._journal.end()
            return f"finished rolling back interrupted MIG apply {journal.get('id')}"
        steps = journal.get("steps", [])
        last = steps[-1] if steps else None
        where = f" at step {last['op']} on GPU {last['gpu']}" if last else ""
        return f"MIG apply {journal.get('id')} was interrupted{where}; reconciling again"

    def restore(self, before: dict[str, Any]) -> None:
        """Bring every GPU named in ``before`` back to its recorded layout.

        Raises :class:`ApplyError` naming each GPU that could not be restored (lost,
        failing, or a mode change that awaits a reset).
        """
        inventory = self._reader.read()
        # A lost GPU may not tell its UUID any more; the journal also records its index.
        recorded_indices = {entry.get("index") for entry in before.values()}
        problems: list[str] = []
        for gpu in inventory.gpus:
            named = gpu.uuid in before or (not gpu.usable and gpu.index in recorded_indices)
            if not named:
                continue
            if not gpu.usable:
                problems.append(f"{gpu.problem}; its previous layout could not be restored")
                continue
            recorded = before[gpu.uuid]
            target = GpuTarget(gpu.index, gpu.uuid, recorded["mig"], load_layout(recorded["layout"]))
            try:
                problem = self._restore_gpu(gpu, target)
            except NVML_FAILURES as exc:
                problem = (
                    f"GPU {gpu.index} ({gpu.uuid}): restoring its previous layout failed ({describe(exc)})"
                )
            except ApplyError as exc:
                problem = f"GPU {gpu.index} ({gpu.uuid}): restoring its previous layout failed ({exc})"
            if problem:
                problems.append(problem)
        if problems:
            raise ApplyError("; ".join(problems))
        log.info("mig_layout_restored", gpus=sorted(before))

    def _restore_gpu(self, gpu: Gpu, target: GpuTarget) -> str | None:
        """Restore one GPU; a message when its mode change has to wait for a reset."""
        change, steps = diff_gpu(gpu, target), self._steps
        handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        progress = Progress()
        if change.cancel_pending:  # a mode change the failed apply asked for, still pending
            steps.set_mode(handle, gpu, target.mig_enabled, progress)
        for gi in change.destroy:
            steps.destroy(handle, gpu, gi, progress)
        if change.mode_change and not steps.set_mode(handle, gpu, target.mig_enabled, progress):
            return f"GPU {gpu.index} ({gpu.uuid}): its previous MIG mode returns only after a GPU reset"
        for gi in change.complete:
            steps.fill(handle, gpu, gi.id, gi.placement)
        for placement in change.create:
            steps.create(handle, gpu, placement, progress)
        return None
