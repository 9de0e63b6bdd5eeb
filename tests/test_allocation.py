"""Specification of Allocate and GetPreferredAllocation, as NVIDIA's plugin answers them.

The first half goes through the kubelet emulator over real gRPC, with resources
built from the NVML simulator and a config; the second half pins the pure
policy functions (``container_response``, ``preferred_devices``) on edge cases.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.config.schema import AllocationPolicy, DeviceListStrategy, PluginOptions, parse_config
from deviceplugin.kubelet.allocation import (
    VISIBLE_DEVICES,
    VOLUME_MOUNT_ROOT,
    ResourceIndex,
    container_response,
    preferred_devices,
)
from deviceplugin.kubelet.manager import PluginManager
from deviceplugin.kubelet.sockets import socket_name
from deviceplugin.plan.resources import Device, Resource, build_resources
from deviceplugin.testing.kubelet import AdmissionError, KubeletEmulator
from mig.errors import AllocationError
from mig.inventory import Inventory, InventoryReader
from mig.nvml import open_nvml

GPU = "nvidia.com/gpu"


def sim_inventory(spec: str, state_dir: Path) -> Inventory:
    nvml = open_nvml(f"sim:{spec}", state_dir=state_dir, node_name="n")
    return InventoryReader(nvml).read()


Serve = Callable[..., dict[str, Resource]]


@pytest.fixture
def serve(kubelet: KubeletEmulator, tmp_path: Path) -> Iterator[Serve]:
    """``serve(spec, config_text)``: advertise a simulated node through a manager; wait for it."""
    managers: list[PluginManager] = []

    def start(
        spec: str, config_text: str = "version: v1\n", *, host_device_nodes: tuple[str, ...] = ()
    ) -> dict[str, Resource]:
        state = tmp_path / f"sim{len(managers)}"
        resources = build_resources(sim_inventory(spec, state), parse_config(config_text))
        manager = PluginManager(
            plugin_dir=kubelet.plugin_dir, instance="t", host_device_nodes=host_device_nodes
        )
        manager.start()
        managers.append(manager)
        manager.update(resources)
        assert kubelet.wait_for(
            lambda k: all(len(k.healthy(name)) == len(r.devices) for name, r in resources.items())
        )
        return resources

    yield start
    for manager in managers:
        manager.stop()


def stub(kubelet: KubeletEmulator, resource: str = GPU) -> tuple[grpc.Channel, api_pb2_grpc.DevicePluginStub]:
    channel = grpc.insecure_channel(f"unix://{kubelet.plugin_dir / socket_name(resource, 't')}")
    return channel, api_pb2_grpc.DevicePluginStub(channel)


def preferred(
    kubelet: KubeletEmulator, *requests: api_pb2.ContainerPreferredAllocationRequest
) -> list[list[str]]:
    """Ask the plugin's GetPreferredAllocation directly; the chosen IDs per container."""
    channel, plugin = stub(kubelet)
    with channel:
        response = plugin.GetPreferredAllocation(
            api_pb2.PreferredAllocationRequest(container_requests=requests), timeout=5
        )
    return [list(r.deviceIDs) for r in response.container_responses]


def replicas_config(replicas: int, extra: str = "") -> str:
    return f"""version: v1
sharing:
  timeSlicing:
{extra}    resources: [{{name: nvidia.com/gpu, replicas: {replicas}}}]
"""


def gpu_of(resources: dict[str, Resource], resource: str = GPU) -> dict[str, int]:
    return {d.id: d.gpu for d in resources[resource].devices}


# -- Allocate over gRPC ------------------------------------------------------------------------


