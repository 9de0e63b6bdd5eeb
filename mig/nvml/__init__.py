"""The one seam between fatia and the GPUs.

Everything that talks to a GPU receives an ``nvml`` object shaped like the
``pynvml`` module (from the ``nvidia-ml-py`` package): pynvml's function names,
arguments, ctypes structs and ``NVMLError_*`` exceptions. Production passes the
real module; tests, the demo and ``fatia plan`` pass the simulator. Constants
and struct types are always taken from ``pynvml`` itself, which imports without
a driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mig.errors import NvmlError

# The pynvml module or a mig.sim.nvml.SimNvml; typed loosely on purpose: it is
# "whatever has pynvml's functions".
Nvml = Any


def open_nvml(spec: str, *, state_dir: Path, node_name: str) -> Nvml:
    """Resolve ``--nvml real|sim:SPEC`` and initialise NVML.

    Raises :class:`NvmlError` with the reason when NVML cannot be initialised.
    """
    import pynvml

    if spec == "real":
        nvml: Nvml = pynvml
    elif spec.startswith("sim:"):
        from mig.sim.nvml import open_sim
        from mig.sim.state import parse_sim_spec

        nvml = open_sim(parse_sim_spec(spec[4:]), state_dir=state_dir, node=node_name)
    else:
        raise NvmlError(f"--nvml must be 'real' or 'sim:MODEL[:COUNT],...', not {spec!r}")
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlError(f"cannot initialise NVML ({spec}): {exc}") from exc
    return nvml
