"""Specification of the kubelet side of the device plugin: registration, ListAndWatch, restarts.

Everything runs over real gRPC on real unix sockets against the kubelet
emulator (``deviceplugin.testing.kubelet``), which dials back and calls
``GetDevicePluginOptions`` inside ``Register`` and consumes ListAndWatch as the
kubelet does. Tests wait on the emulator's conditions, never on sleeps.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import wait_until

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.config.schema import DeviceListStrategy, PluginOptions
from deviceplugin.kubelet.manager import PluginManager
from deviceplugin.kubelet.server import PluginServer
from deviceplugin.kubelet.sockets import listening, remove_stale_sockets, serve_at, socket_name
from deviceplugin.plan.resources import HEALTHY, UNHEALTHY, Device, Resource
from deviceplugin.testing.kubelet import KubeletEmulator, is_extended_resource_name

GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-1g.5gb"


def resource(
    name: str, ids: list[str], *, numa: list[int | None] | None = None, unhealthy: tuple[str, ...] = ()
) -> Resource:
    nodes = numa or [None] * len(ids)
    return Resource(
        name=name,
        devices=tuple(
            Device(id=i, uuid=i, gpu=n, numa_node=nodes[n], health=UNHEALTHY if i in unhealthy else HEALTHY)
            for n, i in enumerate(ids)
        ),
    )


def all_healthy(r: Resource) -> dict[str, str]:
    return {d.id: HEALTHY for d in r.devices}


class RecordingKubelet(KubeletEmulator):
    """The emulator, also keeping each RegisterRequest and the options its dial-back got."""

    def __init__(self, plugin_dir: Path) -> None:
        super().__init__(plugin_dir)
        self.requests: list[api_pb2.RegisterRequest] = []
        self.dialled_back: list[api_pb2.DevicePluginOptions] = []

    def _register(self, request: api_pb2.RegisterRequest) -> None:
        self.requests.append(request)
        super()._register(request)  # returns only after GetDevicePluginOptions was answered
        with self._changed:
            self.dialled_back.append(self._endpoints[request.resource_name].options)


@pytest.fixture
def recording_kubelet(sockdir: Path) -> Iterator[RecordingKubelet]:
    emulator = RecordingKubelet(sockdir / "dp")
    emulator.start()
    yield emulator
    emulator.close()


@pytest.fixture
def stopped(kubelet: KubeletEmulator) -> Iterator[ExitStack]:
    """Stops the servers and managers a test starts, newest first, before the emulator closes."""
    with ExitStack() as stack:
        yield stack


def start_server(
    stopped: ExitStack, plugin_dir: Path, r: Resource, sock: str = "fatia-test.sock"
) -> PluginServer:
    server = PluginServer(r, plugin_dir=plugin_dir, socket_name=sock)
    server.serve()
    stopped.callback(server.stop)
    return server


def start_manager(stopped: ExitStack, plugin_dir: Path, instance: str = "t1") -> PluginManager:
    manager = PluginManager(plugin_dir=plugin_dir, instance=instance)
    manager.start()
    stopped.callback(manager.stop)
    return manager


@pytest.fixture
def manager(kubelet: KubeletEmulator, stopped: ExitStack) -> PluginManager:
    """A started manager (instance ``t1``) on the emulator's plugin directory."""
    return start_manager(stopped, kubelet.plugin_dir)


def first_listing(path: Path) -> api_pb2.ListAndWatchResponse:
    """Open a ListAndWatch stream on a plugin socket ourselves and read its first message."""
    with grpc.insecure_channel(f"unix://{path}") as channel:
        stream = api_pb2_grpc.DevicePluginStub(channel).ListAndWatch(api_pb2.Empty(), timeout=5)
        try:
            first: api_pb2.ListAndWatchResponse = next(stream)
            return first
        finally:
            stream.cancel()


# -- registration --------------------------------------------------------------------------------


@contextmanager
def registered(kubelet: RecordingKubelet) -> Iterator[None]:
    """One GPU served on ``fatia-gpu-x.sock`` and registered with ``kubelet``; stopped on exit."""
    server = PluginServer(
        resource(GPU, ["GPU-a"]), plugin_dir=kubelet.plugin_dir, socket_name="fatia-gpu-x.sock"
    )
    server.serve()
    try:
        server.register(kubelet_inode=1)
        yield
    finally:
        server.stop()


