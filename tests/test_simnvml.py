"""The simulated NVML is shaped like pynvml and behaves like the hardware.

Every expectation about hardware here comes from the reference's observed
``nvidia-smi`` outputs and NVML documentation, not from :mod:`mig.catalog`, so
a wrong catalog row or a permissive simulator fails a test.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from mig.catalog import CI_PROFILE_COUNT, GI_PROFILE_COUNT, MODELS
from mig.nvml import open_nvml
from mig.sim.nvml import SimControl, SimNvml, open_sim
from mig.sim.state import SimFault

REPO = Path(__file__).resolve().parents[1]
UNATTRIBUTED = 0xFFFFFFFF
ENABLE, DISABLE = pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_DISABLE


def make(tmp_path: Path, models: list[str], node: str = "node-a") -> tuple[SimNvml, SimControl]:
    nvml = open_sim(models, state_dir=tmp_path, node=node)
    nvml.nvmlInit()
    return nvml, SimControl(tmp_path)


def mig_on(tmp_path: Path, model: str = "a100-40gb", count: int = 1) -> tuple[SimNvml, SimControl]:
    """A node whose GPUs have MIG mode enabled and no instances."""
    nvml, control = make(tmp_path, [model] * count)
    for i in range(count):
        nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(i), ENABLE)
        control.reset_gpu(i)
    return nvml, control


def raises(code: int, fn: Callable[..., Any], *args: Any) -> pynvml.NVMLError:
    with pytest.raises(pynvml.NVMLError) as info:
        fn(*args)
    assert info.value.value == code, f"expected {pynvml.NVMLError(code)!r}, got {info.value!r}"
    assert type(info.value) is type(pynvml.NVMLError(code))
    return info.value


def needed_room(call: Callable[..., Any], parent: Any, profile_id: int, element: Any, room: int) -> int:
    """``call`` into an array of ``room`` ``element``s fails with INSUFFICIENT_SIZE; the count
    it says it needs."""
    array = (element * room)()
    count = ctypes.c_uint(room)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_SIZE, call, parent, profile_id, array, ctypes.byref(count))
    return count.value


def compute_profiles(nvml: SimNvml, gi: Any) -> dict[int, Any]:
    """The compute-instance profiles a GPU instance offers: enum -> profile info."""
    offered = {}
    for enum in range(CI_PROFILE_COUNT):
        try:
            offered[enum] = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, enum, 0)
        except pynvml.NVMLError_NotSupported:
            continue
    return offered


def create_at(nvml: SimNvml, device: Any, profile_id: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(device, profile_id, ctypes.byref(placement))


def placements(nvml: SimNvml, device: Any, profile_id: int) -> tuple[tuple[int, ...], int]:
    """``({starts}, size)`` the way pynvml's callers ask: count first, then fill an array."""
    count = ctypes.c_uint(0)
    assert (
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(device, profile_id, None, ctypes.byref(count))
        == pynvml.NVML_SUCCESS
    )
    array = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
    assert (
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(device, profile_id, array, ctypes.byref(count))
        == pynvml.NVML_SUCCESS
    )
    sizes = {p.size for p in array[: count.value]}
    assert len(sizes) == 1
    return tuple(p.start for p in array[: count.value]), sizes.pop()


def full_ci(nvml: SimNvml, gi: Any) -> Any:
    """Create the compute instance that fills a GPU instance (its profile = the GI's slice count)."""
    slices = gi_profile_of(nvml, gi).sliceCount
    enum = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}[slices]
    return nvml.nvmlGpuInstanceCreateComputeInstance(gi, enum)


def gi_profile_of(nvml: SimNvml, gi: Any) -> Any:
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    return nvml.nvmlDeviceGetGpuInstanceProfileInfoById(info.device, info.profileId)


def gpu_instances(nvml: SimNvml, device: Any, profile_id: int, size: int = 8) -> list[Any]:
    array = (pynvml.c_nvmlGpuInstance_t * size)()
    count = ctypes.c_uint(size)
    assert nvml.nvmlDeviceGetGpuInstances(device, profile_id, array, ctypes.byref(count)) == 0
    return list(array[: count.value])


def layout(nvml: SimNvml, device: Any) -> list[tuple[int, int, int]]:
    """``(start, size, profile id)`` of every GPU instance, by start."""
    found = []
    for profile_id in (0, 5, 9, 14, 15, 19, 20):
        for gi in gpu_instances(nvml, device, profile_id):
            info = nvml.nvmlGpuInstanceGetInfo(gi)
            found.append((info.placement.start, info.placement.size, info.profileId))
    return sorted(found)


# -- shape: the simulator is pynvml ---------------------------------------------


def _public_nvml_methods() -> list[str]:
    return sorted(n for n, _ in inspect.getmembers(SimNvml, inspect.isfunction) if n.startswith("nvml"))


@pytest.mark.parametrize("name", _public_nvml_methods())
def test_every_simulated_function_has_pynvml_signature(name: str) -> None:
    real = getattr(pynvml, name, None)
    assert callable(real), f"pynvml has no function {name}"
    ours = list(inspect.signature(getattr(SimNvml, name)).parameters.values())[1:]
    theirs = list(inspect.signature(real).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs]


def _nvml_calls_in_fatia() -> set[str]:
    """Every ``<obj>nvml.nvmlX`` attribute fatia uses on an NVML object, by scanning its source."""
    pattern = re.compile(r"(?<![A-Za-z0-9])_?nvml\.(nvml[A-Za-z0-9_]+)")
    used: set[str] = set()
    for path in [*(REPO / "deviceplugin").rglob("*.py"), *(REPO / "mig").rglob("*.py")]:
        if path == REPO / "mig" / "simnvml.py":
            continue
        used |= set(pattern.findall(path.read_text()))
    return used


def test_simulator_offers_every_nvml_function_fatia_calls() -> None:
    used = _nvml_calls_in_fatia()
    assert {"nvmlInit", "nvmlDeviceCreateGpuInstanceWithPlacement"} <= used  # the scan works
    assert sorted(n for n in used if not callable(getattr(SimNvml, n, None))) == []


