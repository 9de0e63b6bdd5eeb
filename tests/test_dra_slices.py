"""Specification of DRA mode's pure core: the pool (deviceplugin.dra.pool) and the
partitionable devices (deviceplugin.dra.devices, .attributes) and ResourceSlices
(deviceplugin.dra.slices) built from it.

The counters are held to the simulator, which enforces NVML's placement rules: every set of
placements the counters admit can be created on the simulated GPU, and every placement
they refuse next to a set NVML refuses too.
"""

from __future__ import annotations

import ctypes
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pynvml
import pytest
import yaml

from deviceplugin.config.schema import Config, parse_config
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.attributes import cuda_semver, semver
from deviceplugin.dra.devices import DraDevice, PoolModel, device_name, pool_model, profile_slug
from deviceplugin.dra.pool import PoolPlan, plan_pool
from deviceplugin.dra.slices import (
    UNHEALTHY_TAINT,
    node_owner,
    quantity_mib,
    resource_slices,
    unhealthy_taints,
)
from mig.apply import GpuTarget, Reconciler
from mig.catalog import MODELS
from mig.inventory import Inventory, InventoryReader
from mig.layout import Placement
from mig.nvml import open_nvml
from mig.sim.nvml import SimNvml

REPO = Path(__file__).resolve().parents[1]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALL_MIG = "gpus: [{devices: all, mig-enabled: true}]"


def sim(tmp_path: Path, spec: str) -> SimNvml:
    nvml = open_nvml(f"sim:{spec}", state_dir=tmp_path, node_name="n")
    assert isinstance(nvml, SimNvml)
    return nvml


def config(body: str) -> Config:
    return parse_config("version: v1\n" + body)


def model_of(inventory: Inventory, body: str = ALL_MIG, **kwargs: object) -> PoolModel:
    plan = plan_pool(inventory, config(body))
    assert plan.errors == ()
    return pool_model(inventory, plan, **kwargs)  # type: ignore[arg-type]


def cut_by_fatia(tmp_path: Path, spec: str, gpu: int, placement: Placement) -> tuple[Inventory, PoolModel]:
    """A node on which fatia cut ``placement`` on GPU ``gpu``: its inventory and its pool."""
    nvml = sim(tmp_path, spec)
    Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(gpu, "", True, (placement,))])
    inventory = InventoryReader(nvml).read()
    return inventory, model_of(inventory, owned={inventory.gpus[gpu].uuid: [placement]})


def admitted(model: PoolModel, chosen: list[DraDevice]) -> bool:
    """What the scheduler checks: no counter of any set is consumed beyond its value."""
    available = {(c.name, k): v for c in model.counter_sets for k, v in c.counters}
    used: Counter[tuple[str, str]] = Counter()
    for device in chosen:
        for counter, amount in device.consumes:
            assert device.counter_set is not None
            used[(device.counter_set, counter)] += amount
    return all(used[key] <= available.get(key, 0) for key in used)


def create(nvml: SimNvml, gpu_index: int, device: DraDevice) -> bool:
    """Create the device's GPU instance directly through NVML; False if NVML refuses."""
    assert device.placement is not None and device.profile is not None
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
    profile = next(
        p for p in InventoryReader(nvml).read().gpu(gpu_index).profiles if p.name == device.profile
    )
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = device.placement.start, device.placement.size
    try:
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile.id, ctypes.byref(placement))
    except pynvml.NVMLError_InsufficientResources:
        return False
    return True


# -- the pool --------------------------------------------------------------------------


def test_a_rule_without_mig_offers_the_gpu_whole(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "a100-40gb:1")).read()
    (offer,) = plan_pool(inventory, config("gpus: [{devices: all, mig-enabled: false}]")).offers
    assert offer.whole and offer.profiles == ()


def test_mig_enabled_without_profiles_offers_every_profile(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "h100-80gb:1")).read()
    (offer,) = plan_pool(inventory, config(ALL_MIG)).offers
    assert offer.profiles == tuple(p.name for p in inventory.gpus[0].profiles)
    assert offer.caps == ()


