"""Which device a piece of NVML evidence makes unhealthy, under the health policy: pure.

A fatal XID or a double-bit ECC error hurts the MIG device NVML attributes it to (GPU and
compute instance ids), else the whole GPU; a lost GPU is the whole GPU. Ignored XIDs, and
everything but a lost GPU while health checking is disabled, hurt nothing. Evidence about
a GPU the inventory does not name hurts nothing either: guessing would mark the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.health.events import Finding, What
from mig.inventory import Inventory


@dataclass(frozen=True)
class Devices:
    """The devices health is about, from the agent's latest inventory."""

    gpus: dict[int, str] = field(default_factory=dict)  # index -> GPU UUID
    mig: dict[tuple[int, int, int], str] = field(default_factory=dict)  # (gpu, gi, ci) -> UUID

    @classmethod
    def of(cls, inventory: Inventory) -> Devices:
        return cls(
            {g.index: g.uuid for g in inventory.gpus if g.uuid},
            {
                (g.index, d.gpu_instance, d.compute_instance): d.uuid
                for g in inventory.gpus
                for d in g.mig_devices
            },
        )

    def all(self) -> frozenset[str]:
        return frozenset(self.gpus.values()) | frozenset(self.mig.values())


@dataclass(frozen=True)
class Verdict:
    uuid: str | None  # the device made unhealthy; None: none
    why: str  # for the log and the Event ("GPU 1: XID 79"); for None, why not


def judge(finding: Finding, policy: HealthPolicy, devices: Devices) -> Verdict:
    index = finding.gpu
    if finding.what is What.XID:
        if not policy.enabled or not policy.is_fatal(finding.xid):
            return Verdict(None, f"XID {finding.xid} ignored by the policy")
        what = f"XID {finding.xid}"
    elif finding.what is What.ECC:
        if not policy.enabled:
            return Verdict(None, "health checking is disabled")
        what = "a double-bit ECC error"
    else:
        what = "lost"
    gpu_uuid = devices.gpus.get(index)
    if gpu_uuid is None:
        return Verdict(None, f"GPU {index} ({what}) is not in the inventory")
    key = (index, finding.gpu_instance, finding.compute_instance)
    if finding.attributed and key in devices.mig:
        return Verdict(devices.mig[key], f"GPU {index}: {what} on MIG device {key[1]}/{key[2]}")
    return Verdict(gpu_uuid, f"GPU {index} is lost" if finding.what is What.LOST else f"GPU {index}: {what}")