def test_handles_are_pynvml_pointer_types(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 9, 0, 4)
    ci = full_ci(nvml, gi)
    assert isinstance(device, pynvml.c_nvmlDevice_t)
    assert isinstance(gi, pynvml.c_nvmlGpuInstance_t)
    assert isinstance(ci, pynvml.c_nvmlComputeInstance_t)
    assert isinstance(nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0), pynvml.c_nvmlDevice_t)
    assert isinstance(nvml.nvmlEventSetCreate(), pynvml.c_nvmlEventSet_t)
    assert isinstance(nvml.nvmlGpuInstanceGetInfo(gi), pynvml.c_nvmlGpuInstanceInfo_t)
    assert isinstance(nvml.nvmlComputeInstanceGetInfo(ci), pynvml.c_nvmlComputeInstanceInfo_t)
    assert isinstance(nvml.nvmlDeviceGetPciInfo(device), pynvml.nvmlPciInfo_t)
    assert isinstance(nvml.nvmlDeviceGetMemoryInfo(device), pynvml.c_nvmlMemory_t)


def test_errors_are_pynvml_subclasses_with_their_code(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    error = raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetHandleByUUID, "GPU-nope")
    assert isinstance(error, pynvml.NVMLError_NotFound)


def test_calls_before_init_raise_uninitialized(tmp_path: Path) -> None:
    nvml = open_sim(["a100-40gb"], state_dir=tmp_path, node="node-a")
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlDeviceGetCount)
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlDeviceGetHandleByIndex, 0)
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlSystemGetDriverVersion)
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlShutdown)


def test_init_and_shutdown_are_counted(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    nvml.nvmlInit()
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 1
    nvml.nvmlShutdown()
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlDeviceGetCount)


def test_open_nvml_parses_the_sim_spec_and_initialises(tmp_path: Path) -> None:
    nvml = open_nvml("sim:a100-40gb:2,h100-80gb", state_dir=tmp_path, node_name="node-a")
    names = [nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]
    assert names == ["NVIDIA A100-SXM4-40GB"] * 2 + ["NVIDIA H100 80GB HBM3"]


# -- models and identity ----------------------------------------------------------

# Product name, PCI device id (0xDDDDVVVV) and memory per the reference (§3.0).
MODEL_FACTS = {
    "a100-40gb": ("NVIDIA A100-SXM4-40GB", 0x20B010DE),
    "a100-80gb": ("NVIDIA A100-SXM4-80GB", 0x20B210DE),
    "a30": ("NVIDIA A30", 0x20B710DE),
    "h100-80gb": ("NVIDIA H100 80GB HBM3", 0x233010DE),
    "h100-nvl": ("NVIDIA H100 NVL", 0x232110DE),
    "h200": ("NVIDIA H200", 0x233510DE),
}


@pytest.mark.parametrize("model", sorted(MODEL_FACTS))
def test_model_identity(tmp_path: Path, model: str) -> None:
    nvml, _ = make(tmp_path, [model])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    product, pci_id = MODEL_FACTS[model]
    assert nvml.nvmlDeviceGetName(device) == product
    assert nvml.nvmlDeviceGetPciInfo(device).pciDeviceId == pci_id
    memory = nvml.nvmlDeviceGetMemoryInfo(device)
    assert memory.total == MODELS[model].memory_mib << 20
    assert memory.used == 0 and memory.free == memory.total
    assert nvml.nvmlDeviceGetMigMode(device) == [DISABLE, DISABLE]
    arch = pynvml.NVML_DEVICE_ARCH_AMPERE if model.startswith("a") else pynvml.NVML_DEVICE_ARCH_HOPPER
    assert nvml.nvmlDeviceGetArchitecture(device) == arch


def test_uuids_are_deterministic_per_node_name(tmp_path: Path) -> None:
    def uuids(state: Path, node: str) -> list[str]:
        nvml, _ = make(state, ["a100-40gb"] * 3, node)
        return [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]

    first = uuids(tmp_path / "a", "node-a")
    assert first == uuids(tmp_path / "b", "node-a")
    assert set(first).isdisjoint(uuids(tmp_path / "c", "node-b"))
    assert len(set(first)) == 3
    assert all(
        re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u) for u in first
    )


def test_handle_by_uuid_finds_each_gpu(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 2)
    for i in range(2):
        uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
        assert nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid)) == i
        assert nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid.encode())) == i


def test_pci_bus_ids_minors_and_numa_halves(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 4)
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
    bus_ids = [nvml.nvmlDeviceGetPciInfo(h).busId for h in handles]
    assert all(re.fullmatch(r"00000000:[0-9A-F]{2}:00\.0", b) for b in bus_ids)
    assert len(set(bus_ids)) == 4 and bus_ids == sorted(bus_ids)
    assert [nvml.nvmlDeviceGetMinorNumber(h) for h in handles] == [0, 1, 2, 3]
    assert [nvml.nvmlDeviceGetNumaNodeId(h) for h in handles] == [0, 0, 1, 1]


def test_index_out_of_range_is_invalid_argument(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 2)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetHandleByIndex, 2)


def _nvlinked(nvml: SimNvml, a: int, b: int) -> bool:
    status = nvml.nvmlDeviceGetP2PStatus(
        nvml.nvmlDeviceGetHandleByIndex(a),
        nvml.nvmlDeviceGetHandleByIndex(b),
        pynvml.NVML_P2P_CAPS_INDEX_NVLINK,
    )
    return bool(status == pynvml.NVML_P2P_STATUS_OK)


@pytest.mark.parametrize("model", ["a100-40gb", "a100-80gb", "h100-80gb", "h200"])
def test_sxm_boards_are_nvlinked_all_to_all(tmp_path: Path, model: str) -> None:
    nvml, _ = make(tmp_path, [model] * 4)
    assert all(_nvlinked(nvml, a, b) for a in range(4) for b in range(4) if a != b)


def test_h100_nvl_is_nvlinked_in_bridged_pairs(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["h100-nvl"] * 4)
    linked = {(a, b) for a in range(4) for b in range(4) if a != b and _nvlinked(nvml, a, b)}
    assert linked == {(0, 1), (1, 0), (2, 3), (3, 2)}