def test_mig_devices_name_the_profiles_and_their_counts_cap_them(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "h100-80gb:1")).read()
    body = "gpus: [{devices: all, mig-devices: {1g.10gb: 3, 3g.40gb: 2, 2g.20gb: 0}}]"
    (offer,) = plan_pool(inventory, config(body)).offers
    assert offer.profiles == ("1g.10gb", "3g.40gb")
    assert offer.cap("1g.10gb") == 3 and offer.cap("3g.40gb") == 2


def test_an_unknown_profile_is_an_error_that_names_its_key_and_gpu(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "a100-40gb:1,h100-80gb:1")).read()
    plan = plan_pool(inventory, config("gpus: [{devices: all, mig-devices: {1g.20gb: 1}}]"))
    (error,) = plan.errors
    assert error.startswith("gpus[0].mig-devices.1g.20gb (GPU 0, NVIDIA A100-SXM4-40GB): no such profile")
    assert [o.index for o in plan.offers] == [1]  # the other GPU is still offered


def test_mig_on_a_gpu_without_mig_is_an_error(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "h100-80gb:1")).read()
    gpu = inventory.gpus[0]
    inventory = Inventory(inventory.driver_version, (type(gpu)(**{**gpu.__dict__, "mig_capable": False}),))
    (error,) = plan_pool(inventory, config(ALL_MIG)).errors
    assert "does not support MIG" in error


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("gpus: [{devices: all, replicas: 4}]", "gpus[0].replicas"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}", "sharing.timeSlicing"),
    ],
)
def test_time_slicing_replicas_are_an_error_in_dra_mode(tmp_path: Path, body: str, path: str) -> None:
    inventory = InventoryReader(sim(tmp_path, "a100-40gb:1")).read()
    (error,) = plan_pool(inventory, config(body)).errors
    assert error.startswith(path) and "per claim" in error


def test_a_gpu_no_rule_matches_is_offered_as_it_is(tmp_path: Path) -> None:
    nvml = sim(tmp_path, "h100-80gb:2")
    Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(1, "", True)])
    inventory = InventoryReader(nvml).read()
    plan = plan_pool(inventory, parse_config(""))
    assert [(o.index, o.whole) for o in plan.offers] == [(0, True)]  # GPU 1 is in MIG mode: left alone


# -- devices and counters --------------------------------------------------------------


@pytest.mark.parametrize("model", ["a100-40gb", "h100-80gb", "a30", "rtx-pro-6000", "h200"])
def test_every_legal_placement_of_every_profile_is_a_device(tmp_path: Path, model: str) -> None:
    inventory = InventoryReader(sim(tmp_path, model)).read()
    pool = model_of(inventory)
    expected = {device_name(0, p.name, s) for p in inventory.gpus[0].profiles for s in p.starts}
    assert {d.name for d in pool.devices} == expected
    for device in pool.devices:
        assert device.placement is not None and device.profile is not None
        profile = inventory.gpus[0].profile(device.profile)
        assert profile is not None and device.placement.start in profile.starts
        assert device.placement.size == profile.size


@pytest.mark.parametrize("model", ["a100-40gb", "h100-80gb", "a30", "rtx-pro-6000"])
@pytest.mark.parametrize("seed", range(6))
def test_the_counters_admit_exactly_what_nvml_can_create(tmp_path: Path, model: str, seed: int) -> None:
    nvml = sim(tmp_path, model)
    Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(0, "", True)])
    pool = model_of(InventoryReader(nvml).read())
    rng = random.Random(seed)
    order = list(pool.devices)
    rng.shuffle(order)
    chosen: list[DraDevice] = []
    for device in order:  # what a scheduler could pick, one claim after another
        fits = admitted(pool, [*chosen, device])
        assert create(nvml, 0, device) == fits, (
            f"{device.name} next to {[d.name for d in chosen]}: counters say {fits}"
        )
        if fits:
            chosen.append(device)
    assert chosen


