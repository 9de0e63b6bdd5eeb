"""What each published device says about itself: the attributes claims select devices by.

A whole GPU: ``type: gpu``, ``uuid``, ``pciBusID``; a MIG device: ``type: mig``,
``parentUUID``, ``profile``, ``placementStart``, ``placementSize`` and its engine counts
(``computeSlices``, ``multiprocessors``, ``copyEngines``, ``decoders``, ``encoders``,
``jpegEngines``, ``ofaEngines``). Both: ``index``, ``productName``, ``migCapable``, and the
node's ``driverVersion`` and ``cudaDriverVersion`` as semantic versions. Capacity and
counters are :mod:`.devices`'.

Pure: plain dicts in the API's JSON form (``{"int": 3}``, ``{"version": "12.4.0"}``).
"""

from __future__ import annotations

from typing import Any

from mig.catalog import GpuInstanceProfile
from mig.inventory import Gpu
from mig.layout import Placement

Json = dict[str, Any]


def semver(text: str) -> str | None:
    """A driver's version as a semantic version: ``535.104.05`` -> ``535.104.5``."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    numbers = [str(int(p)) for p in parts] + ["0"] * (3 - len(parts))
    return ".".join(numbers)


def cuda_semver(version: int | None) -> str | None:
    """NVML's CUDA driver version (``12040``) as ``12.4.0``."""
    if version is None or version <= 0:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}.0"


def node_attributes(driver_version: str, cuda_version: int | None) -> Json:
    """What every device of the node has: the versions that can be read."""
    common: Json = {}
    if (driver := semver(driver_version)) is not None:
        common["driverVersion"] = {"version": driver}
    if (cuda := cuda_semver(cuda_version)) is not None:
        common["cudaDriverVersion"] = {"version": cuda}
    return common


def whole_gpu_attributes(gpu: Gpu, common: Json) -> Json:
    attributes = {"type": {"string": "gpu"}, "uuid": {"string": gpu.uuid}, **_gpu_attributes(gpu, common)}
    if gpu.pci_bus_id:
        attributes["pciBusID"] = {"string": gpu.pci_bus_id[:64]}
    return attributes


def mig_attributes(gpu: Gpu, profile: GpuInstanceProfile, placement: Placement, common: Json) -> Json:
    return {
        "type": {"string": "mig"},
        "parentUUID": {"string": gpu.uuid},
        "profile": {"string": profile.name},
        "placementStart": {"int": placement.start},
        "placementSize": {"int": placement.size},
        "computeSlices": {"int": profile.slices},
        "multiprocessors": {"int": profile.multiprocessors},
        "copyEngines": {"int": profile.copy_engines},
        "decoders": {"int": profile.decoders},
        "encoders": {"int": profile.encoders},
        "jpegEngines": {"int": profile.jpegs},
        "ofaEngines": {"int": profile.ofas},
        **_gpu_attributes(gpu, common),
    }


def _gpu_attributes(gpu: Gpu, common: Json) -> Json:
    return {
        "index": {"int": gpu.index},
        "productName": {"string": gpu.product[:64]},
        "migCapable": {"bool": gpu.mig_capable},
        **common,
    }
