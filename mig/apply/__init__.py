"""Applying MIG layouts: diff, journal, NVML steps, rollback, and the reconciler that
drives them.

- :mod:`mig.apply.diff`: what changes on one GPU (:class:`GpuTarget`, :func:`diff_gpu`)
  and what on it is busy;
- :mod:`mig.apply.journal`: the crash-safe record of an apply, and the per-node lock;
- :mod:`mig.apply.steps`: the NVML steps, each journaled before it is taken;
- :mod:`mig.apply.rollback`: back to the layouts recorded before a failed apply;
- :mod:`mig.apply.reconciler`: :class:`Reconciler`, the orchestration.
"""

from mig.apply.diff import GpuChange, GpuTarget, busy_instances, diff_gpu
from mig.apply.journal import JOURNAL_FILE
from mig.apply.reconciler import Reconciler
from mig.apply.result import ApplyResult

__all__ = [
    "JOURNAL_FILE",
    "ApplyResult",
    "GpuChange",
    "GpuTarget",
    "Reconciler",
    "busy_instances",
    "diff_gpu",
]
