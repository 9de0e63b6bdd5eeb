"""Config + inventory -> a MIG target for every GPU, and what each would advertise.

Pure: it reads no NVML and changes nothing, so ``fatia plan`` and the agent
share it. Every GPU is planned even when another fails, so a person sees all
the problems at once; each error names the config rule (key path) and the GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from deviceplugin.config.schema import Config, GpuRule
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
    if config.mig_strategy == "single":
        _check_single(plans)
    return plans


def _plan_gpu(gpu: Gpu, config: Config, held: Collection[Placement]) -> GpuPlan:
    if gpu.lost:
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
    # Lost GPUs are not advertised, and GPUs already in error keep their own message;
    # a GPU no rule matches counts as it is now.
    profiles = set()
    for i, plan in enumerate(plans):
        if plan.gpu.lost or not plan.feasible:
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
            if plan.gpu.lost or not plan.feasible:
                continue
            plans[i] = dataclasses.replace(
                plan,
                error=(
                    f"GPU {plan.gpu.index}: migStrategy single needs one MIG profile on every GPU; "
                    f"the config asks for {', '.join(sorted(profiles))} (use migStrategy mixed)"
                ),
            )


def errors(plans: Sequence[GpuPlan]) -> list[str]:
    return [p.error for p in plans if p.error]


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
    """Per GPU index: resource name -> how many devices it would advertise."""
    result: dict[int, dict[str, int]] = {}
    for plan in plans:
        one = dataclasses.replace(inventory, gpus=(planned_gpu(plan.gpu, plan.target),))
        resources = build_resources(one, config)
        result[plan.gpu.index] = {name: len(r.devices) for name, r in resources.items()}
    return result


def layout_of(plan: GpuPlan) -> Layout:
    if plan.target is None:
        return plan.gpu.layout
    return plan.target.layout
