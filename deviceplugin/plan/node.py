"""Config + inventory -> a MIG target for every GPU, and what each would advertise.

Pure: it reads no NVML and changes nothing, so ``fatia plan`` and the agent
share it. Every GPU is planned even when another fails, so a person sees all
the problems at once; each error names the config rule (key path) and the GPU.

The plan is also held to what can be advertised (:func:`_check_device_counts`):
each resource's devices must fit one ListAndWatch message to the kubelet, and the
node's devices the daemon's memory. They are counted, never built, so a config
asking for millions costs nothing to refuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from deviceplugin.config import limits
from deviceplugin.config.schema import Config, GpuRule, MigStrategy
from deviceplugin.plan.resources import build_resources
from mig.apply import GpuTarget
from mig.errors import PlanError
from mig.inventory import ComputeInstance, Gpu, GpuInstance, Inventory
from mig.layout import Layout, Placement
from mig.planner import plan_gpu


@dataclass(frozen=True)
class GpuPlan:
    gpu: Gpu
    rule: GpuRule | None
    target: GpuTarget | None  # None: no rule matches, fatia leaves the GPU as it is
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.error is None


def plan_node(
    inventory: Inventory, config: Config, *, held: Mapping[int, Collection[Placement]] = {}
) -> list[GpuPlan]:
    """A plan per GPU; ``held`` gives, per GPU index, the instances pods are using."""
    plans = [_plan_gpu(gpu, config, held.get(gpu.index, ())) for gpu in inventory.gpus]
    if config.mig_strategy is MigStrategy.SINGLE:
        _check_single(plans)
    _check_device_counts(inventory, plans, config)
    return plans


def _plan_gpu(gpu: Gpu, config: Config, held: Collection[Placement]) -> GpuPlan:
    if not gpu.usable:  # lost or unreadable: not planned, changed or advertised
        return GpuPlan(gpu, None, None)
    rule = config.rule_for(
        index=gpu.index, uuid=gpu.uuid, product=gpu.product, pci_device_id=gpu.pci_device_id
    )
    if rule is None:
        return GpuPlan(gpu, None, None)
    where = f"{rule.path} (GPU {gpu.index}, {gpu.product})"
    if not rule.mig_enabled:
        return GpuPlan(gpu, rule, GpuTarget(gpu.index, gpu.uuid, False))
    if not gpu.mig_capable:
        return GpuPlan(gpu, rule, None, f"{where}: this GPU does not support MIG")
    try:
        layout = plan_gpu(gpu.profiles, rule.desired, existing=gpu.layout, held=held)
    except PlanError as exc:
        return GpuPlan(gpu, rule, None, f"{where}: {exc}")
    return GpuPlan(gpu, rule, GpuTarget(gpu.index, gpu.uuid, True, layout))


def _check_single(plans: list[GpuPlan]) -> None:
    """``migStrategy: single``: every GPU in MIG mode with instances of one profile."""
    # Unusable GPUs are not advertised, and GPUs already in error keep their own message;
    # a GPU no rule matches counts as it is now.
    profiles = set()
    for i, plan in enumerate(plans):
        if not plan.gpu.usable or not plan.feasible:
            continue
        enabled = plan.target.mig_enabled if plan.target else plan.gpu.mig_enabled
        layout = layout_of(plan)
        if not enabled or not layout:
            plans[i] = dataclasses.replace(
                plan,
                error=(
                    f"GPU {plan.gpu.index}: migStrategy single needs every GPU in MIG mode with "
                    f"MIG devices; this one would have none"
                ),
            )
            continue
        profiles |= {p.profile for p in layout}
    if len(profiles) > 1:
        for i, plan in enumerate(plans):
            if not plan.gpu.usable or not plan.feasible:
                continue
            plans[i] = dataclasses.replace(
                plan,
                error=(
                    f"GPU {plan.gpu.index}: migStrategy single needs one MIG profile on every GPU; "
                    f"the config asks for {', '.join(sorted(profiles))} (use migStrategy mixed)"
                ),
            )


@dataclass
class _Count:
    """The devices one resource would have: how many, the longest ID, and whose replicas."""

    devices: int = 0
    id_length: int = 0
    gpus: dict[int, int] = field(default_factory=dict)  # GPU index -> devices
    sources: dict[str, tuple[int, set[int], int]] = field(
        default_factory=dict
    )  # path -> replicas, GPUs, units


def count_devices(inventory: Inventory, plans: Sequence[GpuPlan], config: Config) -> dict[str, _Count]:
    """Per resource name, the devices the planned node would advertise, counted without building them."""
    # The unshared devices come from build_resources itself (names, IDs, strategies);
    # the replica rule below is the one it applies (a test holds the two together).
    unshared = dataclasses.replace(
        config,
        gpus=tuple(dataclasses.replace(r, replicas=None) for r in config.gpus),
        time_slicing=dataclasses.replace(config.time_slicing, resources=()),
    )
    counts: dict[str, _Count] = {}
    for plan in plans:
        gpu = planned_gpu(plan.gpu, plan.target)
        one = dataclasses.replace(inventory, gpus=(gpu,))
        for base, resource in build_resources(one, unshared).items():
            shared = next((r for r in config.time_slicing.resources if r.name == base), None)
            if shared is not None:
                replicas, source = shared.replicas, f"{shared.path}.replicas"
            elif plan.rule is not None and plan.rule.replicas:
                replicas, source = plan.rule.replicas, f"{plan.rule.path}.replicas"
            else:
                replicas, source = 1, ""
            name = f"{base}.shared" if replicas > 1 and config.time_slicing.rename_by_default else base
            count = counts.setdefault(name, _Count())
            for device in resource.devices:
                length = len(device.id.encode())
                if device.id.startswith("MIG-planned-"):
                    length = max(length, limits.PLANNED_ID_LENGTH)
                if replicas > 1:
                    length += len(f"::{replicas - 1}")
                count.id_length = max(count.id_length, length)
            units = len(resource.devices)
            count.devices += units * replicas
            count.gpus[gpu.index] = count.gpus.get(gpu.index, 0) + units * replicas
            if source:
                _, gpus, seen = count.sources.get(source, (replicas, set(), 0))
                count.sources[source] = (replicas, gpus | {gpu.index}, seen + units)
    return counts


def _check_device_counts(inventory: Inventory, plans: list[GpuPlan], config: Config) -> None:
    """No resource with more devices than the kubelet takes in one message; the node within bounds."""
    counts = count_devices(inventory, plans, config)
    for name, count in sorted(counts.items()):
        most = limits.max_listed_devices(count.id_length)
        if count.devices > most:
            _fail(
                plans,
                count.gpus,
                f"{_why(count)} is {count.devices} devices of {name}; the kubelet accepts at most "
                f"\N{ALMOST EQUAL TO} {most} for this resource (a 4 MiB device list)",
            )
    total = sum(c.devices for c in counts.values())
    if total > limits.MAX_NODE_DEVICES:
        every: dict[int, int] = {}
        for count in counts.values():
            every.update(count.gpus)
        paths = sorted({path for c in counts.values() for path in c.sources})
        _fail(
            plans,
            every,
            f"{', '.join(paths) or 'the config'}: {total} devices on this node in all; fatia advertises "
            f"at most {limits.MAX_NODE_DEVICES}",
        )


def _why(count: _Count) -> str:
    """``gpus[0].replicas: 100000 replicas on 3 GPUs``, for each source of replicas."""
    if not count.sources:
        return "this node"
    parts = []
    for path, (replicas, gpus, units) in sorted(count.sources.items()):
        on = f"{len(gpus)} GPU" + ("s" if len(gpus) != 1 else "")
        parts.append(
            f"{path}: {replicas} replicas on {on}"
            if units == len(gpus)
            else f"{path}: {replicas} replicas of {units} devices on {on}"
        )
    return " and ".join(parts)


def _fail(plans: list[GpuPlan], gpus: Mapping[int, int], message: str) -> None:
    """Put a node-wide error on every GPU it concerns (``errors`` reports it once)."""
    for i, plan in enumerate(plans):
        if plan.gpu.index in gpus and plan.feasible:
            plans[i] = dataclasses.replace(plan, error=message)


def errors(plans: Sequence[GpuPlan]) -> list[str]:
    """Every distinct error, in GPU order."""
    return list(dict.fromkeys(p.error for p in plans if p.error))


def targets(plans: Sequence[GpuPlan]) -> list[GpuTarget]:
    return [p.target for p in plans if p.target is not None]


def planned_gpu(gpu: Gpu, target: GpuTarget | None) -> Gpu:
    """The GPU as it will be once ``target`` is applied (placeholder UUIDs for new devices)."""
    if target is None:
        return gpu
    if not target.mig_enabled:
        return dataclasses.replace(gpu, mig_enabled=False, mig_pending=False, gpu_instances=())
    existing = {gi.placement: gi for gi in gpu.gpu_instances if gi.complete}
    instances = []
    for n, placement in enumerate(target.layout):
        kept = existing.get(placement)
        profile = gpu.profile(placement.profile)
        slices = profile.slices if profile else 1
        instances.append(
            kept
            or GpuInstance(
                id=100 + n,
                profile=placement.profile,
                placement=placement,
                slices=slices,
                compute_instances=(ComputeInstance(0, f"MIG-planned-{gpu.index}-{n}", slices),),
            )
        )
    return dataclasses.replace(gpu, mig_enabled=True, mig_pending=True, gpu_instances=tuple(instances))


def planned_resources(
    inventory: Inventory, plans: Sequence[GpuPlan], config: Config
) -> dict[int, dict[str, int]]:
    """Per GPU index: resource name -> how many devices it would advertise (counted, not built)."""
    result: dict[int, dict[str, int]] = {plan.gpu.index: {} for plan in plans}
    for name, count in count_devices(inventory, plans, config).items():
        for index, devices in count.gpus.items():
            result[index][name] = devices
    return result


def layout_of(plan: GpuPlan) -> Layout:
    if plan.target is None:
        return plan.gpu.layout
    return plan.target.layout