def test_a30_has_no_nvlink(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a30"] * 2)
    assert not _nvlinked(nvml, 0, 1)


def test_pcie_topology_levels(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 8)

    def level(a: int, b: int) -> int:
        return int(
            nvml.nvmlDeviceGetTopologyCommonAncestor(
                nvml.nvmlDeviceGetHandleByIndex(a), nvml.nvmlDeviceGetHandleByIndex(b)
            )
        )

    assert level(0, 0) == pynvml.NVML_TOPOLOGY_INTERNAL
    assert level(0, 1) == level(1, 0) == pynvml.NVML_TOPOLOGY_SINGLE  # one PCIe switch
    assert level(0, 2) == pynvml.NVML_TOPOLOGY_NODE  # same NUMA node
    assert level(0, 4) == level(7, 3) == pynvml.NVML_TOPOLOGY_SYSTEM  # across sockets


# -- profiles and placements, golden against nvidia-smi -----------------------------

# `nvidia-smi mig -lgipp` as observed on A100-40GB, H100-80GB and H100 NVL (reference §2).
EIGHT_SLOT_LGIPP = {
    19: ((0, 1, 2, 3, 4, 5, 6), 1),
    20: ((0, 1, 2, 3, 4, 5, 6), 1),
    15: ((0, 2, 4, 6), 2),
    14: ((0, 2, 4), 2),
    9: ((0, 4), 4),
    5: ((0,), 4),
    0: ((0,), 8),
}
A30_LGIPP = {14: ((0, 1, 2, 3), 1), 21: ((0, 1, 2, 3), 1), 5: ((0, 2), 2), 6: ((0, 2), 2), 0: ((0,), 4)}
GOLDEN_PLACEMENTS = {
    "a100-40gb": EIGHT_SLOT_LGIPP,
    "a100-80gb": EIGHT_SLOT_LGIPP,
    "h100-80gb": EIGHT_SLOT_LGIPP,
    "h100-nvl": EIGHT_SLOT_LGIPP,
    "h200": EIGHT_SLOT_LGIPP,  # not observed; the 8-slot rule is assumed (reference §3.6)
    "a30": A30_LGIPP,
}
# NVML enum -> info.id (reference §1.2).
EIGHT_SLOT_IDS = {0: 19, 7: 20, 9: 15, 1: 14, 2: 9, 3: 5, 4: 0}
ENUM_TO_ID = {**{m: EIGHT_SLOT_IDS for m in GOLDEN_PLACEMENTS}, "a30": {0: 14, 7: 21, 1: 5, 8: 6, 3: 0}}


@pytest.mark.parametrize("model", sorted(GOLDEN_PLACEMENTS))
def test_possible_placements_match_nvidia_smi(tmp_path: Path, model: str) -> None:
    nvml, _ = make(tmp_path, [model])  # valid whether MIG is enabled or not
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    observed = {pid: placements(nvml, device, pid) for pid in GOLDEN_PLACEMENTS[model]}
    assert observed == GOLDEN_PLACEMENTS[model]


def test_placements_into_a_too_small_array_is_insufficient_size(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    possible = nvml.nvmlDeviceGetGpuInstancePossiblePlacements
    assert needed_room(possible, device, 19, pynvml.c_nvmlGpuInstancePlacement_t, 3) == 7


def test_placements_of_an_unknown_profile_id_is_invalid_argument(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a30"])
    count = ctypes.c_uint(0)
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements,
        nvml.nvmlDeviceGetHandleByIndex(0),
        19,
        None,
        ctypes.byref(count),
    )


@pytest.mark.parametrize("model", sorted(ENUM_TO_ID))
def test_profile_enumeration_gives_real_ids(tmp_path: Path, model: str) -> None:
    nvml, _ = make(tmp_path, [model])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    found = {}
    for enum in range(GI_PROFILE_COUNT):
        try:
            found[enum] = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, enum).id
        except pynvml.NVMLError_NotSupported:
            continue
    assert found == ENUM_TO_ID[model]
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        nvml.nvmlDeviceGetGpuInstanceProfileInfo,
        device,
        GI_PROFILE_COUNT,
    )
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetGpuInstanceProfileInfo, device, 0x13)


def test_profile_info_v2_struct_carries_the_name(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
    assert isinstance(info, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
    assert info.version == pynvml.nvmlGpuInstanceProfileInfo_v2
    assert (info.name, info.id, info.sliceCount, info.instanceCount) == ("MIG 1g.5gb", 19, 1, 7)
    seven = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE)
    assert (seven.name, seven.id, seven.sliceCount, seven.multiprocessorCount) == ("MIG 7g.40gb", 0, 7, 98)
    assert nvml.nvmlDeviceGetGpuInstanceProfileInfoById(device, 15).name == "MIG 1g.10gb"


def test_profile_info_version_1_struct(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["h100-80gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 1)
    assert type(info) is pynvml.c_nvmlGpuInstanceProfileInfo_t
    assert (info.id, info.sliceCount, info.multiprocessorCount) == (9, 3, 60)


def test_struct_versions_pynvml_does_not_know_are_function_not_found(tmp_path: Path) -> None:
    """pynvml itself raises FUNCTION_NOT_FOUND for a version other than 1 or 2."""
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    raises(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, nvml.nvmlDeviceGetGpuInstanceProfileInfo, device, 0, 3)
    gi = create_at(nvml, device, 9, 0, 4)
    raises(
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, 2, 0, 3
    )


def test_compute_instance_profile_info_version_1_struct(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 0, 4)
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 2, 0, 1)
    assert type(info) is pynvml.c_nvmlComputeInstanceProfileInfo_t
    assert (info.id, info.sliceCount, info.multiprocessorCount) == (2, 3, 42)
    v2 = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 2, 0)
    assert v2.version == pynvml.nvmlComputeInstanceProfileInfo_v2


def test_memory_info_v2_struct(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a30"])
    memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlMemory_v2)
    assert type(memory) is pynvml.c_nvmlMemory_v2_t
    assert memory.version == pynvml.nvmlMemory_v2
    assert memory.total == MODELS["a30"].memory_mib << 20
    assert memory.free + memory.used + memory.reserved == memory.total


# -- MIG mode ----------------------------------------------------------------------


def test_an_idle_bare_metal_ampere_gpu_changes_mig_mode_at_once(tmp_path: Path) -> None:
    """The driver resets the GPU itself (MIG user guide: "the driver will attempt to reset")."""
    nvml, _ = make(tmp_path, ["a100-40gb", "a30"])
    for i in range(2):
        device = nvml.nvmlDeviceGetHandleByIndex(i)
        assert nvml.nvmlDeviceSetMigMode(device, ENABLE) == pynvml.NVML_SUCCESS
        assert nvml.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]
        assert nvml.nvmlDeviceGetMaxMigDeviceCount(device) == (7 if i == 0 else 4)


