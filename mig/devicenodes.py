"""Device nodes a container needs for a MIG device (``passDeviceSpecs``).

A MIG device is reached through its parent's ``/dev/nvidia<minor>`` plus two
capability nodes: one for its GPU instance and one for its compute instance.
The driver lists the capability minors in ``/proc/driver/nvidia-caps/mig-minors``
(lines like ``gpu0/gi1/access 12`` and ``gpu0/gi1/ci0/access 13``); node ``N``
is ``/dev/nvidia-caps/nvidia-capN``. Read once per resource build, never per
Allocate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MIG_MINORS = "driver/nvidia-caps/mig-minors"


def read_mig_minors(proc_root: Path) -> dict[str, int]:
    """``capability name -> minor``; empty when the file is absent (no MIG support)."""
    try:
        text = (proc_root / MIG_MINORS).read_text()
    except OSError:
        return {}
    minors = {}
    for line in text.splitlines():
        name, _, minor = line.strip().rpartition(" ")
        if name and minor.isdigit():
            minors[name] = int(minor)
    return minors


def mig_cap_nodes(minors: Mapping[str, int], gpu_minor: int, gi: int, ci: int) -> tuple[str, ...]:
    """The GPU-instance and compute-instance capability nodes of one MIG device."""
    names = (f"gpu{gpu_minor}/gi{gi}/access", f"gpu{gpu_minor}/gi{gi}/ci{ci}/access")
    return tuple(f"/dev/nvidia-caps/nvidia-cap{minors[n]}" for n in names if n in minors)


def write_mig_minors(proc_root: Path, gpus: int) -> None:
    """The file as the driver lays it out, for a simulated node of ``gpus`` GPUs."""
    lines = ["config 1", "monitor 2"]
    minor = 3
    for gpu in range(gpus):
        for gi in range(15):
            lines.append(f"gpu{gpu}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(8):
                lines.append(f"gpu{gpu}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    path = proc_root / MIG_MINORS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
