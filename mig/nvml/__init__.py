"""The one seam between fatia and the GPUs.

Everything that talks to a GPU receives an ``nvml`` object shaped like the
``pynvml`` module (from the ``nvidia-ml-py`` package): pynvml's function names,
arguments, ctypes structs and ``NVMLError_*`` exceptions. Production passes the
real module; tests, the demo and ``fatia plan`` pass the simulator.

Only this package (and the simulator, which reuses pynvml's structs and exceptions)
imports ``pynvml``: the constants, struct types and exception classes the rest of fatia
needs are re-exported here from ``pynvml`` itself, which imports without a driver. The
functions are reached only through the :class:`Nvml` object a component is given.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pynvml
from pynvml import (
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_IN_USE,
    NVML_P2P_CAPS_INDEX_NVLINK,
    NVML_P2P_STATUS_OK,
    NVML_SUCCESS,
    NVML_TOPOLOGY_HOSTBRIDGE,
    NVML_TOPOLOGY_INTERNAL,
    NVML_TOPOLOGY_MULTIPLE,
    NVML_TOPOLOGY_NODE,
    NVML_TOPOLOGY_SINGLE,
    NVML_TOPOLOGY_SYSTEM,
    NVMLError,
    NVMLError_FunctionNotFound,
    NVMLError_GpuIsLost,
    NVMLError_InvalidArgument,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Timeout,
    NVMLLibraryMismatchError,
    c_nvmlComputeInstance_t,
    c_nvmlGpuInstance_t,
    c_nvmlGpuInstancePlacement_t,
    nvmlEventTypeDoubleBitEccError,
    nvmlEventTypeXidCriticalError,
)

from mig.errors import NvmlError
from mig.nvml.protocol import Handle, Nvml, Struct

# What a call into the library can raise: an NVML error code, or (pynvml only) a versioned
# symbol the installed driver lacks.
NVML_FAILURES: tuple[type[Exception], ...] = (NVMLError, NVMLLibraryMismatchError)

__all__ = [
    "NVML_DEVICE_MIG_DISABLE",
    "NVML_DEVICE_MIG_ENABLE",
    "NVML_ERROR_IN_USE",
    "NVML_FAILURES",
    "NVML_P2P_CAPS_INDEX_NVLINK",
    "NVML_P2P_STATUS_OK",
    "NVML_SUCCESS",
    "NVML_TOPOLOGY_HOSTBRIDGE",
    "NVML_TOPOLOGY_INTERNAL",
    "NVML_TOPOLOGY_MULTIPLE",
    "NVML_TOPOLOGY_NODE",
    "NVML_TOPOLOGY_SINGLE",
    "NVML_TOPOLOGY_SYSTEM",
    "Handle",
    "NVMLError",
    "NVMLError_FunctionNotFound",
    "NVMLError_GpuIsLost",
    "NVMLError_InvalidArgument",
    "NVMLError_NotFound",
    "NVMLError_NotSupported",
    "NVMLError_Timeout",
    "NVMLLibraryMismatchError",
    "Nvml",
    "Struct",
    "c_nvmlComputeInstance_t",
    "c_nvmlGpuInstancePlacement_t",
    "c_nvmlGpuInstance_t",
    "error_name",
    "nvmlEventTypeDoubleBitEccError",
    "nvmlEventTypeXidCriticalError",
    "open_nvml",
]


def error_name(exc: BaseException) -> str:
    """``NVML_ERROR_NOT_SUPPORTED (Not Supported)`` for an NVML error; the text otherwise."""
    code = getattr(exc, "value", None)
    if isinstance(exc, NVMLError) and isinstance(code, int):
        name = _error_names().get(code)
        if name is not None:
            return f"{name} ({exc})"
    if isinstance(exc, NVMLLibraryMismatchError):
        return f"NVML_ERROR_FUNCTION_NOT_FOUND ({exc})"
    return str(exc)


def open_nvml(spec: str, *, state_dir: Path, node_name: str) -> Nvml:
    """Resolve ``--nvml real|sim:SPEC`` and initialise NVML.

    Raises :class:`NvmlError` with the reason when NVML cannot be initialised.
    """
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
    except NVML_FAILURES as exc:
        raise NvmlError(f"cannot initialise NVML ({spec}): {exc}") from exc
    return nvml


@functools.cache
def _error_names() -> dict[int, str]:
    """Code -> the shortest of pynvml's ``NVML_ERROR_*`` names for it (some have aliases),
    read once: formatting an error must not scan the module (inventory reads format many)."""
    names: dict[int, str] = {}
    for name in sorted((n for n in dir(pynvml) if n.startswith("NVML_ERROR_")), key=len):
        code = getattr(pynvml, name)
        if isinstance(code, int):
            names.setdefault(code, name)
    return names
