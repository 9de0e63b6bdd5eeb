"""The node's config read as a DRA *pool*: what each GPU offers to the scheduler.

In DRA mode there is no layout to apply: the per-node ConfigMap (same schema, same strict
parser) says which GPUs are offered and how, and the scheduler picks placements on demand.
Each ``gpus`` rule means, for the GPUs it matches (first match wins, as in device-plugin
mode):

- ``mig-enabled: false``: the GPU is offered whole (one device), with MIG off;
- ``mig-enabled: true``: the GPU is offered as MIG partitions. ``mig-devices`` names the
  profiles allowed, and each count is the most instances of that profile the GPU may hold
  at once (a count of 0 leaves the profile out); without ``mig-devices`` every profile the
  GPU has is allowed, each up to its hardware limit.

A GPU no rule matches is offered as it is: whole if MIG is off, not at all if MIG is on
(its instances are someone else's and are left alone). Time-slicing replicas do not apply
(sharing is asked for per claim, see :mod:`deviceplugin.dra.sharing`): a rule or a
``sharing.timeSlicing`` entry that sets them is an error naming its key path, and so is a
profile the GPU does not have. One GPU's error costs that GPU only.

Pure: config and inventory in, offers out.
"""

from __future__ import annotations

from dataclasses import dataclass

from deviceplugin.config.schema import Config, GpuRule
from mig.inventory import Gpu, Inventory


@dataclass(frozen=True)
class GpuOffer:
    """What one GPU offers: itself whole, or MIG partitions of ``profiles``."""

    index: int
    uuid: str
    whole: bool
    profiles: tuple[str, ...] = ()  # MIG profiles offered, in NVML's order
    caps: tuple[tuple[str, int], ...] = ()  # profile -> at most this many at once (config)
    rule: str = ""  # the config rule's path, "" when no rule matched

    def cap(self, profile: str) -> int | None:
        return next((count for name, count in self.caps if name == profile), None)


@dataclass(frozen=True)
class PoolPlan:
    offers: tuple[GpuOffer, ...]
    errors: tuple[str, ...] = ()

    def offer(self, index: int) -> GpuOffer | None:
        return next((o for o in self.offers if o.index == index), None)


def plan_pool(inventory: Inventory, config: Config) -> PoolPlan:
    """An offer for every usable GPU that offers something; errors per GPU."""
    offers: list[GpuOffer] = []
    errors: list[str] = []
    if config.time_slicing.resources:
        errors.append(
            f"{config.time_slicing.resources[0].path or 'sharing.timeSlicing.resources'}: time-slicing "
            "replicas do not apply in DRA mode; sharing is asked for per claim (gpu.fatia.dev parameters)"
        )
    for gpu in inventory.gpus:
        if not gpu.usable:
            continue
        rule = config.rule_for(
            index=gpu.index, uuid=gpu.uuid, product=gpu.product, pci_device_id=gpu.pci_device_id
        )
        if rule is None:
            if not gpu.mig_enabled:
                offers.append(GpuOffer(gpu.index, gpu.uuid, whole=True))
            continue
        offer, error = _offer(gpu, rule)
        if error is not None:
            errors.append(error)
        elif offer is not None:
            offers.append(offer)
    return PoolPlan(tuple(offers), tuple(errors))


def _offer(gpu: Gpu, rule: GpuRule) -> tuple[GpuOffer | None, str | None]:
    where = f"GPU {gpu.index}, {gpu.product}"
    if rule.replicas is not None and rule.replicas > 1:
        return None, (
            f"{rule.path}.replicas ({where}): time-slicing replicas do not apply in DRA mode; sharing "
            "is asked for per claim (gpu.fatia.dev parameters)"
        )
    if not rule.mig_enabled:
        return GpuOffer(gpu.index, gpu.uuid, whole=True, rule=rule.path), None
    if not gpu.mig_capable:
        return None, f"{rule.path} ({where}): this GPU does not support MIG"
    known = [p.name for p in gpu.profiles]
    if not rule.mig_devices:
        return GpuOffer(gpu.index, gpu.uuid, whole=False, profiles=tuple(known), rule=rule.path), None
    for name, _ in rule.mig_devices:
        if name not in known:
            return None, (
                f"{rule.path}.mig-devices.{name} ({where}): no such profile on this GPU; "
                f"it has {', '.join(known) or 'none'}"
            )
    wanted = {name: count for name, count in rule.mig_devices if count > 0}
    profiles = tuple(p for p in known if p in wanted)
    caps = tuple((p.name, min(wanted[p.name], p.max_count)) for p in gpu.profiles if p.name in wanted)
    return GpuOffer(gpu.index, gpu.uuid, whole=False, profiles=profiles, caps=caps, rule=rule.path), None
