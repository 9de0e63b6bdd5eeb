"""The inventory is what NVML says about the node, as frozen plain data."""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import Any

import pynvml
import pytest

from mig.catalog import MODELS
from mig.inventory import Inventory, InventoryReader, sysfs_bus_id
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


# --- one GPU's fault costs that GPU only -------------------------------------------------

BAD = 3
# The call that fails on GPU 3 and its error. GPU 3 is in MIG mode, so its instances are
# listed; NOT_SUPPORTED from nvmlDeviceGetMigMode rightly means "not MIG-capable", so that
# call fails with UNKNOWN.
ONE_GPU_FAULTS = [
    ("nvmlDeviceGetGpuInstances", pynvml.NVML_ERROR_NOT_SUPPORTED, "NVML_ERROR_NOT_SUPPORTED"),
    ("nvmlDeviceGetMigMode", pynvml.NVML_ERROR_UNKNOWN, "NVML_ERROR_UNKNOWN"),
    ("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_UNKNOWN, "NVML_ERROR_UNKNOWN"),
    ("nvmlDeviceGetUUID", pynvml.NVML_ERROR_NO_PERMISSION, "NVML_ERROR_NO_PERMISSION"),
]


def eight_gpus(tmp_path: Path) -> tuple[SimNvml, SimControl]:
    """Eight A100s: GPU 3 in MIG mode without instances, GPU 5 in MIG mode with two."""
    nvml, control = make(tmp_path, ["a100-40gb"] * 8)
    enable_mig(nvml, control, BAD)
    five = enable_mig(nvml, control, 5)
    create(nvml, five, 9, 0, 4, ci_profile=2)
    create(nvml, five, 9, 4, 4, ci_profile=2)
    return nvml, control


@pytest.mark.parametrize(("call", "error", "name"), ONE_GPU_FAULTS, ids=[c for c, _, _ in ONE_GPU_FAULTS])
def test_a_gpu_nvml_cannot_read_carries_the_fault_and_the_other_seven_are_intact(
    tmp_path: Path, call: str, error: int, name: str
) -> None:
    nvml, control = eight_gpus(tmp_path)
    healthy = read(nvml, tmp_path)
    control.inject_fault(SimFault(call=call, error=error, gpu=BAD, count=None))

    inventory = read(nvml, tmp_path)  # does not raise

    bad = inventory.gpu(BAD)
    assert not bad.usable and not bad.lost
    assert bad.fault is not None and call in bad.fault and name in bad.fault
    assert bad.problem is not None and f"GPU {BAD}" in bad.problem and call in bad.problem
    for i in range(8):
        if i != BAD:
            assert inventory.gpu(i) == healthy.gpu(i), i
            assert inventory.gpu(i).usable
    assert len(inventory.gpu(5).mig_devices) == 2
    assert not any(BAD in pair for pair in inventory.topology)


def test_a_gpu_whose_uuid_is_read_keeps_it_when_a_later_call_fails(tmp_path: Path) -> None:
    nvml, control = eight_gpus(tmp_path)
    uuid = read(nvml, tmp_path).gpu(BAD).uuid
    control.inject_fault(SimFault(call="nvmlDeviceGetGpuInstances", error=3, gpu=BAD, count=None))
    assert read(nvml, tmp_path).gpu(BAD).uuid == uuid


def test_a_gpu_recovers_from_its_fault_on_the_next_read(tmp_path: Path) -> None:
    nvml, control = eight_gpus(tmp_path)
    reader = InventoryReader(nvml, sysfs=tmp_path / "no-sysfs")
    control.inject_fault(SimFault(call="nvmlDeviceGetMemoryInfo", gpu=BAD, count=None))
    assert not reader.read().gpu(BAD).usable
    control.clear_faults()
    assert reader.read().gpu(BAD).usable


# --- NUMA: the kernel first ------------------------------------------------------------


def write_numa(sysfs: Path, bus_id: str, node: str) -> None:
    path = sysfs / "bus/pci/devices" / bus_id / "numa_node"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(node + "\n")


def test_numa_node_comes_from_sysfs_before_nvml(tmp_path: Path) -> None:
    """On Grace (GH200/GB200) NVML names the GPU's own memory node; the kernel knows the
    node of the PCI device, which is what the kubelet's topology manager aligns."""
    nvml, _ = make(tmp_path, ["gh200", "gh200"])
    sysfs = tmp_path / "sys"
    bus = [nvml.nvmlDeviceGetPciInfo(nvml.nvmlDeviceGetHandleByIndex(i)).busId for i in range(2)]
    assert bus[0].startswith("00000000:")
    write_numa(sysfs, "0000:" + bus[0][9:].lower(), "1")  # NVML says 0 for GPU 0
    write_numa(sysfs, "0000:" + bus[1][9:].lower(), "-1")  # no NUMA affinity
    gpus = InventoryReader(nvml, sysfs=sysfs).read().gpus
    assert [g.numa_node for g in gpus] == [1, None]


def test_numa_node_falls_back_to_nvml_without_sysfs(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 2)
    gpus = InventoryReader(nvml, sysfs=tmp_path / "no-sysfs").read().gpus
    assert [g.numa_node for g in gpus] == [0, 1]


@pytest.mark.parametrize(
    ("nvml_bus_id", "sysfs_name"),
    [
        ("00000000:07:00.0", "0000:07:00.0"),
        ("00000000:BD:00.0", "0000:bd:00.0"),
        ("0001:0A:00.1", "0001:0a:00.1"),
    ],
)
def test_bus_ids_are_named_as_sysfs_names_them(nvml_bus_id: str, sysfs_name: str) -> None:
    assert sysfs_bus_id(nvml_bus_id) == sysfs_name


# --- a driver older than pynvml ------------------------------------------------------------


class MismatchedNvml:
    """pynvml over a driver without the versioned symbol of ``calls``: it raises
    NVMLLibraryMismatchError (not an NVMLError) for them."""

    def __init__(self, inner: SimNvml, *calls: str) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        if name in self._calls:

            def missing(*args: Any, **kwargs: Any) -> Any:
                raise pynvml.NVMLLibraryMismatchError(f"{name}: versioned symbol missing")

            return missing
        return getattr(self._inner, name)


def test_a_missing_mig_mode_symbol_means_no_mig_not_a_crash(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    gpu = InventoryReader(MismatchedNvml(nvml, "nvmlDeviceGetMigMode")).read().gpu(0)
    assert gpu.usable and not gpu.mig_capable


def test_missing_profile_and_numa_symbols_fall_back(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    odd = MismatchedNvml(nvml, "nvmlDeviceGetGpuInstanceProfileInfo", "nvmlDeviceGetNumaNodeId")
    gpu = InventoryReader(odd, sysfs=tmp_path / "no-sysfs").read().gpu(0)
    assert gpu.usable and gpu.numa_node is None
    assert {p.name for p in gpu.profiles} == {p.name for p in MODELS["a100-40gb"].profiles}  # the catalog's