def test_overlapping_placements_can_never_both_be_allocated(tmp_path: Path) -> None:
    pool = model_of(InventoryReader(sim(tmp_path, "h100-80gb")).read())
    for a in pool.devices:
        for b in pool.devices:
            if a is not b and a.placement and b.placement and a.placement.overlaps(b.placement):
                assert not admitted(pool, [a, b]), (a.name, b.name)


def test_a_configured_count_caps_a_profile_through_a_counter(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "h100-80gb")).read()
    pool = model_of(inventory, "gpus: [{devices: all, mig-devices: {1g.10gb: 2}}]")
    ones = [d for d in pool.devices if d.profile == "1g.10gb"]
    assert len(ones) == 7
    assert admitted(pool, ones[:2]) and not admitted(pool, ones[:3])


def test_an_instance_fatia_did_not_cut_is_never_overlapped(tmp_path: Path) -> None:
    nvml = sim(tmp_path, "h100-80gb")
    theirs = Placement(4, 4, "3g.40gb")
    Reconciler(nvml, state_dir=tmp_path).apply([GpuTarget(0, "", True, (theirs,))])
    pool = model_of(InventoryReader(nvml).read())
    assert pool.devices and not any(d.placement and d.placement.overlaps(theirs) for d in pool.devices)
    assert device_name(0, "3g.40gb", 4) not in {d.name for d in pool.devices}
    # ... and it counts against the profile's limit and the GPU's compute slices
    assert dict(pool.counter_sets[0].counters)["compute-slices"] == 4


def test_an_instance_fatia_cut_keeps_its_placement_and_neighbours_offered(tmp_path: Path) -> None:
    inventory, pool = cut_by_fatia(tmp_path, "h100-80gb", 0, Placement(4, 4, "3g.40gb"))
    assert len(pool.devices) == sum(len(p.starts) for p in inventory.gpus[0].profiles)


def test_a_whole_gpu_is_one_device_without_counters(tmp_path: Path) -> None:
    inventory = InventoryReader(sim(tmp_path, "a100-40gb:2")).read()
    pool = model_of(inventory, "gpus: [{devices: all, mig-enabled: false}]")
    assert [d.name for d in pool.devices] == ["gpu-0", "gpu-1"]
    assert pool.counter_sets == ()
    assert pool.devices[0].attributes["uuid"] == {"string": inventory.gpus[0].uuid}
    assert pool.devices[0].memory_mib == inventory.gpus[0].memory_mib


def test_a_lost_gpu_offers_nothing(tmp_path: Path) -> None:
    nvml = sim(tmp_path, "h100-80gb:2")
    from mig.sim.nvml import SimControl

    SimControl(tmp_path).set_lost(1)
    pool = model_of(InventoryReader(nvml).read())
    assert {d.gpu_index for d in pool.devices} == {0}
    assert [c.name for c in pool.counter_sets] == ["gpu-0"]


# -- ResourceSlices ----------------------------------------------------------------------


def dgx(tmp_path: Path) -> tuple[Inventory, PoolModel]:
    nvml = sim(tmp_path, "h100-80gb:8")
    inventory = InventoryReader(nvml).read()
    return inventory, model_of(inventory, cuda_version=int(nvml.nvmlSystemGetCudaDriverVersion()))


