"""Specification of what the kubelet is offered: ``build_resources(inventory, config)``.

Names and IDs follow NVIDIA's device plugin (whole GPUs as ``nvidia.com/gpu``
under their UUID, MIG devices as ``nvidia.com/mig-<profile>``, replicas as
``<uuid>::<n>``), so pod specs written for it keep working. Inventories come
from the NVML simulator.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from deviceplugin.config.schema import parse_config
from deviceplugin.plan.resources import HEALTHY, UNHEALTHY, Resource, build_resources
from deviceplugin.testing.kubelet import is_extended_resource_name
from mig.apply import GpuTarget, Reconciler
from mig.inventory import Inventory, InventoryReader
from mig.nvml import Nvml, open_nvml
from mig.planner import plan_gpu


def open_sim(spec: str, state_dir: Path) -> Nvml:
    return open_nvml(f"sim:{spec}", state_dir=state_dir, node_name="n")


def read(nvml: Nvml) -> Inventory:
    return InventoryReader(nvml).read()


def partitioned(spec: str, state_dir: Path, layouts: dict[int, dict[str, int]]) -> Inventory:
    """A simulated node with the given MIG profiles on its GPUs (h100-80gb enables MIG
    without a reset)."""
    nvml = open_sim(spec, state_dir)
    inventory = read(nvml)
    targets = [
        GpuTarget(index, inventory.gpu(index).uuid, True, plan_gpu(inventory.gpu(index).profiles, desired))
        for index, desired in layouts.items()
    ]
    result = Reconciler(nvml, state_dir=state_dir).apply(targets)
    assert result.done, result.waiting
    return read(nvml)


def offered(inventory: Inventory, config: str = "") -> dict[str, Resource]:
    """What the kubelet is offered for ``inventory`` under ``version: v1`` and ``config``."""
    return build_resources(inventory, parse_config(FATIA + config))


def ids(resource: Resource) -> list[str]:
    return [d.id for d in resource.devices]


FATIA = "version: v1\n"


# -- whole GPUs --------------------------------------------------------------------------------


def test_whole_gpus_are_nvidia_gpu_with_their_uuids_as_ids(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:4", tmp_path))

    resources = offered(inventory)

    assert list(resources) == ["nvidia.com/gpu"]
    assert ids(resources["nvidia.com/gpu"]) == [g.uuid for g in inventory.gpus]
    assert all(d.replica is None and d.health == HEALTHY for d in resources["nvidia.com/gpu"].devices)


def test_devices_carry_their_gpus_numa_node_and_minor(tmp_path: Path) -> None:
    inventory = read(open_sim("a30:4", tmp_path))

    devices = offered(inventory)["nvidia.com/gpu"].devices

    assert [(d.gpu, d.numa_node, d.minor) for d in devices] == [
        (g.index, g.numa_node, g.minor) for g in inventory.gpus
    ]
    assert {d.numa_node for d in devices} == {0, 1}


def test_unhealthy_uuids_are_advertised_unhealthy_and_withheld_ones_not_at_all(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:3", tmp_path))
    first, second, third = (g.uuid for g in inventory.gpus)

    resource = build_resources(inventory, parse_config(FATIA), unhealthy=[second], withheld=[third])[
        "nvidia.com/gpu"
    ]

    assert {d.id: d.health for d in resource.devices} == {first: HEALTHY, second: UNHEALTHY}


# -- time-slicing --------------------------------------------------------------------------------


def test_time_sliced_replicas_have_ids_uuid_double_colon_n(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:2", tmp_path))
    config = "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}\n"

    resource = offered(inventory, config)["nvidia.com/gpu"]

    assert ids(resource) == [f"{g.uuid}::{n}" for g in inventory.gpus for n in range(4)]
    assert all(d.uuid == inventory.gpu(d.gpu).uuid for d in resource.devices)
    assert [d.replica for d in resource.devices] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_gpu_rules_give_each_gpu_its_own_replica_count(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:3", tmp_path))
    config = "gpus: [{devices: [0], replicas: 2}, {devices: [1], replicas: 3}]\n"

    resource = offered(inventory, config)["nvidia.com/gpu"]

    per_gpu = Counter(d.gpu for d in resource.devices)
    assert per_gpu == {0: 2, 1: 3, 2: 1}


def test_unshared_gpus_keep_plain_uuid_ids(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:2", tmp_path))

    resource = offered(inventory, "gpus: [{devices: [0], replicas: 2}]\n")["nvidia.com/gpu"]

    shared, plain = inventory.gpu(0).uuid, inventory.gpu(1).uuid
    assert ids(resource) == [f"{shared}::0", f"{shared}::1", plain]


def test_sharing_resource_replicas_override_gpu_rule_replicas(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:2", tmp_path))
    config = (
        "gpus: [{devices: all, replicas: 2}]\n"
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 5}]}}\n"
    )

    resource = offered(inventory, config)["nvidia.com/gpu"]

    assert Counter(d.gpu for d in resource.devices) == {0: 5, 1: 5}


def test_rename_by_default_advertises_replicas_as_gpu_shared(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:2", tmp_path))
    config = "gpus: [{devices: [1], replicas: 3}]\nsharing: {timeSlicing: {renameByDefault: true}}\n"

    resources = offered(inventory, config)

    assert sorted(resources) == ["nvidia.com/gpu", "nvidia.com/gpu.shared"]
    assert ids(resources["nvidia.com/gpu"]) == [inventory.gpu(0).uuid]
    assert ids(resources["nvidia.com/gpu.shared"]) == [f"{inventory.gpu(1).uuid}::{n}" for n in range(3)]


def test_nvidia_plugin_config_time_slicing_gives_the_readme_count(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:8", tmp_path))
    cfg = parse_config("""