def test_ampere_mig_mode_stays_pending_while_another_client_holds_the_gpu(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    control.set_clients(0, 1)  # e.g. DCGM
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(device, ENABLE) == pynvml.NVML_ERROR_IN_USE
    assert nvml.nvmlDeviceGetMigMode(device) == [DISABLE, ENABLE]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(device) == 0
    with pytest.raises(ValueError, match="other client"):
        control.reset_gpu(0)
    control.set_clients(0, 0)
    assert nvml.nvmlDeviceSetMigMode(device, ENABLE) == pynvml.NVML_SUCCESS  # asked again, idle now
    assert nvml.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]


def test_ampere_mig_mode_in_a_passthrough_vm_waits_for_a_reboot(tmp_path: Path) -> None:
    """The MIG user guide's passthrough example: pending, "Not Supported", no reset."""
    nvml, control = make(tmp_path, ["a100-40gb", "h100-80gb"])
    control.set_passthrough()
    ampere, hopper = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert nvml.nvmlDeviceSetMigMode(ampere, ENABLE) == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert nvml.nvmlDeviceGetMigMode(ampere) == [DISABLE, ENABLE]
    assert nvml.nvmlDeviceSetMigMode(hopper, ENABLE) == pynvml.NVML_SUCCESS  # needs no reset
    with pytest.raises(ValueError, match="not supported"):
        control.reset_gpu(0)
    control.reboot()
    assert nvml.nvmlDeviceGetMigMode(ampere) == [ENABLE, ENABLE]


def test_a_pending_mig_mode_is_cancelled_by_setting_the_current_one(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    control.set_passthrough()
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(device, ENABLE)
    assert nvml.nvmlDeviceSetMigMode(device, DISABLE) == pynvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetMigMode(device) == [DISABLE, DISABLE]


def test_mig_mode_change_on_a_busy_gpu_reports_in_use(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["h100-80gb"])
    control.start_process(0)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(device, ENABLE) == pynvml.NVML_ERROR_IN_USE
    assert nvml.nvmlDeviceGetMigMode(device) == [DISABLE, ENABLE]


def test_hopper_mig_mode_takes_effect_at_once_when_idle(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["h100-80gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(device, ENABLE) == pynvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]


def test_setting_the_current_mode_succeeds(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(device, DISABLE) == pynvml.NVML_SUCCESS
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceSetMigMode, device, 2)


def test_disabling_mig_with_gpu_instances_raises_in_use(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path, "h100-80gb")
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    create_at(nvml, device, 19, 0, 1)
    raises(pynvml.NVML_ERROR_IN_USE, nvml.nvmlDeviceSetMigMode, device, DISABLE)
    assert nvml.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]


def test_reset_is_refused_while_a_process_runs(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    pid = control.start_process(0)
    nvml.nvmlDeviceSetMigMode(device, ENABLE)
    with pytest.raises(ValueError, match="in use"):
        control.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(device) == [DISABLE, ENABLE]
    control.stop_process(pid)
    control.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]


def test_reboot_clears_instances_and_keeps_only_ampere_mig_mode(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb", "h100-80gb"])
    for i in range(2):
        nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(i), ENABLE)
    control.reset_gpu(0)
    for i in range(2):
        full_ci(nvml, create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(i), 9, 0, 4))
    control.start_process(1, gpu_instance=1)
    control.reboot()
    ampere, hopper = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert nvml.nvmlDeviceGetMigMode(ampere) == [ENABLE, ENABLE]
    assert nvml.nvmlDeviceGetMigMode(hopper) == [DISABLE, DISABLE]
    assert layout(nvml, ampere) == []
    assert nvml.nvmlDeviceGetComputeRunningProcesses(hopper) == []


# -- GPU instances -----------------------------------------------------------------


def test_create_with_placement_lands_there(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 14, 2, 2)
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    assert (info.profileId, info.placement.start, info.placement.size) == (14, 2, 2)
    assert nvml.nvmlDeviceGetIndex(info.device) == 0
    assert nvml.nvmlDeviceGetGpuInstanceById(device, info.id)  # found by its id
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetGpuInstanceById, device, info.id + 1)


def test_overlapping_placement_is_insufficient_resources(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    create_at(nvml, device, 9, 4, 4)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, create_at, nvml, device, 14, 4, 2)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, create_at, nvml, device, 0, 0, 8)
    create_at(nvml, device, 5, 0, 4)  # 4g@0 + 3g@4 is valid
    assert layout(nvml, device) == [(0, 4, 5), (4, 4, 9)]


def test_per_profile_cap_is_insufficient_resources(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    create_at(nvml, device, 20, 0, 1)  # 1g.5gb+me: at most one per GPU
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, create_at, nvml, device, 20, 1, 1)


def test_illegal_start_is_invalid_argument(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, create_at, nvml, device, 14, 6, 2)  # 2g never at 6
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, create_at, nvml, device, 19, 7, 1)  # slot 7 for 1g
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, create_at, nvml, device, 9, 0, 2)  # wrong size
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, create_at, nvml, device, 21, 0, 1)  # not an A100 id
    assert layout(nvml, device) == []


def test_eight_1g_instances_do_not_fit(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    for _ in range(7):
        nvml.nvmlDeviceCreateGpuInstance(device, 19)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, nvml.nvmlDeviceCreateGpuInstance, device, 19)


def test_creating_instances_needs_mig_mode(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    control.set_passthrough()
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(device, ENABLE)  # pending only
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, create_at, nvml, device, 19, 0, 1)


def test_implicit_placement_makes_order_matter(tmp_path: Path) -> None:
    """MIG user guide: `-cgi 19,19,14,9` fails, `-cgi 9,19,14,19` works (empty A100)."""
    nvml, _ = mig_on(tmp_path, count=2)
    bad, good = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    for profile_id in (19, 19, 14):
        nvml.nvmlDeviceCreateGpuInstance(bad, profile_id)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, nvml.nvmlDeviceCreateGpuInstance, bad, 9)
    for profile_id in (9, 19, 14, 19):
        nvml.nvmlDeviceCreateGpuInstance(good, profile_id)
    assert sorted(p for _, _, p in layout(nvml, good)) == [9, 14, 19, 19]


def test_implicit_placement_of_first_instances(tmp_path: Path) -> None:
    """In the guide's examples an implicitly placed 2g lands at 4:2 and a first 1g at 6:1."""
    nvml, _ = mig_on(tmp_path, count=2)
    nvml.nvmlDeviceCreateGpuInstance(nvml.nvmlDeviceGetHandleByIndex(0), 14)
    nvml.nvmlDeviceCreateGpuInstance(nvml.nvmlDeviceGetHandleByIndex(1), 19)
    assert layout(nvml, nvml.nvmlDeviceGetHandleByIndex(0)) == [(4, 2, 14)]
    assert layout(nvml, nvml.nvmlDeviceGetHandleByIndex(1)) == [(6, 1, 19)]