def test_slices_of_a_dgx_keep_to_the_api_limits(tmp_path: Path) -> None:
    inventory, pool = dgx(tmp_path)
    slices = resource_slices(pool, node_name="gpu-node-1", generation=3)
    counters = [s for s in slices if "sharedCounters" in s["spec"]]
    devices = [s for s in slices if "devices" in s["spec"]]
    assert len(counters) + len(devices) == len(slices)  # never both in one slice
    assert sum(len(s["spec"]["sharedCounters"]) for s in counters) == 8
    assert all(len(s["spec"]["sharedCounters"]) <= 8 for s in counters)
    assert all(len(s["spec"]["devices"]) <= 64 for s in devices)
    assert sum(len(s["spec"]["devices"]) for s in devices) == len(pool.devices) == 8 * 25
    for s in slices:
        assert s["spec"]["pool"] == {"name": "gpu-node-1", "generation": 3, "resourceSliceCount": len(slices)}
        assert s["spec"]["driver"] == DRIVER_NAME and s["spec"]["nodeName"] == "gpu-node-1"
    # each GPU's devices in one slice
    for gpu in inventory.gpus:
        holding = [
            s for s in devices if any(d["name"].startswith(f"gpu-{gpu.index}-") for d in s["spec"]["devices"])
        ]
        assert len(holding) == 1


def test_whole_gpus_without_counters_fill_slices_of_128(tmp_path: Path) -> None:
    gpus = tuple(
        InventoryReader(sim(tmp_path, "a100-40gb:1"))
        .read()
        .gpus[0]
        .__class__(
            **{
                **InventoryReader(sim(tmp_path, "a100-40gb:1")).read().gpus[0].__dict__,
                "index": i,
                "uuid": f"GPU-{i}",
            }
        )
        for i in range(130)
    )
    inventory = Inventory("580.95.05", gpus)
    pool = model_of(inventory, "gpus: [{devices: all, mig-enabled: false}]")
    sizes = [len(s["spec"]["devices"]) for s in resource_slices(pool, node_name="n", generation=1)]
    assert sizes == [128, 2]


def test_taints_lower_the_slice_limit_to_64(tmp_path: Path) -> None:
    gpu = InventoryReader(sim(tmp_path, "a100-40gb:1")).read().gpus[0]
    inventory = Inventory(
        "1", tuple(type(gpu)(**{**gpu.__dict__, "index": i, "uuid": f"GPU-{i}"}) for i in range(100))
    )
    pool = model_of(inventory, "gpus: [{devices: all, mig-enabled: false}]")
    taints = unhealthy_taints(pool, inventory, {"GPU-3"})
    sizes = [
        len(s["spec"]["devices"]) for s in resource_slices(pool, node_name="n", generation=1, taints=taints)
    ]
    assert sizes == [64, 36]


def test_slices_pass_the_kubernetes_schema(tmp_path: Path) -> None:
    import kubernetes_validate

    _, pool = dgx(tmp_path)
    owner = node_owner("gpu-node-1", "0f6a4c1e-5b1b-4f0e-9a55-5a8d3e9f0c11")
    for s in resource_slices(pool, node_name="gpu-node-1", generation=1, owner=owner):
        kubernetes_validate.validate(s, "1.37.0", strict=True)


def test_devices_keep_to_the_api_rules_for_names_and_attributes(tmp_path: Path) -> None:
    inventory, pool = dgx(tmp_path)
    names = [d.name for d in pool.devices]
    assert len(set(names)) == len(names)
    for device in pool.devices:
        assert DNS_LABEL.match(device.name) and len(device.name) <= 63
        assert len(device.attributes) + 1 <= 32  # attributes and capacities together
        for name, value in device.attributes.items():
            assert C_IDENTIFIER.match(name) and len(name) <= 32
            assert len(value) == 1 and all(len(str(v)) <= 64 for v in value.values())
        assert len(device.consumes) <= 32
    for counters in pool.counter_sets:
        assert DNS_LABEL.match(counters.name) and len(counters.counters) <= 32
        assert all(DNS_LABEL.match(name) for name, _ in counters.counters)
    mig = pool.device(device_name(2, "3g.40gb", 4))
    assert mig is not None
    assert mig.attributes["profile"] == {"string": "3g.40gb"}
    assert mig.attributes["placementStart"] == {"int": 4} and mig.attributes["placementSize"] == {"int": 4}
    assert mig.attributes["parentUUID"] == {"string": inventory.gpus[2].uuid}
    assert mig.attributes["driverVersion"] == {"version": "580.95.5"}
    assert mig.attributes["cudaDriverVersion"] == {"version": "13.0.0"}


