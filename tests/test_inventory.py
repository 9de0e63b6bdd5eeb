"""The inventory is what NVML says about the node, as frozen plain data."""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import Any

import pynvml
import pytest

from mig.catalog import MODELS
from mig.inventory import Inventory, InventoryReader
from mig.layout import Placement
from mig.sim.nvml import SimControl, SimNvml, open_sim
from mig.sim.state import SimFault

ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE


def make(tmp_path: Path, models: list[str]) -> tuple[SimNvml, SimControl]:
    nvml = open_sim(models, state_dir=tmp_path, node="node-a")
    nvml.nvmlInit()
    return nvml, SimControl(tmp_path)


def enable_mig(nvml: SimNvml, control: SimControl, gpu: int) -> Any:
    device = nvml.nvmlDeviceGetHandleByIndex(gpu)
    nvml.nvmlDeviceSetMigMode(device, ENABLE)
    control.reset_gpu(gpu)
    return device


def create(nvml: SimNvml, device: Any, profile_id: int, start: int, size: int, ci_profile: int | None) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(device, profile_id, ctypes.byref(placement))
    if ci_profile is not None:
        nvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile)
    return gi


def read(nvml: SimNvml, tmp_path: Path) -> Inventory:
    return InventoryReader(nvml, sysfs=tmp_path / "no-sysfs").read()


