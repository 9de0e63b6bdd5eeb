"""The catalog: every MIG-capable data-centre GPU NVIDIA documents, found by its product name.

The tables are facts (NVIDIA's MIG user guide and observed ``nvidia-smi mig -lgip``
outputs); these tests hold them to the hardware's rules and to the guide's names, and
check that a product is found under every name drivers give it.
"""

from __future__ import annotations

import ctypes
import itertools
from pathlib import Path
from typing import Any

import pynvml
import pytest

from mig.catalog import GI_PROFILE_COUNT, MODELS, family_of, model_for_product
from mig.errors import PlanError
from mig.inventory import InventoryReader
from mig.planner import plan_gpu
from mig.sim.nvml import SimNvml, open_sim
from mig.sim.state import SimFault

# nvmlDeviceGetName as drivers and boards report it -> the table it has.
PRODUCTS = {
    "NVIDIA A100-SXM4-40GB": "a100-40gb",
    "NVIDIA A100-PCIE-40GB": "a100-pcie-40gb",
    "NVIDIA A100-SXM4-80GB": "a100-80gb",
    "NVIDIA A100 80GB PCIe": "a100-pcie-80gb",
    "NVIDIA A800-SXM4-80GB": "a100-80gb",
    "NVIDIA A800 40GB PCIe": "a100-pcie-40gb",
    "NVIDIA A30": "a30",
    "NVIDIA H100 80GB HBM3": "h100-80gb",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H100 NVL": "h100-nvl",
    "NVIDIA H100 94GB HBM3": "h100-nvl",
    "NVIDIA H800": "h100-80gb",
    "NVIDIA H800 PCIe": "h100-pcie",
    "NVIDIA H800 NVL": "h100-nvl",
    "NVIDIA H20": "gh200",
    "NVIDIA H200": "h200",
    "NVIDIA H200 NVL": "h200-nvl",
    "NVIDIA GH200 480GB": "gh200",
    "NVIDIA GH200 96GB HBM3": "gh200",
    "NVIDIA GH200 144G HBM3e": "gh200-144gb",
    "NVIDIA B200": "b200",
    "NVIDIA GB200": "gb200",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition": "rtx-pro-6000",
    "NVIDIA RTX PRO 6000 Blackwell Workstation Edition": "rtx-pro-6000",
    "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition": "rtx-pro-6000",
}

# Every product of the MIG user guide's supported-GPU table has a table.
USER_GUIDE_GPUS = {
    "a100-40gb", "a100-pcie-40gb", "a100-80gb", "a100-pcie-80gb", "a30",
    "h100-80gb", "h100-pcie", "h100-nvl", "gh200", "h200", "h200-nvl",
    "b200", "gb200", "rtx-pro-6000",
}  # fmt: skip