def test_envvar_lists_the_allocated_gpu_uuids(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:4")
    uuids = [d.id for d in resources[GPU].devices]

    allocation = kubelet.allocate_ids("p", GPU, uuids[1:3])

    assert allocation.response.envs[VISIBLE_DEVICES] == f"{uuids[1]},{uuids[2]}"
    assert not allocation.response.cdi_devices
    assert not allocation.response.mounts


def test_two_replicas_of_one_gpu_name_its_uuid_once(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", replicas_config(4))
    first = [d for d in resources[GPU].devices if d.gpu == 0]

    allocation = kubelet.allocate_ids("p", GPU, [first[0].id, first[2].id])

    assert allocation.response.envs[VISIBLE_DEVICES] == first[0].uuid
    assert "::" not in allocation.response.envs[VISIBLE_DEVICES]


def test_allocate_answers_every_container_request_in_order(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:3")
    uuids = [d.id for d in resources[GPU].devices]
    channel, plugin = stub(kubelet)

    with channel:
        response = plugin.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=[uuids[2]]),
                    api_pb2.ContainerAllocateRequest(devices_ids=[uuids[0], uuids[1]]),
                ]
            ),
            timeout=5,
        )

    assert [r.envs[VISIBLE_DEVICES] for r in response.container_responses] == [
        uuids[2],
        f"{uuids[0]},{uuids[1]}",
    ]