def test_capacity_is_the_memory_in_canonical_quantity_form() -> None:
    assert quantity_mib(40960) == "40Gi"
    assert quantity_mib(9856) == "9856Mi"
    assert quantity_mib(1 << 20) == "1Ti"


def test_every_catalog_profile_has_its_own_slug() -> None:
    for model in MODELS.values():
        slugs = [profile_slug(p.name) for p in model.profiles]
        assert len(set(slugs)) == len(slugs), model.key
        assert all(DNS_LABEL.match(s) for s in slugs)
    assert profile_slug("1g.24gb-me") == "1g-24gb-no-me"
    assert profile_slug("1g.24gb+me.all") == "1g-24gb-me-all"


@pytest.mark.parametrize(
    ("text", "version"),
    [("580.95.05", "580.95.5"), ("535.104.05", "535.104.5"), ("570.86", "570.86.0"), ("unknown", None)],
)
def test_driver_versions_become_semantic_versions(text: str, version: str | None) -> None:
    assert semver(text) == version


def test_cuda_driver_version_becomes_a_semantic_version() -> None:
    assert cuda_semver(12040) == "12.4.0"
    assert cuda_semver(13000) == "13.0.0"
    assert cuda_semver(None) is None


def test_an_unhealthy_gpu_taints_all_its_devices_and_a_mig_device_only_its_own(tmp_path: Path) -> None:
    inventory, pool = cut_by_fatia(tmp_path, "h100-80gb:2", 1, Placement(2, 2, "2g.20gb"))
    mig_uuid = inventory.gpus[1].gpu_instances[0].compute_instances[0].uuid
    taints = unhealthy_taints(pool, inventory, {inventory.gpus[0].uuid, mig_uuid})
    assert set(taints) == {d.name for d in pool.for_gpu(inventory.gpus[0].uuid)} | {
        device_name(1, "2g.20gb", 2)
    }
    assert taints[device_name(1, "2g.20gb", 2)] == [
        {"key": UNHEALTHY_TAINT, "value": "true", "effect": "NoSchedule"}
    ]
    assert (
        unhealthy_taints(pool, inventory, {mig_uuid}, effect="NoExecute")[device_name(1, "2g.20gb", 2)][0][
            "effect"
        ]
        == "NoExecute"
    )


def test_an_empty_pool_publishes_no_slice() -> None:
    assert resource_slices(PoolModel(), node_name="n", generation=1) == []
    assert plan_pool(Inventory("1", ()), parse_config("")) == PoolPlan(())


# -- fatia plan --mode dra ---------------------------------------------------------------


def fatia_plan(tmp_path: Path, body: str, spec: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\n" + body)
    return subprocess.run(
        [sys.executable, "-m", "deviceplugin.cli.main", "plan", "--mode", "dra", "--config", str(path),
         "--nvml", f"sim:{spec}"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip


def test_fatia_plan_prints_the_slices_as_yaml(tmp_path: Path) -> None:
    body = "gpus: [{devices: [0], mig-enabled: false}, {devices: all, mig-enabled: true}]"
    done = fatia_plan(tmp_path, body, "a100-40gb:1,h100-80gb:1")
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    assert {d["kind"] for d in docs} == {"ResourceSlice"}
    names = [d["name"] for doc in docs for d in doc["spec"].get("devices", [])]
    assert names[0] == "gpu-0" and device_name(1, "7g.80gb", 0) in names
    assert json.loads(json.dumps(docs))  # plain data


def test_fatia_plan_exits_1_and_names_the_key_of_a_bad_pool(tmp_path: Path) -> None:
    done = fatia_plan(tmp_path, "gpus: [{devices: all, mig-devices: {9g.99gb: 1}}]", "h100-80gb:1")
    assert done.returncode == 1
    assert "gpus[0].mig-devices.9g.99gb" in done.stderr