def created(nvml: SimNvml, device: Any, profile_ids: list[int]) -> list[tuple[int, int]]:
    """``(GPU-instance id, placement start)`` of each instance, created without placement."""
    found = []
    for profile_id in profile_ids:
        info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceCreateGpuInstance(device, profile_id))
        found.append((info.id, info.placement.start))
    return found


# `nvidia-smi mig -cgi ...` then `-lgi` on an empty A100-40GB, from the MIG user guide's
# getting-started examples: (instance id, placement start) in creation order.
USER_GUIDE_CREATIONS = {
    "3-2-1-1 (3g first)": ([9, 19, 14, 19], [(2, 4), (7, 0), (4, 2), (8, 1)]),
    "2-1-1-1-1-1": ([14, 19, 19, 19, 19, 19], [(5, 4), (13, 6), (7, 0), (8, 1), (9, 2), (10, 3)]),
    "seven 1g": ([19] * 7, [(13, 6), (11, 4), (12, 5), (7, 0), (8, 1), (9, 2), (10, 3)]),
    "4-2-1": ([19, 14, 5], [(13, 6), (5, 4), (1, 0)]),
    "3-3": ([9, 9], [(2, 4), (1, 0)]),
}


@pytest.mark.parametrize("example", sorted(USER_GUIDE_CREATIONS))
def test_gpu_instance_ids_and_implicit_placements_follow_the_user_guide(tmp_path: Path, example: str) -> None:
    nvml, _ = mig_on(tmp_path)
    profile_ids, expected = USER_GUIDE_CREATIONS[example]
    assert created(nvml, nvml.nvmlDeviceGetHandleByIndex(0), profile_ids) == expected


def test_the_failing_order_of_the_user_guide_places_what_it_placed(tmp_path: Path) -> None:
    """`-cgi 19,19,14,9`: 1g ids 13 and 11, 2g id 3, then the 3g finds no room."""
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    assert created(nvml, device, [19, 19, 14]) == [(13, 6), (11, 4), (3, 0)]
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, nvml.nvmlDeviceCreateGpuInstance, device, 9)


@pytest.mark.parametrize(
    ("model", "profile_id", "start", "gi_id"),
    [
        ("a100-40gb", 0, 0, 0),  # 7g: the whole GPU
        ("a100-40gb", 5, 0, 1),  # 4g at 0: first half
        ("a100-40gb", 9, 4, 2),  # 3g at 4: second half
        ("a100-40gb", 14, 4, 5),  # 2g at 4: third quarter
        ("a100-40gb", 15, 6, 6),  # 1g.10gb (two slots) at 6: last quarter
        ("a100-40gb", 19, 6, 13),  # 1g at 6: seventh eighth
        ("a30", 0, 0, 0),  # 4g.24gb: the whole A30
        ("a30", 5, 2, 2),  # 2g at 2: second half
        ("a30", 14, 3, 6),  # 1g at 3: last quarter
    ],
)
def test_gpu_instance_ids_are_positions_in_the_tree_of_memory_slices(
    tmp_path: Path, model: str, profile_id: int, start: int, gi_id: int
) -> None:
    nvml, _ = mig_on(tmp_path, model)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    size = placements(nvml, device, profile_id)[1]
    gi = create_at(nvml, device, profile_id, start, size)
    assert nvml.nvmlGpuInstanceGetInfo(gi).id == gi_id
    assert (
        nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(device, gi_id)).placement.start == start
    )


def test_a_7g_instance_is_id_0_and_its_mig_device_works(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    full_ci(nvml, create_at(nvml, device, 0, 0, 8))
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)
    assert nvml.nvmlDeviceGetGpuInstanceId(mig) == 0
    assert nvml.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-40GB MIG 7g.40gb"
    assert nvml.nvmlDeviceGetHandleByUUID(nvml.nvmlDeviceGetUUID(mig)) is not None


def test_a_double_memory_1g_instance_offers_the_rev1_compute_profile(tmp_path: Path) -> None:
    """Reference §4: both CI 1_SLICE and 1_SLICE_REV1 fit a 1g.20gb; REV1 has its SMs."""
    nvml, _ = mig_on(tmp_path, "h100-80gb")
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 15, 0, 2)
    offered = {e: (i.id, i.sliceCount, i.multiprocessorCount) for e, i in compute_profiles(nvml, gi).items()}
    assert offered == {
        pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE: (0, 1, 16),
        pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1: (7, 1, 26),
    }
    nvml.nvmlGpuInstanceCreateComputeInstance(gi, 7)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, nvml.nvmlGpuInstanceCreateComputeInstance, gi, 0)


def test_a30_has_no_video_encoders(tmp_path: Path) -> None:
    """Observed `-lgip` on A30: ENC 0 on every profile; JPEG and OFA only with +me and on 4g."""
    nvml, _ = make(tmp_path, ["a30"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    engines = {}
    for enum in (0, 7, 1, 8, 3):
        info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, enum)
        engines[info.name] = (info.decoderCount, info.encoderCount, info.jpegCount, info.ofaCount)
    assert engines == {
        "MIG 1g.6gb": (1, 0, 0, 0),
        "MIG 1g.6gb+me": (1, 0, 1, 1),
        "MIG 2g.12gb": (2, 0, 0, 0),
        "MIG 2g.12gb+me": (2, 0, 1, 1),
        "MIG 4g.24gb": (4, 0, 1, 1),
    }


def test_an_all_media_engine_instance_admits_only_no_media_engine_neighbours(tmp_path: Path) -> None:
    """nvml.h: +me.all "prevents allocation of all but _NO_ME profiles" (RTX PRO 6000)."""
    nvml, _ = mig_on(tmp_path, "rtx-pro-6000")
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    create_at(nvml, device, 65, 0, 1)  # 1g.24gb+me.all
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, create_at, nvml, device, 14, 1, 1)  # 1g.24gb
    create_at(nvml, device, 67, 1, 1)  # 1g.24gb-me