def test_register_returns_after_the_kubelet_dialled_back_for_options(
    recording_kubelet: RecordingKubelet,
) -> None:
    with registered(recording_kubelet):
        assert recording_kubelet.registrations == [(GPU, "fatia-gpu-x.sock")]
        assert len(recording_kubelet.dialled_back) == 1  # GetDevicePluginOptions answered in Register


def test_preferred_allocation_is_offered_in_both_register_options_and_get_options(
    recording_kubelet: RecordingKubelet,
) -> None:
    with registered(recording_kubelet):
        (request,) = recording_kubelet.requests
        (dialled,) = recording_kubelet.dialled_back
        assert request.version == "v1beta1"
        assert request.options.get_preferred_allocation_available
        assert dialled.get_preferred_allocation_available
        assert request.options == dialled


def test_register_endpoint_is_the_socket_file_name_not_a_path(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({MIG: resource(MIG, ["MIG-a"])})

    assert kubelet.wait_for(lambda k: k.connected(MIG))
    ((name, endpoint),) = kubelet.registrations
    assert (name, endpoint) == (MIG, socket_name(MIG, "t1"))
    assert "/" not in endpoint
    assert (kubelet.plugin_dir / endpoint).is_socket()


@pytest.mark.parametrize(
    "name",
    [
        "nvidia.com/gpu",
        "nvidia.com/gpu.shared",
        "nvidia.com/mig-1g.5gb",
        "nvidia.com/mig-1g.10gb.me",
    ],
)
def test_nvidia_names_are_extended_resource_names(name: str) -> None:
    assert is_extended_resource_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "gpu",  # no prefix
        "kubernetes.io/gpu",  # reserved prefix
        "requests.nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb+me",  # '+' must be written as '.'
        "nvidia.com/-gpu",
        "Nvidia.com/gpu",  # the prefix is a DNS subdomain
        "nvidia.com/" + "g" * 64,
    ],
)
def test_names_the_kubelet_would_refuse_are_not_extended_resource_names(name: str) -> None:
    assert not is_extended_resource_name(name)