def test_whole_gpus(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb", "h100-80gb"])
    inventory = read(nvml, tmp_path)
    assert inventory.driver_version == nvml.nvmlSystemGetDriverVersion()
    a100, h100 = inventory.gpus
    for gpu in inventory.gpus:
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        assert gpu.uuid == nvml.nvmlDeviceGetUUID(handle)
        assert gpu.pci_bus_id == nvml.nvmlDeviceGetPciInfo(handle).busId
        assert (gpu.mig_capable, gpu.mig_enabled, gpu.mig_pending, gpu.lost) == (True, False, False, False)
        assert gpu.gpu_instances == () and gpu.mig_devices == () and gpu.layout == ()
    assert (a100.index, a100.product, a100.memory_mib, a100.pci_device_id) == (
        0,
        "NVIDIA A100-SXM4-40GB",
        40960,
        0x20B010DE,
    )
    assert (h100.index, h100.product, h100.pci_device_id, h100.minor) == (
        1,
        "NVIDIA H100 80GB HBM3",
        0x233010DE,
        1,
    )
    assert (a100.numa_node, h100.numa_node) == (0, 1)


def test_inventory_is_frozen(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a30"])
    inventory = read(nvml, tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inventory.gpus[0].lost = True  # type: ignore[misc]


def test_pending_mig_mode_is_not_enabled(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    control.set_clients(0, 1)  # another client keeps the Ampere mode change pending
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(0), ENABLE)
    gpu = read(nvml, tmp_path).gpu(0)
    assert (gpu.mig_enabled, gpu.mig_pending) == (False, True)


def test_mig_devices_after_creating_instances(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    device = enable_mig(nvml, control, 0)
    create(nvml, device, 9, 4, 4, ci_profile=2)  # 3g.20gb, full CI
    create(nvml, device, 14, 0, 2, ci_profile=1)  # 2g.10gb, full CI
    create(nvml, device, 19, 2, 1, ci_profile=0)  # 1g.5gb, full CI
    gpu = read(nvml, tmp_path).gpu(0)

    assert gpu.mig_enabled
    assert gpu.layout == (Placement(0, 2, "2g.10gb"), Placement(2, 1, "1g.5gb"), Placement(4, 4, "3g.20gb"))
    assert all(gi.complete for gi in gpu.gpu_instances)
    by_profile = {d.profile: d for d in gpu.mig_devices}
    assert sorted(by_profile) == ["1g.5gb", "2g.10gb", "3g.20gb"]
    three = by_profile["3g.20gb"]
    assert three.placement == Placement(4, 4, "3g.20gb")
    assert three.memory_mib == 19968
    assert three.compute_instance == 0

    uuids_from_nvml = {
        nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i)) for i in range(3)
    }
    assert {d.uuid for d in gpu.mig_devices} == uuids_from_nvml
    assert all(u.startswith("MIG-") for u in uuids_from_nvml)
    mig = nvml.nvmlDeviceGetHandleByUUID(three.uuid)
    assert nvml.nvmlDeviceGetGpuInstanceId(mig) == three.gpu_instance


def test_a_gpu_instance_without_compute_instance_is_incomplete(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["h100-80gb"])
    device = enable_mig(nvml, control, 0)
    create(nvml, device, 9, 0, 4, ci_profile=None)
    (gi,) = read(nvml, tmp_path).gpu(0).gpu_instances
    assert (gi.profile, gi.compute_instances, gi.complete) == ("3g.40gb", (), False)
    assert read(nvml, tmp_path).gpu(0).mig_devices == ()


def test_a_partial_compute_instance_is_incomplete_and_named_for_its_slices(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    device = enable_mig(nvml, control, 0)
    create(nvml, device, 9, 0, 4, ci_profile=0)  # 1c.3g.20gb
    gpu = read(nvml, tmp_path).gpu(0)
    (gi,) = gpu.gpu_instances
    assert not gi.complete
    assert [d.profile for d in gpu.mig_devices] == ["1c.3g.20gb"]


def test_a_gpu_lost_at_read_time_is_marked_lost(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"] * 3)
    control.set_lost(1)
    inventory = read(nvml, tmp_path)
    assert [g.lost for g in inventory.gpus] == [False, True, False]
    assert inventory.gpu(1).index == 1
    assert not any(1 in pair for pair in inventory.topology)
    assert inventory.topology[(0, 2)] > 0


def test_a_gpu_lost_between_calls_keeps_its_uuid(tmp_path: Path) -> None:
    """A GPU that falls off while being read is still reported, lost, under its UUID."""
    nvml, control = make(tmp_path, ["a100-40gb"])
    uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(0))
    control.inject_fault(SimFault(call="nvmlDeviceGetPciInfo", error=pynvml.NVML_ERROR_GPU_IS_LOST))
    gpu = read(nvml, tmp_path).gpu(0)
    assert (gpu.lost, gpu.uuid) == (True, uuid)


def test_topology_scores_prefer_nvlink_pairs(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["h100-nvl"] * 4)
    topology = read(nvml, tmp_path).topology
    assert topology[(0, 1)] > topology[(0, 2)]
    assert topology[(2, 3)] > topology[(1, 2)]
    assert all(topology[(a, b)] == topology[(b, a)] for a, b in topology)
    assert set(topology) == {(a, b) for a in range(4) for b in range(4) if a != b}


def test_topology_scores_follow_pcie_distance_without_nvlink(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a30"] * 4)
    topology = read(nvml, tmp_path).topology
    assert topology[(0, 1)] > topology[(0, 2)] > 0  # same switch beats across sockets


@pytest.mark.parametrize("model", sorted(MODELS))
def test_profile_tables_read_from_nvml_equal_the_catalog(tmp_path: Path, model: str) -> None:
    nvml, _ = make(tmp_path, [model])
    gpu = read(nvml, tmp_path).gpu(0)
    assert sorted(gpu.profiles, key=lambda p: p.id) == sorted(MODELS[model].profiles, key=lambda p: p.id)


def test_profile_tables_are_read_once_per_model(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 2)
    calls = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(nvml, name)

        def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, profile: int, version: int = 2) -> Any:
            calls.append(profile)
            return nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile, version)

    reader = InventoryReader(Counting(), sysfs=tmp_path)
    first = reader.read()
    reader.read()
    assert len(calls) == len(set(calls))
    assert first.gpu(0).profiles == first.gpu(1).profiles


def test_a_driver_that_lists_no_profiles_while_mig_is_off_gets_the_catalog_table(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    # As drivers up to 535 do: no GPU-instance profile while MIG is disabled.
    control.inject_fault(
        SimFault(
            call="nvmlDeviceGetGpuInstanceProfileInfo", error=pynvml.NVML_ERROR_NOT_SUPPORTED, count=1000
        )
    )
    reader = InventoryReader(nvml, sysfs=tmp_path / "no-sysfs")
    in_enum_order = tuple(sorted(MODELS["a100-40gb"].profiles, key=lambda p: p.enum))
    assert reader.read().gpus[0].profiles == in_enum_order

    control.clear_faults()
    enable_mig(nvml, control, 0)
    gpu = reader.read().gpus[0]
    assert gpu.mig_enabled
    assert gpu.profiles == in_enum_order  # now read from NVML itself
