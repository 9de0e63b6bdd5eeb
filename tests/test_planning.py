"""Specification of node planning (deviceplugin.plan.node): config + inventory -> per-GPU plans."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from deviceplugin.config.schema import Config, parse_config
from deviceplugin.plan.node import GpuPlan, errors, plan_node, planned_resources, targets
from mig.apply import GpuTarget, Reconciler
from mig.inventory import Inventory, InventoryReader
from mig.layout import Layout, Placement, profile_counts
from mig.nvml import open_nvml

A100 = "NVIDIA A100-SXM4-40GB"
H100 = "NVIDIA H100 80GB HBM3"


def node(tmp_path: Path, spec: str = "a100-40gb:4") -> Inventory:
    return InventoryReader(open_nvml(f"sim:{spec}", state_dir=tmp_path, node_name="n")).read()


def config(body: str) -> Config:
    return parse_config("version: v1\n" + body)


def plans_for(
    tmp_path: Path, spec: str, body: str, *, held: Mapping[int, Collection[Placement]] | None = None
) -> list[GpuPlan]:
    """``plan_node`` on a simulated node ``spec`` for the config ``version: v1`` + ``body``."""
    return plan_node(node(tmp_path, spec), config(body), held=held or {})


def layout(plan: GpuPlan) -> Layout:
    assert plan.target is not None, plan.error
    return plan.target.layout


def counts(plan: GpuPlan) -> dict[str, int]:
    return profile_counts(layout(plan))


def test_gpus_no_rule_matches_are_left_alone(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "a100-40gb:4", "gpus: [{devices: [1], replicas: 2}]")
    assert [p.target is None for p in plans] == [True, False, True, True]
    assert [p.rule is None for p in plans] == [True, False, True, True]
    assert all(p.feasible for p in plans)


def test_a_config_without_rules_leaves_every_gpu_alone(tmp_path: Path) -> None:
    plans = plan_node(node(tmp_path), parse_config(""))
    assert targets(plans) == []
    assert errors(plans) == []


def test_a_rule_without_mig_targets_mig_off(tmp_path: Path) -> None:
    inventory = node(tmp_path, "a100-40gb:1")
    (plan,) = plan_node(inventory, config("gpus: [{devices: all, mig-enabled: false}]"))
    assert plan.target == GpuTarget(0, inventory.gpus[0].uuid, False)


def test_the_first_matching_rule_wins(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path,
        "a100-40gb:4",
        "gpus:\n- {devices: [2], mig-devices: {7g.40gb: 1}}\n- {devices: all, mig-devices: {1g.5gb: 7}}\n",
    )
    assert [p.rule.path for p in plans if p.rule] == ["gpus[1]", "gpus[1]", "gpus[0]", "gpus[1]"]
    assert counts(plans[2]) == {"7g.40gb": 1}
    assert counts(plans[0]) == {"1g.5gb": 7}


def test_a_product_glob_picks_gpus_by_model(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path,
        "a100-40gb:1,h100-80gb:1",
        "gpus:\n"
        "- {product: '*H100*', mig-devices: {3g.40gb: 2}}\n"
        "- {product: '*a100*', mig-devices: {3g.20gb: 2}}\n",
    )
    assert [p.rule.path for p in plans if p.rule] == ["gpus[1]", "gpus[0]"]
    assert counts(plans[0]) == {"3g.20gb": 2}
    assert counts(plans[1]) == {"3g.40gb": 2}


def test_a_product_glob_that_matches_nothing_leaves_the_gpus_alone(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "a100-40gb:2", "gpus: [{product: '*H200*', mig-devices: {1g.18gb: 7}}]")
    assert targets(plans) == []


def test_a_uuid_in_devices_picks_that_gpu(tmp_path: Path) -> None:
    inventory = node(tmp_path)
    uuid = inventory.gpus[3].uuid
    plans = plan_node(inventory, config(f"gpus: [{{devices: ['{uuid}'], replicas: 2}}]"))
    assert [p.gpu.index for p in plans if p.target] == [3]


def test_a_mig_rule_gives_explicit_placements(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path, "a100-40gb:1", "gpus: [{devices: all, mig-devices: {1g.5gb: 2, 2g.10gb: 1, 3g.20gb: 1}}]"
    )
    target = plans[0].target
    assert target is not None and target.mig_enabled
    assert target.layout == (
        Placement(0, 2, "2g.10gb"),
        Placement(2, 1, "1g.5gb"),
        Placement(3, 1, "1g.5gb"),
        Placement(4, 4, "3g.20gb"),
    )


def test_the_balanced_example_puts_3g_20gb_at_slice_4_on_every_a100(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "examples/mig-all-balanced.yaml").read_text()
    plans = plan_node(node(tmp_path), parse_config(text))
    for plan in plans:
        assert [p.start for p in layout(plan) if p.profile == "3g.20gb"] == [4]


def test_an_unknown_profile_names_the_rule_the_gpu_and_its_profiles(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "a100-40gb:1", "gpus: [{devices: all, mig-devices: {1g.6gb: 1}}]")
    (plan,) = plans
    assert not plan.feasible
    assert plan.target is None
    assert plan.error is not None
    assert plan.error.startswith(f"gpus[0] (GPU 0, {A100}): unknown profile '1g.6gb'")
    assert "1g.5gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb, 1g.5gb+me, 1g.10gb" in plan.error


def test_a_profile_of_another_model_is_unknown_on_this_gpu(tmp_path: Path) -> None:
    (plan,) = plans_for(tmp_path, "h100-80gb:1", "gpus: [{mig-devices: {3g.20gb: 1}}]")
    assert plan.error is not None
    assert plan.error.startswith(f"gpus[0] (GPU 0, {H100}): unknown profile '3g.20gb'")
    assert "3g.40gb" in plan.error


def test_an_infeasible_layout_names_the_rule_and_the_gpu(tmp_path: Path) -> None:
    (plan,) = plans_for(
        tmp_path,
        "a100-40gb:1",
        "gpus:\n- {devices: [5], replicas: 2}\n"
        "- {devices: all, mig-devices: {4g.20gb: 1, 3g.20gb: 1, 1g.5gb: 1}}",
    )
    assert plan.error is not None
    assert plan.error.startswith(f"gpus[1] (GPU 0, {A100}): ")
    assert plan.target is None


def test_too_many_instances_name_the_cap(tmp_path: Path) -> None:
    (plan,) = plans_for(tmp_path, "a100-40gb:1", "gpus: [{mig-devices: {3g.20gb: 3}}]")
    assert plan.error == (
        f"gpus[0] (GPU 0, {A100}): at most 2 instances of 3g.20gb fit on this GPU, 3 requested"
    )


def test_one_gpus_error_does_not_stop_the_others(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "a100-40gb:1,h100-80gb:1,a100-40gb:1", "gpus: [{mig-devices: {1g.5gb: 7}}]")
    assert [p.feasible for p in plans] == [True, False, True]
    assert counts(plans[0]) == counts(plans[2]) == {"1g.5gb": 7}
    assert errors(plans) == [plans[1].error]


def test_every_failing_gpu_is_reported(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "h100-80gb:3", "gpus: [{mig-devices: {1g.5gb: 1}}]")
    assert [e.split(":")[0] for e in errors(plans)] == [f"gpus[0] (GPU {i}, {H100})" for i in range(3)]


def test_a_lost_gpu_is_not_planned(tmp_path: Path) -> None:
    inventory = node(tmp_path, "a100-40gb:2")
    lost = dataclasses.replace(inventory.gpus[1], lost=True)
    inventory = dataclasses.replace(inventory, gpus=(inventory.gpus[0], lost))
    plans = plan_node(inventory, config("gpus: [{mig-devices: {1g.5gb: 7}}]"))
    assert plans[1].target is None and plans[1].feasible


def test_a_mig_rule_on_a_gpu_without_mig_is_an_error(tmp_path: Path) -> None:
    inventory = node(tmp_path, "a100-40gb:1")
    plain = dataclasses.replace(inventory.gpus[0], mig_capable=False, profiles=())
    inventory = dataclasses.replace(inventory, gpus=(plain,))
    (plan,) = plan_node(inventory, config("gpus: [{mig-devices: {1g.5gb: 7}}]"))
    assert plan.error == f"gpus[0] (GPU 0, {A100}): this GPU does not support MIG"


def test_single_strategy_rejects_mixed_profiles(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path, "a100-40gb:2", "migStrategy: single\ngpus: [{mig-devices: {4g.20gb: 1, 3g.20gb: 1}}]"
    )
    assert [p.feasible for p in plans] == [False, False]
    assert all("migStrategy single needs one MIG profile" in (p.error or "") for p in plans)
    assert "3g.20gb, 4g.20gb" in (plans[0].error or "")


def test_single_strategy_rejects_different_profiles_on_different_gpus(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path,
        "a100-40gb:2",
        "migStrategy: single\ngpus:\n- {devices: [0], mig-devices: {1g.5gb: 7}}\n"
        "- {devices: [1], mig-devices: {3g.20gb: 2}}",
    )
    assert not any(p.feasible for p in plans)


def test_single_strategy_accepts_one_profile_everywhere(tmp_path: Path) -> None:
    plans = plans_for(tmp_path, "a100-40gb:2", "migStrategy: single\ngpus: [{mig-devices: {1g.5gb: 7}}]")
    assert errors(plans) == []


def test_single_strategy_needs_mig_devices_on_every_gpu(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path, "a100-40gb:2", "migStrategy: single\ngpus: [{devices: [0], mig-devices: {1g.5gb: 7}}]"
    )
    assert plans[0].feasible
    assert "GPU 1: migStrategy single needs every GPU in MIG mode" in (plans[1].error or "")


def test_single_strategy_ignores_a_lost_gpu(tmp_path: Path) -> None:
    inventory = node(tmp_path, "a100-40gb:2")
    lost = dataclasses.replace(inventory.gpus[1], lost=True)
    inventory = dataclasses.replace(inventory, gpus=(inventory.gpus[0], lost))
    plans = plan_node(inventory, config("migStrategy: single\ngpus: [{mig-devices: {1g.5gb: 7}}]"))
    assert errors(plans) == []


def test_single_strategy_reports_mixed_profiles_even_when_another_gpu_fails(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path,
        "a100-40gb:2,h100-80gb:1",
        "migStrategy: single\ngpus:\n- {devices: [0], mig-devices: {1g.5gb: 7}}\n"
        "- {devices: [1], mig-devices: {3g.20gb: 2}}\n- {devices: [2], mig-devices: {1g.5gb: 1}}",
    )
    assert "unknown profile" in (plans[2].error or "")
    assert "migStrategy single needs one MIG profile" in (plans[0].error or "")
    assert "migStrategy single needs one MIG profile" in (plans[1].error or "")


def test_held_placements_are_kept(tmp_path: Path) -> None:
    (plan,) = plans_for(
        tmp_path, "a100-40gb:1", "gpus: [{mig-devices: {1g.5gb: 1}}]", held={0: [Placement(5, 1, "1g.5gb")]}
    )
    assert layout(plan) == (Placement(5, 1, "1g.5gb"),)


def test_held_placements_of_another_gpu_do_not_apply(tmp_path: Path) -> None:
    plans = plans_for(
        tmp_path, "a100-40gb:2", "gpus: [{mig-devices: {1g.5gb: 1}}]", held={1: [Placement(5, 1, "1g.5gb")]}
    )
    assert layout(plans[0]) == (Placement(0, 1, "1g.5gb"),)
    assert layout(plans[1]) == (Placement(5, 1, "1g.5gb"),)


def test_existing_instances_are_kept_where_they_are(tmp_path: Path) -> None:
    nvml = open_nvml("sim:h100-80gb:1", state_dir=tmp_path, node_name="n")
    inventory = InventoryReader(nvml).read()
    gpu = inventory.gpus[0]
    existing = (Placement(2, 2, "2g.20gb"), Placement(6, 1, "1g.10gb"))
    assert Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(0, gpu.uuid, True, existing)]).done
    inventory = InventoryReader(nvml).read()
    (plan,) = plan_node(inventory, config("gpus: [{mig-devices: {2g.20gb: 1, 1g.10gb: 2}}]"))
    assert set(existing) <= set(layout(plan))


# --- planned_resources ----------------------------------------------------------------------


def planned(inventory: Inventory, cfg: Config) -> dict[int, dict[str, int]]:
    return planned_resources(inventory, plan_node(inventory, cfg), cfg)


# (simulated node, config after version: v1, what each GPU will offer)
PLANNED_RESOURCES = [
    pytest.param(
        "a100-40gb:1,h100-80gb:1",
        "gpus: [{product: '*A100*', mig-devices: {1g.5gb: 3, 2g.10gb: 2}}]",
        {0: {"nvidia.com/mig-1g.5gb": 3, "nvidia.com/mig-2g.10gb": 2}, 1: {"nvidia.com/gpu": 1}},
        id="MIG devices counted by profile",
    ),
    pytest.param(
        "a100-40gb:1",
        "gpus: [{mig-devices: {1g.5gb+me: 1, 1g.5gb: 2}}]",
        {0: {"nvidia.com/mig-1g.5gb.me": 1, "nvidia.com/mig-1g.5gb": 2}},
        id="media-extension profiles named with a dot",
    ),
    pytest.param(
        "a100-40gb:2",
        "gpus:\n- {devices: [0], replicas: 4}\n- {devices: [1], mig-devices: {3g.20gb: 2}, replicas: 3}",
        {0: {"nvidia.com/gpu": 4}, 1: {"nvidia.com/mig-3g.20gb": 6}},
        id="multiplied by the rule's replicas",
    ),
    pytest.param(
        "a100-40gb:1",
        "gpus: [{mig-devices: {1g.5gb: 2, 2g.10gb: 1}, replicas: 2}]\n"
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.5gb, replicas: 5}]}}",
        {0: {"nvidia.com/mig-1g.5gb": 10, "nvidia.com/mig-2g.10gb": 2}},
        id="the per-resource replicas first",
    ),
    pytest.param(
        "a100-40gb:1",
        "gpus: [{mig-devices: {1g.5gb: 2, 2g.10gb: 1}}]\n"
        "sharing: {timeSlicing: {renameByDefault: true,"
        " resources: [{name: nvidia.com/mig-1g.5gb, replicas: 4}]}}",
        {0: {"nvidia.com/mig-1g.5gb.shared": 8, "nvidia.com/mig-2g.10gb": 1}},
        id="replicated resources renamed to shared",
    ),
    pytest.param(
        "a100-40gb:2",
        "migStrategy: single\ngpus: [{mig-devices: {1g.5gb: 7}}]",
        {0: {"nvidia.com/gpu": 7}, 1: {"nvidia.com/gpu": 7}},
        id="single strategy: GPUs",
    ),
    pytest.param(
        "a100-40gb:1",
        "gpus: [{mig-devices: {1g.6gb: 1}}]",
        {0: {"nvidia.com/gpu": 1}},
        id="an infeasible GPU: what it has now",
    ),
    pytest.param(
        "a100-40gb:1",
        "migStrategy: none\ngpus: [{mig-devices: {1g.5gb: 7}}]",
        {0: {"nvidia.com/gpu": 1}},
        id="strategy none: whole GPUs",
    ),
]


@pytest.mark.parametrize(("spec", "body", "expected"), PLANNED_RESOURCES)
def test_planned_resources(tmp_path: Path, spec: str, body: str, expected: dict[int, dict[str, int]]) -> None:
    inventory = node(tmp_path, spec)
    assert planned(inventory, config(body)) == expected


def test_planned_resources_of_the_per_gpu_example(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "examples/mig-per-gpu-mixed.yaml").read_text()
    inventory = node(tmp_path)
    assert planned(inventory, parse_config(text)) == {
        0: {"nvidia.com/gpu": 2},
        1: {"nvidia.com/mig-1g.5gb": 28},
        2: {"nvidia.com/mig-3g.20gb": 2},
        3: {"nvidia.com/mig-4g.20gb": 1, "nvidia.com/mig-3g.20gb": 1},
    }


def test_single_strategy_counts_a_gpu_no_rule_matches_as_it_is(tmp_path: Path) -> None:
    nvml = open_nvml("sim:h100-80gb:2", state_dir=tmp_path, node_name="n")
    gpu1 = InventoryReader(nvml).read().gpus[1]
    sevens = tuple(Placement(s, 1, "1g.10gb") for s in range(7))
    assert Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(1, gpu1.uuid, True, sevens)]).done
    plans = plan_node(
        InventoryReader(nvml).read(),
        config("migStrategy: single\ngpus: [{devices: [0], mig-devices: {1g.10gb: 7}}]"),
    )
    assert errors(plans) == []