def test_remaining_capacity(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    capacity = nvml.nvmlDeviceGetGpuInstanceRemainingCapacity
    assert [capacity(device, p) for p in (19, 20, 15, 14, 9, 5, 0)] == [7, 1, 4, 3, 2, 1, 1]
    create_at(nvml, device, 19, 4, 1)
    assert [capacity(device, p) for p in (19, 20, 15, 14, 9, 5, 0)] == [6, 1, 3, 2, 1, 1, 0]
    create_at(nvml, device, 9, 0, 4)
    assert [capacity(device, p) for p in (19, 20, 15, 14, 9, 5, 0)] == [2, 1, 1, 0, 0, 0, 0]  # no 2g at 6


def test_listing_gpu_instances_by_profile(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    for start in (0, 3, 5):
        create_at(nvml, device, 19, start, 1)
    create_at(nvml, device, 15, 6, 2)  # another profile is not listed with the 1g's
    ones = gpu_instances(nvml, device, 19)
    assert all(isinstance(h, pynvml.c_nvmlGpuInstance_t) for h in ones)
    assert sorted(nvml.nvmlGpuInstanceGetInfo(h).placement.start for h in ones) == [0, 3, 5]
    assert gpu_instances(nvml, device, 9) == []
    assert needed_room(nvml.nvmlDeviceGetGpuInstances, device, 19, pynvml.c_nvmlGpuInstance_t, 2) == 3


def test_destroying_a_gpu_instance_frees_its_slices(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 0, 0, 8)
    nvml.nvmlGpuInstanceDestroy(gi)
    assert layout(nvml, device) == []
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlGpuInstanceGetInfo, gi)
    create_at(nvml, device, 9, 0, 4)


def test_destroying_a_gpu_instance_with_compute_instances_is_in_use(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 0, 4)
    ci = full_ci(nvml, gi)
    raises(pynvml.NVML_ERROR_IN_USE, nvml.nvmlGpuInstanceDestroy, gi)
    nvml.nvmlComputeInstanceDestroy(ci)
    nvml.nvmlGpuInstanceDestroy(gi)


# -- compute instances and MIG devices ---------------------------------------------


def test_compute_instance_profiles_of_a_3g(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 0, 4)
    infos = compute_profiles(nvml, gi)
    assert all(isinstance(i, pynvml.c_nvmlComputeInstanceProfileInfo_v2_t) for i in infos.values())
    offered = {e: (i.id, i.name, i.sliceCount, i.instanceCount) for e, i in infos.items()}
    assert offered == {
        0: (0, "MIG 1c.3g.20gb", 1, 3),
        1: (1, "MIG 2c.3g.20gb", 2, 1),
        2: (2, "MIG 3g.20gb", 3, 1),
    }


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_gpu_instance_profile_offers_a_full_compute_instance(tmp_path: Path, model: str) -> None:
    nvml, _ = mig_on(tmp_path, model)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    for profile in MODELS[model].profiles:
        gi = create_at(nvml, device, profile.id, profile.starts[0], profile.size)
        ci = full_ci(nvml, gi)
        info = nvml.nvmlComputeInstanceGetInfo(ci)
        ci_profile = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, info.profileId, 0)
        assert ci_profile.name == f"MIG {profile.name}"
        assert ci_profile.sliceCount == profile.slices
        nvml.nvmlComputeInstanceDestroy(ci)
        nvml.nvmlGpuInstanceDestroy(gi)


def test_compute_instance_create_list_info_and_destroy(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 9, 4, 4)
    gi_id = nvml.nvmlGpuInstanceGetInfo(gi).id
    first = nvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    second = nvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    assert isinstance(first, pynvml.c_nvmlComputeInstance_t)
    info = nvml.nvmlComputeInstanceGetInfo(second)
    assert (info.profileId, info.placement.start, info.placement.size) == (0, 1, 1)
    assert nvml.nvmlGpuInstanceGetInfo(info.gpuInstance).id == gi_id
    assert nvml.nvmlDeviceGetIndex(info.device) == 0
    assert nvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 0) == 1
    assert nvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 2) == 0

    array = (pynvml.c_nvmlComputeInstance_t * 3)()
    count = ctypes.c_uint(3)
    assert nvml.nvmlGpuInstanceGetComputeInstances(gi, 0, array, ctypes.byref(count)) == 0
    assert sorted(nvml.nvmlComputeInstanceGetInfo(c).id for c in array[: count.value]) == [0, 1]
    assert (
        nvml.nvmlComputeInstanceGetInfo(nvml.nvmlGpuInstanceGetComputeInstanceById(gi, info.id)).id == info.id
    )
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlGpuInstanceGetComputeInstanceById, gi, 5)

    nvml.nvmlComputeInstanceDestroy(second)
    count = ctypes.c_uint(3)
    nvml.nvmlGpuInstanceGetComputeInstances(gi, 0, array, ctypes.byref(count))
    assert count.value == 1


def test_a_compute_instance_that_does_not_fit_is_insufficient_resources(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 14, 0, 2)
    nvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    raises(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, nvml.nvmlGpuInstanceCreateComputeInstance, gi, 1)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlGpuInstanceCreateComputeInstance, gi, 2)


def test_destroying_a_busy_compute_instance_is_in_use(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path)
    gi = create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 0, 4)
    ci = full_ci(nvml, gi)
    gi_id, ci_id = nvml.nvmlGpuInstanceGetInfo(gi).id, nvml.nvmlComputeInstanceGetInfo(ci).id
    pid = control.start_process(0, gpu_instance=gi_id, compute_instance=ci_id)
    raises(pynvml.NVML_ERROR_IN_USE, nvml.nvmlComputeInstanceDestroy, ci)
    control.stop_process(pid)
    nvml.nvmlComputeInstanceDestroy(ci)


def test_mig_device_handles_by_index(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gis = [create_at(nvml, device, 9, 4, 4), create_at(nvml, device, 14, 0, 2)]
    cis = [full_ci(nvml, gi) for gi in gis]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(device) == 7
    migs = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i) for i in range(2)]
    expected = {
        (nvml.nvmlGpuInstanceGetInfo(g).id, nvml.nvmlComputeInstanceGetInfo(c).id)
        for g, c in zip(gis, cis, strict=True)
    }
    assert {
        (nvml.nvmlDeviceGetGpuInstanceId(m), nvml.nvmlDeviceGetComputeInstanceId(m)) for m in migs
    } == expected
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetMigDeviceHandleByIndex, device, 2)
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetMigDeviceHandleByIndex, device, 6)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetMigDeviceHandleByIndex, device, 7)