# The names the guide's profile tables give (and mig-parted's configs, for GB200).
USER_GUIDE_NAMES = {
    "a100-40gb": {"1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"},
    "a100-80gb": {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
    "a30": {"1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"},
    "h100-80gb": {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
    "h100-nvl": {"1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"},
    "gh200": {"1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb"},
    "h200": {"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"},
    "b200": {"1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"},
    "rtx-pro-6000": {
        "1g.24gb", "1g.24gb+me", "1g.24gb+gfx", "1g.24gb+me.all", "1g.24gb-me",
        "2g.48gb", "2g.48gb+gfx", "2g.48gb+me.all", "2g.48gb-me", "4g.96gb", "4g.96gb+gfx",
    },
}  # fmt: skip


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_a_product_is_found_under_every_name_drivers_give_it(product: str) -> None:
    assert family_of(product) == PRODUCTS[product]
    model = model_for_product(product)
    assert model is not None and model.key == PRODUCTS[product]


def test_every_gpu_of_the_user_guide_has_a_table() -> None:
    assert set(MODELS) >= USER_GUIDE_GPUS


@pytest.mark.parametrize("model", sorted(USER_GUIDE_NAMES))
def test_profile_names_are_the_user_guides(model: str) -> None:
    assert {p.name for p in MODELS[model].profiles} == USER_GUIDE_NAMES[model]


def test_a_product_is_found_by_its_pci_device_id_too() -> None:
    model = model_for_product("NVIDIA Some Future Name", 0x233110DE)
    assert model is not None and model.key == "h100-pcie"


@pytest.mark.parametrize("product", ["NVIDIA L40S", "Tesla T4", "NVIDIA X900", ""])
def test_an_unknown_product_has_no_table(product: str) -> None:
    assert family_of(product) is None and model_for_product(product) is None


@pytest.mark.parametrize("key", sorted(MODELS))
def test_every_table_keeps_the_hardware_rules(key: str) -> None:
    model = MODELS[key]
    profiles = model.profiles
    assert len({p.id for p in profiles}) == len(profiles), "info.id is unique on a GPU"
    assert len({p.enum for p in profiles}) == len(profiles), "one profile per NVML enum"
    assert all(0 <= p.enum < GI_PROFILE_COUNT for p in profiles)
    assert model.memory_slices in (4, 8)
    full = max(profiles, key=lambda p: p.size)
    assert full.size == model.memory_slices and full.starts == (0,)
    for p in profiles:
        assert p.name.startswith(f"{p.slices}g."), p.name
        assert all(s % p.size == 0 or p.size == 1 for s in p.starts), f"{p.name}: aligned starts"
        assert all(s + p.size <= model.memory_slices for s in p.starts), p.name
        disjoint = max(
            len(c)
            for n in range(len(p.starts) + 1)
            for c in itertools.combinations(p.starts, n)
            if all(a + p.size <= b for a, b in itertools.pairwise(c))
        )
        assert 1 <= p.max_count <= disjoint, f"{p.name}: {p.max_count} instances cannot fit"
        assert 0 < p.memory_mib <= model.memory_mib and p.multiprocessors > 0, p.name
    for a, b in itertools.combinations(profiles, 2):
        if a.size < b.size:
            assert a.memory_mib <= b.memory_mib, (a.name, b.name)


def test_our_enum_matches_pynvml_where_pynvml_names_it() -> None:
    """The enum is fatia's own (nvml.h, NVML API 13), so the code does not depend on the
    NVML_GPU_INSTANCE_PROFILE_COUNT of whichever pynvml is installed."""
    from mig.catalog import types

    for name in dir(types):
        if name.startswith("GI_") and name not in ("GI_PROFILE_COUNT",):
            value = getattr(pynvml, f"NVML_GPU_INSTANCE_PROFILE_{name[3:]}", None)
            if value is not None:
                assert value == getattr(types, name), name


# --- the catalog stands in while a driver lists no profiles -------------------------------


class NamedNvml:
    """The simulator, reporting another product name (as another board of the family would)
    and, like drivers up to 535, no GPU-instance profiles while MIG is off."""

    def __init__(self, inner: SimNvml, product: str) -> None:
        self._inner, self._product = inner, product

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._product

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        info = self._inner.nvmlDeviceGetPciInfo(handle)
        info.pciDeviceId = 0x12345678  # a board id fatia does not know
        return info


def without_profiles(tmp_path: Path, model: str) -> SimNvml:
    nvml = open_sim([model], state_dir=tmp_path, node="n")
    nvml.nvmlInit()
    fault = SimFault(
        call="nvmlDeviceGetGpuInstanceProfileInfo", error=pynvml.NVML_ERROR_NOT_SUPPORTED, count=None
    )
    from mig.sim.nvml import SimControl

    SimControl(tmp_path).inject_fault(fault)
    return nvml


@pytest.mark.parametrize(
    ("model", "product"),
    [
        ("h100-pcie", "NVIDIA H100 PCIe"),
        ("h200-nvl", "NVIDIA H200 NVL"),
        ("a100-pcie-40gb", "NVIDIA A100-PCIE-40GB"),
        ("a100-80gb", "NVIDIA A800-SXM4-80GB"),
        ("gh200", "NVIDIA GH200 480GB"),
    ],
)
def test_a_family_member_gets_its_table_while_mig_is_off(tmp_path: Path, model: str, product: str) -> None:
    nvml = NamedNvml(without_profiles(tmp_path, model), product)
    gpu = InventoryReader(nvml, sysfs=tmp_path).read().gpu(0)
    assert {p.name for p in gpu.profiles} == {p.name for p in MODELS[model].profiles}
    assert plan_gpu(gpu.profiles, {MODELS[model].profiles[0].name: 2})


def test_an_unknown_product_without_profiles_is_told_how_to_get_them(tmp_path: Path) -> None:
    nvml = NamedNvml(without_profiles(tmp_path, "a100-40gb"), "NVIDIA X900")
    gpu = InventoryReader(nvml, sysfs=tmp_path).read().gpu(0)
    assert gpu.profiles == () and gpu.usable and gpu.mig_capable
    with pytest.raises(PlanError) as raised:
        plan_gpu(gpu.profiles, {"1g.5gb": 1})
    message = str(raised.value)
    assert "unknown to fatia's catalog" in message and "NVML lists no profiles" in message
    assert "mig-devices: {}" in message
    assert plan_gpu(gpu.profiles, {}) == ()  # MIG on with no instances can be planned


def test_profiles_read_from_nvml_serve_an_unknown_product(tmp_path: Path) -> None:
    """ "Profiles as NVML lists them": an unknown product with MIG on plans from NVML's table."""
    nvml = open_sim(["b200"], state_dir=tmp_path, node="n")
    nvml.nvmlInit()
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(0), pynvml.NVML_DEVICE_MIG_ENABLE)
    odd = NamedNvml(nvml, "NVIDIA X900")
    gpu = InventoryReader(odd, sysfs=tmp_path).read().gpu(0)
    assert {p.name for p in gpu.profiles} == USER_GUIDE_NAMES["b200"]
    assert len(plan_gpu(gpu.profiles, {"3g.90gb": 2})) == 2
    count = ctypes.c_uint(0)  # and the placements are NVML's too
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(
        nvml.nvmlDeviceGetHandleByIndex(0), 9, None, ctypes.byref(count)
    )
    assert count.value == 2
