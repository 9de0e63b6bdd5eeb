"""CDI specs for prepared claims: how a container runtime gives a container its device.

A prepared claim returns CDI device ids to the kubelet, which passes them to the runtime
(CRI ``CDIDevices``); the runtime resolves each id in the spec files of ``/var/run/cdi``.
fatia writes one spec per claim, ``fatia.dev-gpu_<claim-uid>.json``, of kind
``fatia.dev/gpu`` (its own vendor and class, so its dynamic devices never collide with the
static ``nvidia.com/gpu`` spec the NVIDIA toolkit may have generated), one device per
allocated device, named ``<claim-uid>-<pool device name>``:
``fatia.dev/gpu=5b7c...-gpu-1-mig-1g-10gb-3``.

Each device's edits: ``NVIDIA_VISIBLE_DEVICES=<GPU or MIG UUID>`` (what the NVIDIA
container toolkit acts on to add the driver's libraries), for a claim with sharing
parameters ``FATIA_SHARING_STRATEGY`` and ``FATIA_TIMESLICE_INTERVAL`` too (what the
workload may read; :mod:`.sharing`), and the device nodes that exist on the host:
``/dev/nvidia<minor>`` of the GPU, the MIG device's GPU- and compute-instance capability
nodes (``/dev/nvidia-caps/nvidia-cap<N>``, minors from
``/proc/driver/nvidia-caps/mig-minors``), and the control nodes. Two fatia devices in one
container each set ``NVIDIA_VISIBLE_DEVICES``; the runtime keeps one, so such a container
sees both devices' nodes but the toolkit is told of one (the device-plugin mode's
``envvar`` caveat, documented in the README).

The file is written atomically and removed at unprepare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mig.devicenodes import mig_cap_nodes
from mig.files import atomic_write

CDI_VERSION = "0.6.0"
CDI_VENDOR = "fatia.dev"
CDI_CLASS = "gpu"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True)
class CdiDevice:
    """One device of a claim's spec."""

    name: str  # the CDI device name, "<claim-uid>-<pool device>"
    uuid: str  # GPU or MIG UUID
    gpu_minor: int
    mig: tuple[int, int] | None = None  # (GPU instance, compute instance)
    env: tuple[str, ...] = ()  # more variables for the workload (the claim's sharing)

    @property
    def id(self) -> str:
        return f"{CDI_KIND}={self.name}"


def cdi_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def claim_spec(
    devices: Sequence[CdiDevice], *, mig_minors: Mapping[str, int], dev_root: Path = Path("/")
) -> dict[str, Any]:
    """The CDI spec of one claim's devices (only device nodes that exist under ``dev_root``)."""

    def present(paths: Sequence[str]) -> list[dict[str, str]]:
        return [{"path": p} for p in paths if (dev_root / p.lstrip("/")).exists()]

    entries = []
    for device in devices:
        nodes = [f"/dev/nvidia{device.gpu_minor}"]
        if device.mig is not None:
            nodes += mig_cap_nodes(mig_minors, device.gpu_minor, *device.mig)
        edits: dict[str, Any] = {"env": [f"NVIDIA_VISIBLE_DEVICES={device.uuid}", *device.env]}
        if found := present([*nodes, *CONTROL_NODES]):
            edits["deviceNodes"] = found
        entries.append({"name": device.name, "containerEdits": edits})
    return {"cdiVersion": CDI_VERSION, "kind": CDI_KIND, "devices": entries}


class CdiWriter:
    """Writes and removes the per-claim spec files in ``cdi_dir``."""

    def __init__(self, cdi_dir: Path, *, dev_root: Path = Path("/")) -> None:
        self.cdi_dir = cdi_dir
        self.dev_root = dev_root

    def path(self, claim_uid: str) -> Path:
        return self.cdi_dir / f"{CDI_VENDOR}-{CDI_CLASS}_{claim_uid}.json"

    def write(self, claim_uid: str, devices: Sequence[CdiDevice], *, mig_minors: Mapping[str, int]) -> Path:
        spec = claim_spec(devices, mig_minors=mig_minors, dev_root=self.dev_root)
        path = self.path(claim_uid)
        atomic_write(path, json.dumps(spec, indent=1))
        return path

    def remove(self, claim_uid: str) -> None:
        self.path(claim_uid).unlink(missing_ok=True)