def test_kubelet_refuses_to_register_an_invalid_resource_name(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    server = start_server(stopped, kubelet.plugin_dir, resource("nvidia.com/mig-1g.5gb+me", ["MIG-a"]))

    with pytest.raises(grpc.RpcError) as refused:
        server.register(kubelet_inode=1)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is invalid" in (refused.value.details() or "")
    assert kubelet.registrations == []


# -- ListAndWatch --------------------------------------------------------------------------------


def test_list_and_watch_sends_every_device_in_its_first_message(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    r = resource(GPU, ["GPU-a", "GPU-b", "GPU-c"], unhealthy=("GPU-c",))
    server = start_server(stopped, kubelet.plugin_dir, r)
    server.register(kubelet_inode=1)

    assert kubelet.wait_for(lambda k: k.updates(GPU) >= 1)
    assert kubelet.devices(GPU) == {"GPU-a": HEALTHY, "GPU-b": HEALTHY, "GPU-c": UNHEALTHY}
    assert kubelet.updates(GPU) == 1


def test_a_change_is_sent_as_a_full_new_list_on_the_open_stream(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    server = start_server(stopped, kubelet.plugin_dir, resource(GPU, ["GPU-a", "GPU-b", "GPU-c"]))
    server.register(kubelet_inode=1)
    assert kubelet.wait_for(lambda k: k.updates(GPU) == 1)

    server.update(resource(GPU, ["GPU-b", "GPU-d"], unhealthy=("GPU-b",)))

    assert kubelet.wait_for(lambda k: k.updates(GPU) == 2)
    assert kubelet.devices(GPU) == {"GPU-b": UNHEALTHY, "GPU-d": HEALTHY}  # GPU-a, GPU-c vanished
    assert kubelet.connected(GPU)
    assert len(kubelet.registrations) == 1


def test_topology_is_set_only_for_devices_whose_numa_node_is_known(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    r = resource(GPU, ["GPU-a", "GPU-b", "GPU-c"], numa=[0, 1, None])
    server = start_server(stopped, kubelet.plugin_dir, r)

    listing = first_listing(server.socket_path)

    by_id = {d.ID: d for d in listing.devices}
    assert [n.ID for n in by_id["GPU-a"].topology.nodes] == [0]
    assert [n.ID for n in by_id["GPU-b"].topology.nodes] == [1]
    assert not by_id["GPU-c"].HasField("topology")  # present-but-empty would hide it from kubelet


def test_options_rpc_answers_the_same_options_the_server_registers_with(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    server = start_server(stopped, kubelet.plugin_dir, resource(GPU, ["GPU-a"]))

    with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
        options = api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(api_pb2.Empty(), timeout=5)

    assert options.get_preferred_allocation_available
    assert not options.pre_start_required


# -- kubelet restarts ------------------------------------------------------------------------------


def test_kubelet_restart_reregisters_every_resource_with_every_device_within_a_second(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    desired = {GPU: resource(GPU, ["GPU-a", "GPU-b"]), MIG: resource(MIG, ["MIG-a", "MIG-b", "MIG-c"])}
    manager.update(desired)
    assert kubelet.wait_for(lambda k: all(k.devices(n) == all_healthy(r) for n, r in desired.items()))

    started = time.monotonic()
    kubelet.restart()
    back = kubelet.wait_for(
        lambda k: all(k.connected(n) and k.devices(n) == all_healthy(r) for n, r in desired.items()),
        timeout=5,
    )
    elapsed = time.monotonic() - started

    assert back
    assert elapsed < 1.0, f"re-registered after {elapsed:.2f} s"
    assert sorted(kubelet.registrations[2:]) == sorted((n, socket_name(n, "t1")) for n in desired)


def test_a_kubelet_that_starts_between_the_watchers_look_and_its_register_costs_no_wait(
    kubelet: KubeletEmulator, manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed kubelet leaves its socket; the new one deletes every plugin socket before it
    serves ``kubelet.sock``. If that happens after the watcher looked at the sockets and
    before it registers, a Register would make the new kubelet wait its 10 s for a socket
    that is gone (seen in the real cluster tier): the watcher must look again first."""
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: len(k.registrations) == 1 and k.connected(GPU))
    look, read = manager._check_streams, manager._kubelet_inode
    kubelet_sock = kubelet.plugin_dir / "kubelet.sock"
    inodes_read: list[int | None] = []
    dead_inode: list[int] = []
    restarted: list[float] = []

    def reading() -> int | None:
        inodes_read.append(read())
        return inodes_read[-1]

    def then_the_new_kubelet_starts(server: PluginServer, now: float) -> None:
        look(server, now)
        # In a look that began with the dead socket in place, just before it registers:
        looked_at_dead = bool(dead_inode) and inodes_read[-1] == dead_inode[0]
        if looked_at_dead and not restarted and server.registered_with is None:
            kubelet.start()  # deletes every socket, the plugin's too, then serves kubelet.sock
            restarted.append(time.monotonic())

    monkeypatch.setattr(manager, "_kubelet_inode", reading)
    monkeypatch.setattr(manager, "_check_streams", then_the_new_kubelet_starts)
    kubelet.stop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(kubelet_sock))  # what a killed kubelet leaves
        dead_inode.append(kubelet_sock.stat().st_ino)
    manager._fs.wake()

    assert kubelet.wait_for(
        lambda k: len(k.registrations) == 2 and k.devices(GPU) == {"GPU-a": HEALTHY}, timeout=15
    )
    assert restarted
    assert time.monotonic() - restarted[0] < 2.0


def test_deleting_the_plugin_socket_alone_makes_it_register_again(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: len(k.registrations) == 1 and k.updates(GPU) == 1)
    sock = kubelet.plugin_dir / socket_name(GPU, "t1")

    sock.unlink()

    assert kubelet.wait_for(lambda k: len(k.registrations) == 2 and k.updates(GPU) == 1, timeout=3)
    assert kubelet.registrations[1] == (GPU, sock.name)
    assert kubelet.devices(GPU) == {"GPU-a": HEALTHY}
    assert sock.is_socket()


def test_manager_registers_as_soon_as_a_kubelet_appears(sockdir: Path, stopped: ExitStack) -> None:
    plugin_dir = sockdir / "late"
    manager = start_manager(stopped, plugin_dir)
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert not manager.registered()

    late = KubeletEmulator(plugin_dir)
    late.start()
    try:
        assert late.wait_for(lambda k: k.devices(GPU) == {"GPU-a": HEALTHY}, timeout=3)
        assert wait_until(manager.registered)  # set once Register returns, after the stream opened
    finally:
        late.close()


# -- the manager: resources appear, change and vanish -------------------------------------------


def test_a_new_resource_gets_its_own_socket_and_registration(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: k.connected(GPU))

    manager.update({GPU: resource(GPU, ["GPU-a"]), MIG: resource(MIG, ["MIG-a"])})

    assert kubelet.wait_for(lambda k: k.devices(MIG) == {"MIG-a": HEALTHY})
    assert (kubelet.plugin_dir / socket_name(MIG, "t1")).is_socket()
    assert kubelet.registrations == [(GPU, socket_name(GPU, "t1")), (MIG, socket_name(MIG, "t1"))]


def test_a_removed_resource_is_sent_an_empty_list_before_its_socket_goes(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({GPU: resource(GPU, ["GPU-a"]), MIG: resource(MIG, ["MIG-a", "MIG-b"])})
    assert kubelet.wait_for(lambda k: k.updates(MIG) == 1)

    manager.update({GPU: resource(GPU, ["GPU-a"])})

    assert kubelet.wait_for(lambda k: not k.connected(MIG))
    # A stream that just ends leaves the devices known but Unhealthy (see the next test);
    # only an empty list first leaves none at all.
    assert kubelet.devices(MIG) == {}
    assert kubelet.updates(MIG) == 2
    assert not (kubelet.plugin_dir / socket_name(MIG, "t1")).exists()
    assert kubelet.connected(GPU)


def test_a_stream_that_just_ends_leaves_devices_unhealthy_not_gone(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({MIG: resource(MIG, ["MIG-a"])})
    assert kubelet.wait_for(lambda k: k.updates(MIG) == 1)

    manager.stop()

    assert kubelet.wait_for(lambda k: not k.connected(MIG))
    assert kubelet.devices(MIG) == {"MIG-a": UNHEALTHY}


def test_changed_devices_reach_the_kubelet_without_a_new_socket_or_registration(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({MIG: resource(MIG, ["MIG-a"])})
    assert kubelet.wait_for(lambda k: k.updates(MIG) == 1)
    inode = (kubelet.plugin_dir / socket_name(MIG, "t1")).stat().st_ino

    manager.update({MIG: resource(MIG, ["MIG-a", "MIG-b"])})

    assert kubelet.wait_for(lambda k: k.devices(MIG) == {"MIG-a": HEALTHY, "MIG-b": HEALTHY})
    assert len(kubelet.registrations) == 1
    assert (kubelet.plugin_dir / socket_name(MIG, "t1")).stat().st_ino == inode


def test_an_unchanged_resource_sends_nothing(kubelet: KubeletEmulator, manager: PluginManager) -> None:
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: k.updates(GPU) == 1)

    manager.update({GPU: resource(GPU, ["GPU-a"])})
    manager.update({GPU: resource(GPU, ["GPU-b"])})  # a later change: messages arrive in order

    assert kubelet.wait_for(lambda k: k.devices(GPU) == {"GPU-b": HEALTHY})
    assert kubelet.updates(GPU) == 2


def test_a_change_the_kubelet_cannot_see_sends_no_list_but_takes_effect(
    kubelet: KubeletEmulator, manager: PluginManager
) -> None:
    manager.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: k.updates(GPU) == 1)
    cdi = PluginOptions(device_list_strategy=(DeviceListStrategy.CDI_CRI,))

    manager.update({GPU: replace(resource(GPU, ["GPU-a"]), options=cdi)})
    response = kubelet.allocate_ids("p", GPU, ["GPU-a"]).response
    manager.update({GPU: replace(resource(GPU, ["GPU-b"]), options=cdi)})  # a later, visible change

    assert [c.name for c in response.cdi_devices] == ["nvidia.com/gpu=GPU-a"]
    assert kubelet.wait_for(lambda k: k.devices(GPU) == {"GPU-b": HEALTHY})
    assert kubelet.updates(GPU) == 2


# -- unique sockets per process -------------------------------------------------------------------


def test_socket_names_carry_the_resource_and_the_instance() -> None:
    assert socket_name("nvidia.com/gpu", "ab12cd") == "fatia-gpu-ab12cd.sock"
    assert socket_name("nvidia.com/mig-1g.5gb", "ab12cd") == "fatia-mig-1g.5gb-ab12cd.sock"


def start_old_and_new(kubelet: KubeletEmulator, stopped: ExitStack) -> PluginManager:
    """Instance ``old`` serving GPU-a and registered, then instance ``new`` started beside it
    with the same device (as in a DaemonSet's surge update); returns ``old``."""
    old = start_manager(stopped, kubelet.plugin_dir, instance="old")
    old.update({GPU: resource(GPU, ["GPU-a"])})
    assert kubelet.wait_for(lambda k: len(k.registrations) == 1)
    new = start_manager(stopped, kubelet.plugin_dir, instance="new")
    new.update({GPU: resource(GPU, ["GPU-a"])})
    return old


def test_two_instances_register_side_by_side_on_their_own_sockets(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    start_old_and_new(kubelet, stopped)

    assert kubelet.wait_for(lambda k: len(k.registrations) == 2)
    assert kubelet.registrations == [(GPU, "fatia-gpu-old.sock"), (GPU, "fatia-gpu-new.sock")]
    assert (kubelet.plugin_dir / "fatia-gpu-old.sock").is_socket()
    assert (kubelet.plugin_dir / "fatia-gpu-new.sock").is_socket()


def test_stopping_one_instance_keeps_the_other_ones_socket_and_registration(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    old = start_old_and_new(kubelet, stopped)
    assert kubelet.wait_for(lambda k: len(k.registrations) == 2 and k.devices(GPU) == {"GPU-a": HEALTHY})

    old.stop()

    assert not (kubelet.plugin_dir / "fatia-gpu-old.sock").exists()
    assert (kubelet.plugin_dir / "fatia-gpu-new.sock").is_socket()
    assert kubelet.connected(GPU)
    assert kubelet.devices(GPU) == {"GPU-a": HEALTHY}
    assert kubelet.allocate("p", GPU, 1).response.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-a"


def test_remove_stale_sockets_deletes_dead_fatia_sockets_and_keeps_live_ones(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    live = start_server(stopped, kubelet.plugin_dir, resource(GPU, ["GPU-a"]), "fatia-gpu-live.sock")
    dead = kubelet.plugin_dir / "fatia-gpu-dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))  # bound, never listened on, closed: the file of a killed process
    other = kubelet.plugin_dir / "other-vendor.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(other))

    removed = remove_stale_sockets(kubelet.plugin_dir)

    assert removed == [dead]
    assert not dead.exists()
    assert live.socket_path.is_socket()
    assert other.exists()  # not ours to judge
    assert (kubelet.plugin_dir / "kubelet.sock").is_socket()


def test_a_socket_served_again_is_never_removed_by_the_server_it_replaced(tmp_path: Path) -> None:
    """gRPC removes the path it bound when its server stops: a new server at the same path
    must not lose its socket to the old one's stop."""
    path = tmp_path / "fatia-gpu-x.sock"
    servers = [grpc.server(futures.ThreadPoolExecutor(max_workers=1)) for _ in range(2)]
    old, new = servers
    serve_at(old, path)
    first = path.stat().st_ino
    serve_at(new, path)  # replaces the old socket in one step
    try:
        assert path.stat().st_ino != first
        old.stop(grace=None).wait(5)

        assert listening(path) is True
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no hidden name left
    finally:
        new.stop(grace=None).wait(5)


def test_a_starting_manager_removes_a_dead_socket_left_by_a_killed_instance(
    kubelet: KubeletEmulator, stopped: ExitStack
) -> None:
    dead = kubelet.plugin_dir / "fatia-gpu-killed.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))

    start_manager(stopped, kubelet.plugin_dir)

    assert not dead.exists()
