"""Specification of incremental MIG apply (mig.apply.reconciler.Reconciler) on the simulated NVML.

The reconciler changes only the difference between what NVML reports and the
planned layout: instances the plan keeps are never recreated, busy instances
are never destroyed, and MIG mode changes happen only where needed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import pynvml
import pytest
from conftest import RecordingNvml

from mig.apply import JOURNAL_FILE, GpuTarget, Reconciler
from mig.errors import ApplyError, PlanError
from mig.inventory import Inventory, InventoryReader
from mig.layout import Layout, Placement, normalize, profile_counts
from mig.nvml import open_nvml
from mig.planner import plan_gpu
from mig.sim.nvml import SimControl
from mig.sim.state import SimFault


class ModeRecordingNvml(RecordingNvml):
    def mode_changes(self) -> list[int]:
        """GPU indices of every nvmlDeviceSetMigMode call, in order."""
        return [
            self._inner.nvmlDeviceGetIndex(args[0])
            for name, args in self.calls
            if name == "nvmlDeviceSetMigMode"
        ]


class Node:
    """A simulated node: NVML (recorded), a reconciler over it, and the outside control."""

    def __init__(self, state_dir: Path, spec: str) -> None:
        self.state_dir = state_dir
        self.nvml = ModeRecordingNvml(open_nvml(f"sim:{spec}", state_dir=state_dir, node_name="n"))
        self.reader = InventoryReader(self.nvml)
        self.reconciler = Reconciler(self.nvml, state_dir=state_dir, reader=self.reader)
        self.control = SimControl(state_dir)

    def read(self) -> Inventory:
        return self.reader.read()

    def plan(
        self,
        desired: Mapping[int, Mapping[str, int] | None],
        held: Mapping[int, set[Placement]] | None = None,
    ) -> list[GpuTarget]:
        """Targets for ``desired`` (GPU index -> profile counts, ``None`` for MIG off)."""
        inventory = self.read()
        targets = []
        for index, counts in desired.items():
            gpu = inventory.gpu(index)
            if counts is None:
                targets.append(GpuTarget(index, gpu.uuid, False))
                continue
            layout = plan_gpu(gpu.profiles, counts, existing=gpu.layout, held=(held or {}).get(index, set()))
            targets.append(GpuTarget(index, gpu.uuid, True, layout))
        return targets

    def mig_uuids(self, index: int) -> dict[Placement, str]:
        gpu = self.read().gpu(index)
        return {gi.placement: ci.uuid for gi in gpu.gpu_instances for ci in gi.compute_instances}

    def gi_id(self, index: int, placement: Placement) -> int:
        return next(gi.id for gi in self.read().gpu(index).gpu_instances if gi.placement == placement)


def assert_no_orphans(inventory: Inventory) -> None:
    for gpu in inventory.gpus:
        for gi in gpu.gpu_instances:
            assert gi.complete, f"GPU {gpu.index}: {gi.placement} is not exactly one full CI: {gi}"


def assert_layouts(inventory: Inventory, targets: list[GpuTarget]) -> None:
    for target in targets:
        gpu = inventory.gpu(target.index)
        assert gpu.mig_enabled == target.mig_enabled, f"GPU {target.index} MIG mode"
        assert gpu.layout == normalize(target.layout), f"GPU {target.index} layout"


@pytest.fixture
def h100(tmp_path: Path) -> Node:
    return Node(tmp_path, "h100-80gb:2")


def at(profile: str, start: int) -> Placement:
    size = {
        "1g.10gb": 1,
        "1g.5gb": 1,
        "2g.20gb": 2,
        "3g.40gb": 4,
        "4g.40gb": 4,
        "7g.80gb": 8,
        "3g.20gb": 4,
        "2g.10gb": 2,
    }[profile]
    return Placement(start, size, profile)


# --- random layout changes -----------------------------------------------------------------------


def random_counts(rng: random.Random, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(rng.randint(0, 7)):
        name = rng.choice(names)
        counts[name] = counts.get(name, 0) + 1
    return counts


# 60 steps by default; the 200-step walk runs in make test-slow (CI runs both).
@pytest.mark.parametrize("steps", [60, pytest.param(200, marks=pytest.mark.slow)])
def test_random_changes_keep_every_kept_instance_and_match_the_plan_exactly(
    tmp_path: Path, steps: int
) -> None:
    node = Node(tmp_path, "h100-80gb:8")
    rng = random.Random(20240611)
    names = [p.name for p in node.read().gpu(0).profiles]
    kept_total = 0
    inventory = node.read()
    for step in range(steps):
        targets = []
        for gpu in inventory.gpus:
            if gpu.mig_enabled and rng.random() < 0.6:  # most GPUs stay as they are
                targets.append(GpuTarget(gpu.index, gpu.uuid, True, gpu.layout))
                continue
            if rng.random() < 0.05:
                targets.append(GpuTarget(gpu.index, gpu.uuid, False))
                continue
            while True:
                try:
                    layout = plan_gpu(gpu.profiles, random_counts(rng, names), existing=gpu.layout)
                    break
                except PlanError:
                    continue
            targets.append(GpuTarget(gpu.index, gpu.uuid, True, layout))
        before = {
            g.index: {gi.placement: ci.uuid for gi in g.gpu_instances for ci in gi.compute_instances}
            for g in inventory.gpus
        }

        result = node.reconciler.apply(targets)

        assert result.done, f"step {step}: {result.waiting}"
        after = result.inventory
        for target in targets:
            now = {
                gi.placement: ci.uuid
                for gi in after.gpu(target.index).gpu_instances
                for ci in gi.compute_instances
            }
            kept = set(before[target.index]) & set(target.layout) if target.mig_enabled else set()
            kept_total += len(kept)
            for placement in kept:
                assert now[placement] == before[target.index][placement], (
                    f"step {step}: GPU {target.index} {placement} was recreated"
                )
        assert_no_orphans(after)
        assert_layouts(after, targets)
        assert after == node.read()  # what apply reports is what NVML says
        inventory = after
    assert kept_total > steps  # the walk really exercised keeping instances
    assert not (tmp_path / JOURNAL_FILE).exists()


def test_an_apply_that_changes_nothing_makes_no_mutating_call(h100: Node) -> None:
    targets = h100.plan({0: {"3g.40gb": 2}, 1: {"7g.80gb": 1}})
    h100.reconciler.apply(targets)
    h100.nvml.calls.clear()

    result = h100.reconciler.apply(h100.plan({0: {"3g.40gb": 2}, 1: {"7g.80gb": 1}}))

    assert result.done and result.created == result.destroyed == 0
    assert not {
        "nvmlDeviceSetMigMode",
        "nvmlGpuInstanceDestroy",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
    } & set(h100.nvml.names())


def test_instances_are_created_with_their_planned_placement(h100: Node) -> None:
    # 3g + 2g + 2g only works with the 3g at 4: NVML's implicit placement would fail.
    targets = h100.plan({0: {"3g.40gb": 1, "2g.20gb": 2}})
    h100.reconciler.apply(targets)
    assert h100.read().gpu(0).layout == (at("2g.20gb", 0), at("2g.20gb", 2), at("3g.40gb", 4))
    assert "nvmlDeviceCreateGpuInstance" not in h100.nvml.names()


# --- busy instances are never destroyed -------------------------------------------------------


@pytest.fixture
def two_halves(h100: Node) -> Node:
    """GPU 0 split as 3g@0 + 3g@4, GPU 1 as 7g."""
    h100.reconciler.apply(h100.plan({0: {"3g.40gb": 2}, 1: {"7g.80gb": 1}}))
    return h100


def test_an_instance_running_a_process_is_not_destroyed_and_the_rest_is_applied(
    two_halves: Node,
) -> None:
    node = two_halves
    busy = at("3g.40gb", 0)
    busy_uuid = node.mig_uuids(0)[busy]
    pid = node.control.start_process(0, gpu_instance=node.gi_id(0, busy), compute_instance=0)
    targets = node.plan({0: {"2g.20gb": 2, "1g.10gb": 3}, 1: {"3g.40gb": 2}})

    result = node.reconciler.apply(targets)

    assert not result.done
    assert any("3g.40gb@0" in w and "in use" in w for w in result.waiting), result.waiting
    assert busy_uuid in result.withheld
    gpu0 = node.read().gpu(0)
    assert node.mig_uuids(0)[busy] == busy_uuid  # still there, same MIG device
    # What does not overlap the busy 3g@0 is done: 3g@4 went, the 1g's at 4..6 came.
    assert gpu0.layout == (busy, at("1g.10gb", 4), at("1g.10gb", 5), at("1g.10gb", 6))
    assert node.read().gpu(1).layout == (at("3g.40gb", 0), at("3g.40gb", 4))
    assert_no_orphans(node.read())

    node.control.stop_process(pid)
    again = node.reconciler.apply(targets)

    assert again.done and again.destroyed == 1 and again.created == 2
    assert_layouts(node.read(), targets)


def test_an_instance_a_pod_holds_is_not_destroyed_until_released(two_halves: Node) -> None:
    node = two_halves
    held = at("3g.40gb", 4)
    held_uuid = node.mig_uuids(0)[held]
    targets = node.plan({0: {"4g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}})

    result = node.reconciler.apply(targets, held={held_uuid})

    assert result.withheld == {held_uuid}
    assert any("3g.40gb@4" in w for w in result.waiting), result.waiting
    assert node.mig_uuids(0)[held] == held_uuid
    assert node.read().gpu(0).layout == (at("4g.40gb", 0), held)  # 3g@0 replaced by 4g@0

    again = node.reconciler.apply(targets, held=set())

    assert again.done
    assert_layouts(node.read(), targets)


def test_the_planner_keeps_a_held_instance_so_nothing_waits(two_halves: Node) -> None:
    node = two_halves
    held = at("3g.40gb", 4)
    targets = node.plan({0: {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}}, held={0: {held}})

    result = node.reconciler.apply(targets, held={node.mig_uuids(0)[held]})

    assert result.done
    assert held in node.read().gpu(0).layout


def test_a_whole_gpu_in_use_blocks_its_mig_mode_change_only(h100: Node) -> None:
    gpu0 = h100.read().gpu(0)
    h100.control.start_process(0)  # on the whole GPU, MIG off

    result = h100.reconciler.apply(h100.plan({0: {"7g.80gb": 1}, 1: {"3g.40gb": 2}}))

    assert not result.done
    assert any("GPU 0" in w and "in use" in w for w in result.waiting), result.waiting
    assert gpu0.uuid in result.withheld
    assert h100.nvml.mode_changes() == [1]
    after = h100.read()
    assert not after.gpu(0).mig_enabled and not after.gpu(0).mig_pending
    assert after.gpu(1).layout == (at("3g.40gb", 0), at("3g.40gb", 4))


def test_a_busy_instance_blocks_switching_mig_off(two_halves: Node) -> None:
    node = two_halves
    node.control.start_process(0, gpu_instance=node.gi_id(0, at("3g.40gb", 4)), compute_instance=0)

    result = node.reconciler.apply(node.plan({0: None}))

    assert not result.done
    assert node.read().gpu(0).layout == (at("3g.40gb", 0), at("3g.40gb", 4))
    assert node.read().gpu(0).mig_enabled
    assert node.nvml.mode_changes() == [0, 1]  # only the two enables of the fixture


# --- MIG mode -----------------------------------------------------------------------------------


def test_ampere_mig_enable_waits_while_another_client_holds_the_gpu_and_creates_nothing(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path, "a100-40gb:2")
    node.control.set_clients(0, 1)  # e.g. DCGM: the driver cannot reset the GPU
    targets = node.plan({0: {"3g.20gb": 2}})

    result = node.reconciler.apply(targets)

    assert result.reset_required == (0,)
    assert any("GPU 0" in w and "in use by another client" in w for w in result.waiting), result.waiting
    assert result.created == 0
    gpu = node.read().gpu(0)
    assert not gpu.mig_enabled and gpu.mig_pending and gpu.gpu_instances == ()

    node.control.set_clients(0, 0)  # the client is stopped: the next apply finishes
    again = node.reconciler.apply(targets)

    assert again.done and again.created == 2
    assert_layouts(node.read(), targets)
    assert_no_orphans(node.read())


def test_hopper_mig_enable_takes_effect_at_once(h100: Node) -> None:
    targets = h100.plan({0: {"3g.40gb": 1, "1g.10gb": 3}})

    result = h100.reconciler.apply(targets)

    assert result.done and result.reset_required == ()
    assert_layouts(h100.read(), targets)


def test_disabling_mig_destroys_every_instance_before_setting_the_mode(two_halves: Node) -> None:
    node = two_halves
    node.nvml.calls.clear()

    result = node.reconciler.apply(node.plan({0: None}))

    assert result.done and result.destroyed == 2
    names = node.nvml.names()
    mode_at = names.index("nvmlDeviceSetMigMode")
    assert [n for n in names if n == "nvmlGpuInstanceDestroy"] == ["nvmlGpuInstanceDestroy"] * 2
    assert max(i for i, n in enumerate(names) if n == "nvmlGpuInstanceDestroy") < mode_at
    gpu = node.read().gpu(0)
    assert not gpu.mig_enabled and gpu.gpu_instances == ()
    assert node.read().gpu(1).layout == (at("7g.80gb", 0),)  # untouched


def test_only_gpus_that_need_a_mode_change_get_one(tmp_path: Path) -> None:
    node = Node(tmp_path, "h100-80gb:4")
    node.reconciler.apply(node.plan({0: {"7g.80gb": 1}, 1: {"7g.80gb": 1}}))
    node.nvml.calls.clear()

    # 0: layout change only; 1: off; 2: on; 3: stays off (named, MIG off already).
    result = node.reconciler.apply(node.plan({0: {"3g.40gb": 2}, 1: None, 2: {"2g.20gb": 3}, 3: None}))

    assert result.done
    assert sorted(node.nvml.mode_changes()) == [1, 2]
    modes = [g.mig_enabled for g in node.read().gpus]
    assert modes == [True, False, True, False]


def test_ampere_mig_enable_in_a_passthrough_vm_waits_for_a_reboot(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-40gb:1")
    node.control.set_passthrough()
    targets = node.plan({0: {"3g.20gb": 2}})

    result = node.reconciler.apply(targets)

    assert result.reset_required == (0,)
    assert any("GPU 0" in w and "reset" in w for w in result.waiting), result.waiting
    node.control.reboot()
    assert node.reconciler.apply(targets).done
    assert_layouts(node.read(), targets)


def test_an_idle_bare_metal_ampere_gpu_is_partitioned_in_one_apply(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-40gb:1")
    targets = node.plan({0: {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 2}})

    result = node.reconciler.apply(targets)

    assert result.done and result.reset_required == () and result.created == 4
    assert_layouts(node.read(), targets)


def test_ampere_mode_change_affects_only_the_gpu_that_needs_it(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-40gb:2")
    node.reconciler.apply(node.plan({1: {"7g.40gb": 1}}))
    node.control.set_clients(0, 1)
    node.nvml.calls.clear()

    result = node.reconciler.apply(node.plan({0: {"3g.20gb": 1}, 1: {"3g.20gb": 2}}))

    assert node.nvml.mode_changes() == [0]
    assert result.reset_required == (0,)
    assert node.read().gpu(1).layout == (at("3g.20gb", 0), at("3g.20gb", 4))


def test_profile_counts_of_the_random_helper_are_feasible_or_rejected() -> None:
    """Guard for the random walk: drawing counts yields a mix of plannable and not."""
    from mig.catalog import MODELS

    profiles = MODELS["h100-80gb"].profiles
    rng = random.Random(1)
    outcomes: list[bool | None] = []
    for _ in range(200):
        counts = random_counts(rng, [p.name for p in profiles])
        try:
            layout: Layout = plan_gpu(profiles, counts)
            outcomes.append(profile_counts(layout) == {k: v for k, v in counts.items() if v})
        except PlanError:
            outcomes.append(None)
    assert True in outcomes and None in outcomes and False not in outcomes


def test_processes_are_found_per_mig_device_when_the_gpu_will_not_say(tmp_path: Path) -> None:
    nvml = open_nvml("sim:h100-80gb:1", state_dir=tmp_path, node_name="n")
    reconciler = Reconciler(nvml, state_dir=tmp_path)
    gpu = InventoryReader(nvml).read().gpus[0]
    two = (Placement(0, 4, "3g.40gb"), Placement(4, 4, "3g.40gb"))
    assert reconciler.apply([GpuTarget(0, gpu.uuid, True, two)]).done
    control = SimControl(tmp_path)
    busy = next(g for g in control.node().gpus[0].gpu_instances if g.start == 4)
    control.start_process(0, gpu_instance=busy.id, compute_instance=0)
    # The driver refuses the question on the GPU itself (only that first call).
    control.inject_fault(
        SimFault(call="nvmlDeviceGetComputeRunningProcesses", error=pynvml.NVML_ERROR_NOT_SUPPORTED)
    )

    result = reconciler.apply([GpuTarget(0, gpu.uuid, True, (Placement(0, 8, "7g.80gb"),))])

    assert [p.start for p in InventoryReader(nvml).read().gpus[0].layout] == [4]
    assert any("in use" in w for w in result.waiting)


# --- a pending MIG mode the target does not want -------------------------------------------


def test_a_pending_mig_enable_is_cancelled_when_the_target_is_mig_off(tmp_path: Path) -> None:
    """Ampere keeps MIG mode in the InfoROM: left pending, the next GPU reset would switch MIG
    on against the config."""
    node = Node(tmp_path, "a100-40gb:2")
    node.control.set_clients(0, 1)
    assert node.reconciler.apply(node.plan({0: {"3g.20gb": 2}})).reset_required == (0,)
    assert node.read().gpu(0).mig_pending
    node.nvml.calls.clear()

    result = node.reconciler.apply(node.plan({0: None}))

    assert result.done
    assert node.nvml.mode_changes() == [0]
    gpu = node.read().gpu(0)
    assert (gpu.mig_enabled, gpu.mig_pending) == (False, False)
    node.control.set_clients(0, 0)
    node.control.reset_gpu(0)
    assert not node.read().gpu(0).mig_enabled  # a reset changes nothing now


def test_a_pending_mig_disable_is_cancelled_when_the_target_keeps_mig_on(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-40gb:1")
    targets = node.plan({0: {"7g.40gb": 1}})
    node.reconciler.apply(targets)
    handle = node.nvml.nvmlDeviceGetHandleByIndex(0)
    for gi in node.read().gpu(0).gpu_instances:  # someone else empties the GPU and asks for MIG off
        gi_handle = node.nvml.nvmlDeviceGetGpuInstanceById(handle, gi.id)
        for ci in gi.compute_instances:
            node.nvml.nvmlComputeInstanceDestroy(
                node.nvml.nvmlGpuInstanceGetComputeInstanceById(gi_handle, ci.id)
            )
        node.nvml.nvmlGpuInstanceDestroy(gi_handle)
    node.control.set_clients(0, 1)
    node.nvml.nvmlDeviceSetMigMode(handle, pynvml.NVML_DEVICE_MIG_DISABLE)
    assert node.read().gpu(0).mig_pending is False

    result = node.reconciler.apply(targets)

    assert result.done
    gpu = node.read().gpu(0)
    assert (gpu.mig_enabled, gpu.mig_pending) == (True, True)
    assert_layouts(node.read(), targets)


# --- failures name the GPU, the step and NVML's error ------------------------------------------


def test_a_refused_step_names_the_gpu_the_step_and_the_nvml_error(h100: Node) -> None:
    uuid = h100.read().gpu(1).uuid
    h100.control.inject_fault(
        SimFault(
            call="nvmlDeviceCreateGpuInstanceWithPlacement",
            gpu=1,
            error=pynvml.NVML_ERROR_NOT_SUPPORTED,
            count=None,
        )
    )

    with pytest.raises(ApplyError) as raised:
        h100.reconciler.apply(h100.plan({0: {"7g.80gb": 1}, 1: {"3g.40gb": 1, "2g.20gb": 2}}))

    message = str(raised.value)
    assert f"GPU 1 ({uuid})" in message, message
    assert "create GPU instance 2g.20gb at slice 0" in message, message
    assert "NVML_ERROR_NOT_SUPPORTED" in message and "Not Supported" in message, message
    assert "the previous layout was restored" in message, message


@pytest.mark.parametrize(
    ("call", "step"),
    [
        ("nvmlDeviceSetMigMode", "set MIG mode on"),
        (
            "nvmlGpuInstanceCreateComputeInstance",
            "create compute instance in GPU instance 7g.80gb at slice 0",
        ),
        ("nvmlGpuInstanceDestroy", "destroy GPU instance 3g.40gb at 4"),
        ("nvmlComputeInstanceDestroy", "destroy compute instance 0 of GPU instance 3g.40gb at 4"),
    ],
)
def test_each_kind_of_step_is_named_when_it_fails(tmp_path: Path, call: str, step: str) -> None:
    node = Node(tmp_path, "h100-80gb:2")
    node.reconciler.apply(node.plan({1: {"3g.40gb": 2}}))
    node.control.inject_fault(SimFault(call=call, error=pynvml.NVML_ERROR_IN_USE, count=None))

    with pytest.raises(ApplyError) as raised:
        node.reconciler.apply(node.plan({0: {"7g.80gb": 1}, 1: {"3g.40gb": 1, "1g.10gb": 3}}))

    assert step in str(raised.value) and "NVML_ERROR_IN_USE" in str(raised.value), str(raised.value)


def test_the_journal_and_the_log_name_the_failed_step(tmp_path: Path) -> None:
    node = Node(tmp_path, "h100-80gb:1")
    node.control.inject_fault(SimFault(call="nvmlGpuInstanceCreateComputeInstance", error=3))
    node.control.inject_fault(SimFault(call="mutating", action="kill", skip=3))  # in the rollback
    script = (
        "import sys; from pathlib import Path; from mig.nvml import open_nvml; "
        "from mig.inventory import InventoryReader; from mig.apply import GpuTarget, Reconciler; "
        "from mig.layout import Placement; s = Path(sys.argv[1]); "
        "n = open_nvml('sim:h100-80gb:1', state_dir=s, node_name='n'); "
        "g = InventoryReader(n).read().gpu(0); "
        "Reconciler(n, state_dir=s).apply([GpuTarget(0, g.uuid, True, (Placement(0, 8, '7g.80gb'),))])"
    )
    import subprocess
    import sys

    died = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert died.returncode < 0, died.stderr[-2000:]
    journal = node.reconciler.interrupted()
    assert journal is not None and journal["phase"] == "rolling-back"
    assert "create compute instance" in journal["error"] and "NVML_ERROR_NOT_SUPPORTED" in journal["error"]
    failed = [s for s in journal["steps"] if s["state"] == "failed"]
    assert [(s["op"], s["step"], s["error"][:24]) for s in failed] == [
        (
            "create_ci",
            "create compute instance in GPU instance 7g.80gb at slice 0",
            "NVML_ERROR_NOT_SUPPORTED",
        )
    ]
    logged = died.stdout + died.stderr  # structlog's default console renderer
    assert "mig_apply_failed" in logged
    assert "step='create compute instance in GPU instance 7g.80gb at slice 0'" in logged, logged
    assert "nvml_error='NVML_ERROR_NOT_SUPPORTED (Not Supported)'" in logged, logged


# --- one GPU NVML cannot read -----------------------------------------------------------------


def test_a_gpu_nvml_cannot_read_waits_and_the_others_are_applied(h100: Node) -> None:
    uuid = h100.read().gpu(0).uuid
    targets = h100.plan({0: {"7g.80gb": 1}, 1: {"3g.40gb": 2}})
    h100.control.inject_fault(SimFault(call="nvmlDeviceGetMemoryInfo", gpu=0, count=None))

    result = h100.reconciler.apply(targets)

    assert not result.done
    assert any(f"GPU 0 ({uuid}) cannot be read: nvmlDeviceGetMemoryInfo" in w for w in result.waiting), (
        result.waiting
    )
    assert "nvmlDeviceSetMigMode" in h100.nvml.names()  # GPU 1 was switched on
    assert h100.nvml.mode_changes() == [1]
    assert result.inventory.gpu(1).layout == normalize(targets[1].layout)