version: v1
flags: {migStrategy: none}
sharing:
  timeSlicing:
    resources: [{name: nvidia.com/gpu, replicas: 10}]
""")

    resources = build_resources(inventory, cfg)

    assert {name: len(r.devices) for name, r in resources.items()} == {"nvidia.com/gpu": 80}


def test_fail_requests_greater_than_one_reaches_the_resource(tmp_path: Path) -> None:
    inventory = read(open_sim("a100-40gb:1", tmp_path))
    config = """
sharing:
  timeSlicing:
    failRequestsGreaterThanOne: true
    resources: [{name: nvidia.com/gpu, replicas: 2}]
"""

    assert offered(inventory, config)["nvidia.com/gpu"].fail_requests_greater_than_one


# -- MIG naming ----------------------------------------------------------------------------------


def test_mixed_strategy_names_mig_resources_by_profile(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:2", tmp_path, {0: {"1g.10gb": 2, "3g.40gb": 1}})

    resources = offered(inventory, "migStrategy: mixed\n")

    assert sorted(resources) == ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"]
    by_profile: dict[str, list[str]] = {d.profile: [] for d in inventory.gpu(0).mig_devices}
    for d in inventory.gpu(0).mig_devices:
        by_profile[d.profile].append(d.uuid)
    assert sorted(ids(resources["nvidia.com/mig-1g.10gb"])) == sorted(by_profile["1g.10gb"])
    assert ids(resources["nvidia.com/mig-3g.40gb"]) == by_profile["3g.40gb"]
    assert ids(resources["nvidia.com/gpu"]) == [inventory.gpu(1).uuid]


def test_mixed_strategy_mig_devices_know_their_gpu_and_instances(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:1", tmp_path, {0: {"7g.80gb": 1}})

    (device,) = offered(inventory)["nvidia.com/mig-7g.80gb"].devices

    (mig,) = inventory.gpu(0).mig_devices
    assert device.id.startswith("MIG-")
    assert (device.gpu, device.mig, device.uuid) == (0, (mig.gpu_instance, mig.compute_instance), mig.uuid)


def test_plus_me_profile_is_named_with_a_dot(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:1", tmp_path, {0: {"1g.10gb+me": 1, "1g.10gb": 1}})

    resources = offered(inventory)

    assert sorted(resources) == ["nvidia.com/mig-1g.10gb", "nvidia.com/mig-1g.10gb.me"]
    assert all(is_extended_resource_name(name) for name in resources)


def test_mig_devices_can_be_time_sliced_and_renamed(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:1", tmp_path, {0: {"1g.10gb": 1, "3g.40gb": 1}})
    config = """
sharing:
  timeSlicing:
    renameByDefault: true
    resources: [{name: nvidia.com/mig-1g.10gb, replicas: 3}]
"""

    resources = offered(inventory, config)

    assert sorted(resources) == ["nvidia.com/mig-1g.10gb.shared", "nvidia.com/mig-3g.40gb"]
    small = next(d.uuid for d in inventory.gpu(0).mig_devices if d.profile == "1g.10gb")
    assert ids(resources["nvidia.com/mig-1g.10gb.shared"]) == [f"{small}::{n}" for n in range(3)]


def test_single_strategy_advertises_mig_devices_as_nvidia_gpu(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:2", tmp_path, {0: {"3g.40gb": 2}, 1: {"3g.40gb": 1}})

    resources = offered(inventory, "migStrategy: single\n")

    assert list(resources) == ["nvidia.com/gpu"]
    assert sorted(ids(resources["nvidia.com/gpu"])) == sorted(
        d.uuid for g in inventory.gpus for d in g.mig_devices
    )


def test_mig_devices_carry_their_capability_nodes_from_the_minors_table(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:2", tmp_path, {1: {"3g.40gb": 1}})
    (mig,) = inventory.gpu(1).mig_devices
    minor = inventory.gpu(1).minor
    minors = {
        f"gpu{minor}/gi{mig.gpu_instance}/access": 21,
        f"gpu{minor}/gi{mig.gpu_instance}/ci{mig.compute_instance}/access": 22,
    }

    resources = build_resources(inventory, parse_config(FATIA), mig_minors=minors)

    (device,) = resources["nvidia.com/mig-3g.40gb"].devices
    assert device.caps == ("/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22")
    assert resources["nvidia.com/gpu"].devices[0].caps == ()


def test_none_strategy_advertises_mig_enabled_gpus_whole(tmp_path: Path) -> None:
    inventory = partitioned("h100-80gb:2", tmp_path, {0: {"1g.10gb": 7}})

    resources = offered(inventory, "migStrategy: none\n")

    assert list(resources) == ["nvidia.com/gpu"]
    assert ids(resources["nvidia.com/gpu"]) == [g.uuid for g in inventory.gpus]


def test_a100_mig_devices_appear_after_the_mode_change_reset(tmp_path: Path) -> None:
    from mig.sim.nvml import SimControl

    nvml = open_sim("a100-40gb:1", tmp_path)
    SimControl(tmp_path).set_passthrough()  # a VM: the mode change waits for a reset
    gpu = read(nvml).gpu(0)
    target = GpuTarget(0, gpu.uuid, True, plan_gpu(gpu.profiles, {"1g.5gb": 2, "2g.10gb": 1}))
    reconciler = Reconciler(nvml, state_dir=tmp_path)
    assert reconciler.apply([target]).reset_required == (0,)
    SimControl(tmp_path).reboot()
    assert reconciler.apply([target]).done

    resources = offered(read(nvml))

    assert {name: len(r.devices) for name, r in resources.items()} == {
        "nvidia.com/mig-1g.5gb": 2,
        "nvidia.com/mig-2g.10gb": 1,
    }
