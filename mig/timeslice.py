"""A whole GPU's time-slice interval: how long one process's work runs before the GPU
switches to another's.

Processes that share a GPU without MPS take turns on it; the driver's compute policy sets
the length of a turn. NVML has no public call for it: ``nvidia-smi compute-policy -i
<GPU-UUID> --set-timeslice <N>`` sets it (what NVIDIA's DRA driver runs too), with
``N`` one of :data:`INTERVALS`' positions (0 Default, 1 Short, 2 Medium, 3 Long). It
applies to a whole GPU, not to a MIG device.

So it sits behind its own small seam, :class:`Timeslicer`, next to the NVML one:
:class:`NvidiaSmi` on a real node, :class:`mig.sim.nvml.SimControl` (which records the
interval in the simulated GPU's state) on a simulated one; :func:`timeslicer_for` picks
the one that goes with an NVML object. Without ``nvidia-smi`` on ``PATH`` only Default can
be "set" (nothing is done); any other interval fails with a message that says so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from typing import Protocol

from mig.errors import FatiaError
from mig.nvml import Nvml

INTERVALS = ("Default", "Short", "Medium", "Long")  # nvidia-smi --set-timeslice 0..3
DEFAULT = 0
NVIDIA_SMI_TIMEOUT_S = 30


class TimesliceError(FatiaError):
    """The interval could not be set; the message says on which GPU and why."""


class Timeslicer(Protocol):
    def set_timeslice(self, gpu_uuid: str, interval: int) -> None:
        """Set the GPU's interval (a position of :data:`INTERVALS`); raises TimesliceError."""


class NvidiaSmi:
    """Sets the interval with ``nvidia-smi compute-policy``."""

    def __init__(
        self,
        *,
        which: Callable[[str], str | None] = shutil.which,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self._which = which
        self._run = run

    def set_timeslice(self, gpu_uuid: str, interval: int) -> None:
        name = INTERVALS[interval]
        tool = self._which("nvidia-smi")
        if tool is None:
            if interval == DEFAULT:
                return  # nothing fatia could have changed without it
            raise TimesliceError(
                f"GPU {gpu_uuid}: the time-slice interval {name} needs nvidia-smi, which is not on PATH "
                "(NVML has no call for it)"
            )
        argv = [tool, "compute-policy", "-i", gpu_uuid, "--set-timeslice", str(interval)]
        try:
            done = self._run(argv, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TimesliceError(
                f"GPU {gpu_uuid}: setting the time-slice interval {name} failed: {exc}"
            ) from exc
        if done.returncode != 0:
            output = " ".join((done.stdout + done.stderr).split())[:300]
            raise TimesliceError(
                f"GPU {gpu_uuid}: nvidia-smi compute-policy --set-timeslice {interval} ({name}) failed "
                f"(exit {done.returncode}): {output}"
            )


def timeslicer_for(nvml: Nvml) -> Timeslicer:
    """The simulator's own for a simulated node; nvidia-smi for the real one."""
    from mig.sim.nvml import SimControl, SimNvml

    if isinstance(nvml, SimNvml):
        return SimControl(nvml.state_path.parent)
    return NvidiaSmi()