def test_mig_device_handle_identity(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path, count=2)
    device = nvml.nvmlDeviceGetHandleByIndex(1)
    full_ci(nvml, create_at(nvml, device, 19, 2, 1))
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)

    is_mig = nvml.nvmlDeviceIsMigDeviceHandle(mig)
    assert isinstance(is_mig, ctypes.c_uint) and is_mig.value == 1
    assert nvml.nvmlDeviceIsMigDeviceHandle(device).value == 0
    parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert nvml.nvmlDeviceGetIndex(parent) == 1
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, device)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetGpuInstanceId, device)

    uuid = nvml.nvmlDeviceGetUUID(mig)
    assert re.fullmatch(r"MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    by_uuid = nvml.nvmlDeviceGetHandleByUUID(uuid)
    assert nvml.nvmlDeviceIsMigDeviceHandle(by_uuid).value == 1
    assert nvml.nvmlDeviceGetUUID(by_uuid) == uuid
    assert nvml.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
    one = MODELS["a100-40gb"].profile("1g.5gb")
    assert one is not None and nvml.nvmlDeviceGetMemoryInfo(mig).total == one.memory_mib << 20


def test_mig_uuids_are_fresh_for_each_compute_instance(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 9, 0, 4)
    ci = full_ci(nvml, gi)
    before = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0))
    nvml.nvmlComputeInstanceDestroy(ci)
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetHandleByUUID, before)
    full_ci(nvml, gi)
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)) != before


def test_processes_are_reported_per_gpu_and_per_mig_device(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    for start in (0, 4):
        full_ci(nvml, create_at(nvml, device, 9, start, 4))
    pid = control.start_process(0, gpu_instance=2, used_mib=512)
    mig = next(
        m
        for m in (nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i) for i in range(2))
        if nvml.nvmlDeviceGetGpuInstanceId(m) == 2
    )
    other = next(
        m
        for m in (nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, i) for i in range(2))
        if nvml.nvmlDeviceGetGpuInstanceId(m) != 2
    )
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(device)
    assert (proc.pid, proc.usedGpuMemory, proc.gpuInstanceId, proc.computeInstanceId) == (
        pid,
        512 << 20,
        2,
        0,
    )
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(mig)] == [pid]
    assert nvml.nvmlDeviceGetComputeRunningProcesses(other) == []


# -- state outlives the process ------------------------------------------------------


def test_a_restarted_process_sees_the_instances(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path, "h100-80gb")
    full_ci(nvml, create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 4, 4))
    again, _ = make(tmp_path, ["h100-80gb"])
    device = again.nvmlDeviceGetHandleByIndex(0)
    assert again.nvmlDeviceGetMigMode(device) == [ENABLE, ENABLE]
    assert layout(again, device) == [(4, 4, 9)]
    assert again.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)


def test_a_different_model_list_starts_a_fresh_node(tmp_path: Path) -> None:
    nvml, _ = mig_on(tmp_path, "h100-80gb")
    create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 9, 4, 4)
    other, _ = make(tmp_path, ["h100-80gb", "h100-80gb"])
    assert other.nvmlDeviceGetCount() == 2
    assert other.nvmlDeviceGetMigMode(other.nvmlDeviceGetHandleByIndex(0)) == [DISABLE, DISABLE]


_WRITER = """
import sys
from pathlib import Path
from mig.sim.nvml import SimControl
control = SimControl(Path(sys.argv[1]))
for _ in range(20):
    control.start_process(int(sys.argv[2]))
"""


def test_concurrent_writers_lose_no_updates(tmp_path: Path) -> None:
    make(tmp_path, ["a100-40gb"] * 2)
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(i)], cwd=REPO) for i in range(2)
    ]
    assert [w.wait(30) for w in writers] == [0, 0]
    node = SimControl(tmp_path).node()
    assert [len(g.processes) for g in node.gpus] == [20, 20]
    assert len({p.pid for g in node.gpus for p in g.processes}) == 40


# -- injected faults -------------------------------------------------------------------


def test_fault_raises_on_the_matching_call_once(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    control.inject_fault(
        SimFault(call="nvmlDeviceCreateGpuInstanceWithPlacement", error=pynvml.NVML_ERROR_UNKNOWN)
    )
    nvml.nvmlDeviceGetMigMode(device)  # other calls are unaffected
    raises(pynvml.NVML_ERROR_UNKNOWN, create_at, nvml, device, 19, 0, 1)
    assert layout(nvml, device) == []  # "before": nothing happened
    create_at(nvml, device, 19, 0, 1)
    assert control.node().faults == []


def test_fault_skip_and_count(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    control.inject_fault(
        SimFault(call="nvmlDeviceCreateGpuInstance", error=pynvml.NVML_ERROR_TIMEOUT, skip=1, count=2)
    )
    nvml.nvmlDeviceCreateGpuInstance(device, 19)
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlDeviceCreateGpuInstance, device, 19)
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlDeviceCreateGpuInstance, device, 19)
    nvml.nvmlDeviceCreateGpuInstance(device, 19)
    assert len(layout(nvml, device)) == 2


def test_fault_on_one_gpu_spares_the_others(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path, count=2)
    control.inject_fault(SimFault(call="mutating", error=pynvml.NVML_ERROR_UNKNOWN, gpu=1))
    create_at(nvml, nvml.nvmlDeviceGetHandleByIndex(0), 19, 0, 1)
    raises(pynvml.NVML_ERROR_UNKNOWN, create_at, nvml, nvml.nvmlDeviceGetHandleByIndex(1), 19, 0, 1)


@pytest.mark.parametrize("step", ["set_mode", "create_gi", "create_ci", "destroy_ci", "destroy_gi"])
def test_mutating_fault_matches_every_change(tmp_path: Path, step: str) -> None:
    nvml, control = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    gi = create_at(nvml, device, 9, 0, 4)
    ci = full_ci(nvml, gi)
    actions = {
        "set_mode": lambda: nvml.nvmlDeviceSetMigMode(device, ENABLE),
        "create_gi": lambda: create_at(nvml, device, 9, 4, 4),
        "create_ci": lambda: nvml.nvmlGpuInstanceCreateComputeInstance(gi, 0),
        "destroy_ci": lambda: nvml.nvmlComputeInstanceDestroy(ci),
        "destroy_gi": lambda: nvml.nvmlGpuInstanceDestroy(gi),
    }
    control.inject_fault(SimFault(call="mutating", error=pynvml.NVML_ERROR_NO_PERMISSION))
    nvml.nvmlDeviceGetMigMode(device)  # reads do not match "mutating"
    nvml.nvmlGpuInstanceGetInfo(gi)
    raises(pynvml.NVML_ERROR_NO_PERMISSION, actions[step])
    assert control.node().faults == []