def test_cdi_cri_names_cdi_devices_and_sets_no_env(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", "version: v1\nplugin: {deviceListStrategy: cdi-cri}\n")
    uuids = [d.id for d in resources[GPU].devices]

    response = kubelet.allocate_ids("p", GPU, uuids).response

    assert [c.name for c in response.cdi_devices] == [f"nvidia.com/gpu={u}" for u in uuids]
    assert dict(response.envs) == {}
    assert not response.mounts


def test_volume_mounts_points_the_env_at_mounts_of_dev_null(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", "version: v1\nplugin: {deviceListStrategy: volume-mounts}\n")
    uuids = [d.id for d in resources[GPU].devices]

    response = kubelet.allocate_ids("p", GPU, uuids).response

    assert response.envs[VISIBLE_DEVICES] == VOLUME_MOUNT_ROOT == "/var/run/nvidia-container-devices"
    assert [(m.container_path, m.host_path) for m in response.mounts] == [
        (f"{VOLUME_MOUNT_ROOT}/{u}", "/dev/null") for u in uuids
    ]
    assert not response.cdi_devices


def test_strategies_combine(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:1", "version: v1\nplugin: {deviceListStrategy: [envvar, cdi-cri]}\n")
    (uuid,) = [d.id for d in resources[GPU].devices]

    response = kubelet.allocate_ids("p", GPU, [uuid]).response

    assert response.envs[VISIBLE_DEVICES] == uuid
    assert [c.name for c in response.cdi_devices] == [f"nvidia.com/gpu={uuid}"]


def test_nvidia_plugin_config_strategy_list_is_honoured(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve(
        "a100-40gb:1",
        """
version: v1
flags:
  plugin:
    deviceListStrategy: envvar,volume-mounts
""",
    )
    (uuid,) = [d.id for d in resources[GPU].devices]

    response = kubelet.allocate_ids("p", GPU, [uuid]).response

    assert response.envs[VISIBLE_DEVICES] == VOLUME_MOUNT_ROOT
    assert [m.container_path for m in response.mounts] == [f"{VOLUME_MOUNT_ROOT}/{uuid}"]


def test_pass_device_specs_hands_over_control_nodes_and_the_gpu_node(
    kubelet: KubeletEmulator, serve: Serve
) -> None:
    resources = serve(
        "a100-40gb:4",
        "version: v1\nplugin: {passDeviceSpecs: true}\n",
        host_device_nodes=("/dev/nvidiactl", "/dev/nvidia-uvm"),
    )
    device = resources[GPU].devices[2]

    response = kubelet.allocate_ids("p", GPU, [device.id]).response

    assert [(d.container_path, d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/nvidiactl", "/dev/nvidiactl", "rw"),
        ("/dev/nvidia-uvm", "/dev/nvidia-uvm", "rw"),
        (f"/dev/nvidia{device.minor}", f"/dev/nvidia{device.minor}", "rw"),
    ]


def test_no_device_specs_without_pass_device_specs(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:1", host_device_nodes=("/dev/nvidiactl",))

    response = kubelet.allocate_ids("p", GPU, [resources[GPU].devices[0].id]).response

    assert not response.devices


def test_unknown_ids_are_invalid_argument_naming_them(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2")
    good = resources[GPU].devices[0].id

    with pytest.raises(AdmissionError) as refused:
        kubelet.allocate_ids("p", GPU, [good, "GPU-nope", "GPU-gone"])

    cause = refused.value.__cause__
    assert isinstance(cause, grpc.RpcError)
    assert cause.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GPU-nope" in (cause.details() or "") and "GPU-gone" in (cause.details() or "")
    assert good not in (cause.details() or "")


def test_the_server_keeps_serving_after_a_refused_allocate(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2")
    with pytest.raises(AdmissionError):
        kubelet.allocate_ids("p", GPU, ["GPU-nope"])

    allocation = kubelet.allocate("q", GPU, 2)

    assert sorted(allocation.response.envs[VISIBLE_DEVICES].split(",")) == sorted(
        d.id for d in resources[GPU].devices
    )
    assert kubelet.connected(GPU)


def test_fail_requests_greater_than_one_refuses_two_replicas(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", replicas_config(2, "    failRequestsGreaterThanOne: true\n"))
    ids = [d.id for d in resources[GPU].devices]

    with pytest.raises(AdmissionError) as refused:
        kubelet.allocate_ids("p", GPU, [ids[0], ids[2]])

    cause = refused.value.__cause__
    assert isinstance(cause, grpc.RpcError)
    assert cause.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum request size for shared resources is 1" in (cause.details() or "")


def test_fail_requests_greater_than_one_grants_one_replica(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", replicas_config(2, "    failRequestsGreaterThanOne: true\n"))

    allocation = kubelet.allocate("p", GPU, 1)

    assert allocation.device_ids[0] in {d.id for d in resources[GPU].devices}
    assert allocation.response.envs[VISIBLE_DEVICES] == resources[GPU].by_id()[allocation.device_ids[0]].uuid


def test_two_replicas_are_granted_without_fail_requests_greater_than_one(
    kubelet: KubeletEmulator, serve: Serve
) -> None:
    resources = serve("a100-40gb:1", replicas_config(2))

    allocation = kubelet.allocate("p", GPU, 2)

    assert allocation.response.envs[VISIBLE_DEVICES] == resources[GPU].devices[0].uuid


# -- GetPreferredAllocation over gRPC ------------------------------------------------------------


def test_replicas_are_spread_over_gpus_least_allocated_first(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:3", replicas_config(4))
    gpu = gpu_of(resources)

    first = kubelet.allocate("a", GPU, 2)
    second = kubelet.allocate("b", GPU, 2)

    first_gpus = {gpu[i] for i in first.device_ids}
    second_gpus = {gpu[i] for i in second.device_ids}
    assert len(first_gpus) == 2
    (untouched,) = {0, 1, 2} - first_gpus
    assert untouched in second_gpus  # the least allocated GPU comes first
    assert len(second_gpus) == 2


def test_packed_policy_fills_one_gpu_first(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve(
        "a100-40gb:3",
        """
version: v1
plugin: {sharedDevicesAllocationPolicy: packed}
sharing:
  timeSlicing:
    resources: [{name: nvidia.com/gpu, replicas: 4}]
""",
    )
    gpu = gpu_of(resources)

    first = kubelet.allocate("a", GPU, 3)
    second = kubelet.allocate("b", GPU, 1)

    assert len({gpu[i] for i in first.device_ids}) == 1
    assert {gpu[i] for i in second.device_ids} == {gpu[first.device_ids[0]]}  # the partly used one


def test_whole_gpus_are_chosen_as_an_nvlink_pair(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("h100-nvl:4")  # NVLink bridges pair GPUs 0-1 and 2-3
    gpu = gpu_of(resources)

    first = kubelet.allocate("a", GPU, 2)
    second = kubelet.allocate("b", GPU, 2)

    pairs = [{0, 1}, {2, 3}]
    assert {gpu[i] for i in first.device_ids} in pairs
    assert {gpu[i] for i in second.device_ids} in pairs


def test_whole_gpus_prefer_the_same_pcie_switch(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a30:4")  # PCIe only: 0-1 and 2-3 share a switch
    gpu = gpu_of(resources)
    by_gpu = {g: i for i, g in gpu.items()}
    (chosen,) = preferred(
        kubelet,
        api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=[by_gpu[0], by_gpu[2], by_gpu[3]], allocation_size=2
        ),
    )

    assert {gpu[i] for i in chosen} == {2, 3}


def test_must_include_is_honoured_and_pulls_its_partner(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("h100-nvl:4")
    gpu = gpu_of(resources)
    by_gpu = {g: i for i, g in gpu.items()}
    (chosen,) = preferred(
        kubelet,
        api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=list(gpu), must_include_deviceIDs=[by_gpu[3]], allocation_size=2
        ),
    )

    assert chosen == [by_gpu[3], by_gpu[2]]


def test_unknown_ids_in_a_preference_request_never_fail_it(kubelet: KubeletEmulator, serve: Serve) -> None:
    resources = serve("a100-40gb:2", replicas_config(2))
    known = [d.id for d in resources[GPU].devices]
    chosen = preferred(
        kubelet,
        api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=["GPU-lost::0", known[0], "junk", known[3]],
            must_include_deviceIDs=["GPU-lost::1"],
            allocation_size=2,
        ),
        api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=["only-junk"], allocation_size=1),
    )

    assert [set(ids) for ids in chosen] == [{known[0], known[3]}, set()]


def test_a_container_request_that_is_no_message_gets_no_preference_and_spoils_no_other(
    kubelet: KubeletEmulator, serve: Serve
) -> None:
    resources = serve("a100-40gb:2", replicas_config(2))
    known = resources[GPU].devices[0].id
    good = api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=[known], allocation_size=1)
    broken = b"\x0a\x05ab"  # an ID whose length runs past the end of the message
    # The outer message as the wire has it: field 1, one serialized container request each.
    request = b"".join(b"\x0a" + bytes([len(m)]) + m for m in (broken, good.SerializeToString()))
    channel, _ = stub(kubelet)
    with channel:
        call = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetPreferredAllocation",
            response_deserializer=api_pb2.PreferredAllocationResponse.FromString,
        )
        response = call(request, timeout=5)

    assert [list(r.deviceIDs) for r in response.container_responses] == [[], [known]]


# -- container_response, pure ------------------------------------------------------------------


def shared_resource(
    *, per_gpu: int = 2, gpus: int = 2, fail_gt_one: bool = False, options: PluginOptions | None = None
) -> Resource:
    return Resource(
        name=GPU,
        devices=tuple(
            Device(id=f"GPU-{g}::{n}", uuid=f"GPU-{g}", gpu=g, replica=n, minor=g)
            for g in range(gpus)
            for n in range(per_gpu)
        ),
        options=options or PluginOptions(),
        fail_requests_greater_than_one=fail_gt_one,
    )


def respond(
    resource: Resource, ids: list[str], **kwargs: tuple[str, ...]
) -> api_pb2.ContainerAllocateResponse:
    return container_response(resource, resource.by_id(), ids, **kwargs)


def test_uuids_keep_request_order_and_appear_once() -> None:
    r = shared_resource()

    response = respond(r, ["GPU-1::0", "GPU-0::1", "GPU-1::1"])

    assert response.envs[VISIBLE_DEVICES] == "GPU-1,GPU-0"


def test_unknown_ids_raise_an_allocation_error_naming_only_them() -> None:
    with pytest.raises(AllocationError, match=r"GPU-9::0, GPU-x$"):
        respond(shared_resource(), ["GPU-0::0", "GPU-9::0", "GPU-x"])


def test_fail_requests_greater_than_one_leaves_whole_gpus_alone() -> None:
    r = Resource(
        name=GPU,
        devices=(Device(id="GPU-0", uuid="GPU-0", gpu=0), Device(id="GPU-1", uuid="GPU-1", gpu=1)),
        fail_requests_greater_than_one=True,
    )

    assert respond(r, ["GPU-0", "GPU-1"]).envs[VISIBLE_DEVICES] == "GPU-0,GPU-1"


def test_fail_requests_greater_than_one_refuses_replicas_of_different_gpus() -> None:
    with pytest.raises(AllocationError, match="found 2"):
        respond(shared_resource(fail_gt_one=True), ["GPU-0::0", "GPU-1::0"])


def test_device_specs_name_each_gpu_node_once_and_mig_capability_nodes() -> None:
    def on_gpu0(uuid: str, gpu_instance: int, gi_cap: int, ci_cap: int) -> Device:
        """A MIG device of GPU 0 (/dev/nvidia3) with its GI and CI capability nodes."""
        caps = (f"/dev/nvidia-caps/nvidia-cap{gi_cap}", f"/dev/nvidia-caps/nvidia-cap{ci_cap}")
        return Device(id=uuid, uuid=uuid, gpu=0, mig=(gpu_instance, 0), minor=3, caps=caps)

    r = Resource(
        name="nvidia.com/mig-1g.5gb",
        devices=(on_gpu0("MIG-a", 1, 12, 13), on_gpu0("MIG-b", 2, 21, 22)),
        options=PluginOptions(pass_device_specs=True),
    )

    response = respond(r, ["MIG-a", "MIG-b"], host_device_nodes=("/dev/nvidiactl",))

    assert [d.host_path for d in response.devices] == [
        "/dev/nvidiactl",
        "/dev/nvidia3",
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
        "/dev/nvidia-caps/nvidia-cap21",
        "/dev/nvidia-caps/nvidia-cap22",
    ]


def test_cdi_only_response_has_no_env_and_no_mounts() -> None:
    r = shared_resource(options=PluginOptions(device_list_strategy=(DeviceListStrategy.CDI_CRI,)))

    response = respond(r, ["GPU-0::0", "GPU-0::1"])

    assert [c.name for c in response.cdi_devices] == ["nvidia.com/gpu=GPU-0"]
    assert not response.envs and not response.mounts


def test_an_empty_request_gets_an_empty_device_list() -> None:
    assert respond(shared_resource(), []).envs[VISIBLE_DEVICES] == ""


# -- preferred_devices, pure --------------------------------------------------------------------


def prefer(r: Resource, available: list[str], size: int, must: tuple[str, ...] = ()) -> list[str]:
    """The preference as the Python reader reads the offer, checked against the C reader's."""
    chosen = preferred_devices(r, r.by_id(), available, list(must), size)
    request = api_pb2.ContainerPreferredAllocationRequest(
        available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
    )
    assert ResourceIndex(r).preferred_wire(request.SerializeToString()) == [i.encode() for i in chosen]
    return chosen


def test_distributed_picks_the_least_allocated_gpu() -> None:
    r = shared_resource(per_gpu=4, gpus=2)
    # GPU-0 has three replicas taken (only ::3 available), GPU-1 has one taken.
    available = ["GPU-0::3", "GPU-1::1", "GPU-1::2", "GPU-1::3"]

    assert [i.split("::")[0] for i in prefer(r, available, 1)] == ["GPU-1"]


def test_distributed_ties_go_to_a_gpu_not_yet_in_this_allocation() -> None:
    r = shared_resource(per_gpu=2, gpus=3)

    chosen = prefer(r, [d.id for d in r.devices], 3)

    assert sorted(i.split("::")[0] for i in chosen) == ["GPU-0", "GPU-1", "GPU-2"]


def test_distributed_breaks_a_load_tie_towards_a_gpu_not_yet_chosen() -> None:
    r = shared_resource(per_gpu=3, gpus=2)
    # GPU-1 already has one replica taken; after GPU-0 is picked both carry one.
    available = ["GPU-0::0", "GPU-0::1", "GPU-0::2", "GPU-1::1", "GPU-1::2"]

    chosen = prefer(r, available, 2)

    assert sorted(i.split("::")[0] for i in chosen) == ["GPU-0", "GPU-1"]


def test_packed_picks_the_most_allocated_gpu_that_has_room() -> None:
    r = shared_resource(per_gpu=4, gpus=2, options=PluginOptions(allocation_policy=AllocationPolicy.PACKED))
    available = ["GPU-0::3", "GPU-1::1", "GPU-1::2", "GPU-1::3"]

    assert prefer(r, available, 1) == ["GPU-0::3"]


def test_packed_fills_one_gpu_before_the_next() -> None:
    r = shared_resource(per_gpu=3, gpus=2, options=PluginOptions(allocation_policy=AllocationPolicy.PACKED))

    chosen = prefer(r, [d.id for d in r.devices], 4)

    assert Counter(i.split("::")[0] for i in chosen) == {"GPU-0": 3, "GPU-1": 1}


def test_required_devices_come_first_even_when_not_offered_as_available() -> None:
    r = shared_resource(per_gpu=2, gpus=2)

    chosen = prefer(r, ["GPU-0::0", "GPU-1::0", "GPU-1::1"], 2, must=("GPU-0::1",))

    assert chosen[0] == "GPU-0::1"
    assert len(chosen) == 2


def test_a_request_for_more_than_is_available_returns_all_available() -> None:
    r = shared_resource(per_gpu=2, gpus=1)

    assert sorted(prefer(r, ["GPU-0::1", "GPU-0::0", "nope"], 5)) == ["GPU-0::0", "GPU-0::1"]


def test_duplicate_available_ids_are_counted_once() -> None:
    r = shared_resource(per_gpu=2, gpus=2)

    chosen = prefer(r, ["GPU-0::0", "GPU-0::0", "GPU-1::0"], 2)

    assert sorted(chosen) == ["GPU-0::0", "GPU-1::0"]


def whole_gpus(count: int, links: dict[tuple[int, int], int]) -> Resource:
    topology = {**links, **{(b, a): s for (a, b), s in links.items()}}
    return Resource(
        name=GPU,
        devices=tuple(Device(id=f"GPU-{g}", uuid=f"GPU-{g}", gpu=g) for g in range(count)),
        topology=topology,
    )


def test_whole_gpus_maximise_the_pairwise_link_score() -> None:
    r = whole_gpus(4, {(0, 1): 10, (0, 2): 10, (0, 3): 10, (1, 2): 150, (1, 3): 10, (2, 3): 10})

    assert sorted(prefer(r, [d.id for d in r.devices], 2)) == ["GPU-1", "GPU-2"]


def test_whole_gpus_keep_required_ones_and_add_the_closest() -> None:
    r = whole_gpus(4, {(0, 1): 10, (0, 2): 10, (0, 3): 150, (1, 2): 150, (1, 3): 10, (2, 3): 10})

    assert prefer(r, [d.id for d in r.devices], 2, must=("GPU-0",)) == ["GPU-0", "GPU-3"]


def test_whole_gpu_search_falls_back_to_greedy_on_large_nodes() -> None:
    links = {(a, b): 10 for a in range(24) for b in range(a + 1, 24)}
    links[(20, 21)] = links[(21, 22)] = links[(20, 22)] = 150
    r = whole_gpus(24, links)

    chosen = prefer(r, [d.id for d in r.devices], 12, must=("GPU-21",))

    assert len(chosen) == 12 == len(set(chosen))
    assert {"GPU-20", "GPU-21", "GPU-22"} <= set(chosen)


def test_whole_gpus_without_topology_take_the_lowest_indices() -> None:
    r = whole_gpus(4, {})

    assert prefer(r, ["GPU-3", "GPU-1", "GPU-2"], 2) == ["GPU-1", "GPU-2"]