def test_fault_after_raises_once_the_change_took_effect(tmp_path: Path) -> None:
    nvml, control = mig_on(tmp_path)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    control.inject_fault(
        SimFault(
            call="nvmlDeviceCreateGpuInstanceWithPlacement", error=pynvml.NVML_ERROR_UNKNOWN, when="after"
        )
    )
    raises(pynvml.NVML_ERROR_UNKNOWN, create_at, nvml, device, 9, 4, 4)
    assert layout(nvml, device) == [(4, 4, 9)]


_KILLED = """
import ctypes, sys
from pathlib import Path
import pynvml
from mig.sim.nvml import open_sim
nvml = open_sim(["h100-80gb"], state_dir=Path(sys.argv[1]), node="node-a")
nvml.nvmlInit()
device = nvml.nvmlDeviceGetHandleByIndex(0)
nvml.nvmlDeviceCreateGpuInstanceWithPlacement(
    device, 9, ctypes.byref(pynvml.c_nvmlGpuInstancePlacement_t(4, 4)))
print("survived")
"""


@pytest.mark.parametrize(("when", "expected"), [("before", []), ("after", [(4, 4, 9)])])
def test_kill_fault_kills_the_caller_before_or_after_the_change(
    tmp_path: Path, when: str, expected: list[tuple[int, int, int]]
) -> None:
    nvml, control = mig_on(tmp_path, "h100-80gb")
    control.inject_fault(SimFault(call="nvmlDeviceCreateGpuInstanceWithPlacement", action="kill", when=when))
    result = subprocess.run(
        [sys.executable, "-c", _KILLED, str(tmp_path)], cwd=REPO, capture_output=True, timeout=30
    )
    assert result.returncode == -9
    assert b"survived" not in result.stdout
    assert layout(nvml, nvml.nvmlDeviceGetHandleByIndex(0)) == expected
    assert control.node().faults == []


# -- events ----------------------------------------------------------------------------


def _event_set(nvml: SimNvml, *gpus: int, mask: int = pynvml.nvmlEventTypeXidCriticalError) -> Any:
    event_set = nvml.nvmlEventSetCreate()
    for gpu in gpus:
        nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(gpu), mask, event_set)
    return event_set


def test_an_injected_xid_reaches_a_waiting_event_set(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"] * 2)
    event_set = _event_set(nvml, 1)
    injector = threading.Timer(0.05, lambda: SimControl(tmp_path).inject_event(1, data=79))
    injector.start()
    try:
        data = nvml.nvmlEventSetWait_v2(event_set, 5000)
    finally:
        injector.join()
    assert isinstance(data, pynvml.c_nvmlEventData_t)
    assert (data.eventType, data.eventData) == (pynvml.nvmlEventTypeXidCriticalError, 79)
    assert (data.gpuInstanceId, data.computeInstanceId) == (UNATTRIBUTED, UNATTRIBUTED)
    assert nvml.nvmlDeviceGetIndex(data.device) == 1
    nvml.nvmlEventSetFree(event_set)


def test_an_event_from_another_process_is_delivered(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    event_set = _event_set(nvml, 0)
    code = (
        "import sys; from pathlib import Path; from mig.sim.nvml import SimControl; "
        "SimControl(Path(sys.argv[1])).inject_event(0, data=48, gpu_instance=3, compute_instance=0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=True, timeout=30)
    data = nvml.nvmlEventSetWait(event_set, 1000)
    assert (data.eventData, data.gpuInstanceId, data.computeInstanceId) == (48, 3, 0)


def test_event_wait_times_out_when_nothing_happens(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, _event_set(nvml, 0), 20)


def test_events_of_unregistered_gpus_and_types_are_not_delivered(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"] * 2)
    event_set = _event_set(nvml, 0)
    control.inject_event(1, data=79)
    control.inject_event(0, event_type=pynvml.nvmlEventMigConfigChange)
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 20)
    control.inject_event(0, data=31)
    assert nvml.nvmlEventSetWait_v2(event_set, 1000).eventData == 31


def test_events_are_delivered_in_order_and_once(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"])
    control.inject_event(0, data=13)  # before the set existed: not delivered
    event_set = _event_set(nvml, 0)
    for xid in (43, 45):
        control.inject_event(0, data=xid)
    assert [nvml.nvmlEventSetWait_v2(event_set, 1000).eventData for _ in range(2)] == [43, 45]
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 20)


def test_registering_unsupported_event_types_is_not_supported(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    supported = nvml.nvmlDeviceGetSupportedEventTypes(device)
    assert supported & pynvml.nvmlEventTypeXidCriticalError
    assert not supported & pynvml.nvmlEventTypePState
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        nvml.nvmlDeviceRegisterEvents,
        device,
        pynvml.nvmlEventTypePState,
        nvml.nvmlEventSetCreate(),
    )


def test_a_lost_gpu_ends_the_event_wait(tmp_path: Path) -> None:
    nvml, _ = make(tmp_path, ["a100-40gb"])
    event_set = _event_set(nvml, 0)
    loser = threading.Timer(0.05, lambda: SimControl(tmp_path).set_lost(0))
    loser.start()
    try:
        raises(pynvml.NVML_ERROR_GPU_IS_LOST, nvml.nvmlEventSetWait_v2, event_set, 5000)
    finally:
        loser.join()


# -- lost GPUs --------------------------------------------------------------------------


def test_a_lost_gpu_raises_gpu_is_lost_until_it_recovers(tmp_path: Path) -> None:
    nvml, control = make(tmp_path, ["a100-40gb"] * 2)
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    uuid = nvml.nvmlDeviceGetUUID(device)
    control.set_lost(0)
    assert nvml.nvmlDeviceGetCount() == 2
    for call in (nvml.nvmlDeviceGetUUID, nvml.nvmlDeviceGetMigMode, nvml.nvmlDeviceGetMemoryInfo):
        raises(pynvml.NVML_ERROR_GPU_IS_LOST, call, device)
    raises(pynvml.NVML_ERROR_GPU_IS_LOST, nvml.nvmlDeviceGetHandleByIndex, 0)
    raises(pynvml.NVML_ERROR_GPU_IS_LOST, nvml.nvmlDeviceGetHandleByUUID, uuid)
    nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(1))  # the other GPU is fine
    control.set_lost(0, False)  # `fatia sim recover`
    assert nvml.nvmlDeviceGetUUID(device) == uuid
