"""A kubelet emulator: the device manager and PodResources server, as a plugin sees them.

It behaves like the real kubelet wherever a device plugin can tell, so the demo
and the tests exercise fatia against the real protocol over real unix sockets:

- on start it deletes every unix socket in the device-plugin directory, then
  serves ``v1beta1.Registration`` on a new ``kubelet.sock``;
- ``Register`` checks the version and the resource name, dials the plugin's
  socket back and calls ``GetDevicePluginOptions`` *before* it returns, then
  starts ListAndWatch; a newer registration of a resource replaces the older;
- every ListAndWatch message replaces the resource's device list; a stream
  that ends makes every device of the resource unhealthy;
- admission allocates per container: it picks healthy, unallocated devices,
  asks GetPreferredAllocation when the plugin offers it, and sends one
  Allocate with exactly one container request;
- PodResources ``List`` reports, per container, one entry per device ID.

:meth:`restart` is a kubelet restart: streams drop, sockets are deleted, a new
``kubelet.sock`` appears, allocations stay (they live in the checkpoint).
"""

from __future__ import annotations

import re
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from deviceplugin.api.podresources.v1 import api_pb2 as pr_pb2
from deviceplugin.api.podresources.v1 import api_pb2_grpc as pr_grpc
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc

_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's check on ``RegisterRequest.resource_name``."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    prefix, _, short = name.partition("/")
    return (
        len(prefix) <= 253
        and bool(_DNS_SUBDOMAIN.match(prefix))
        and len(short) <= 63
        and bool(_QUALIFIED_NAME.match(short))
    )


class AdmissionError(Exception):
    """The kubelet would reject the pod (UnexpectedAdmissionError)."""


@dataclass
class _Endpoint:
    resource: str
    socket: str
    channel: grpc.Channel
    stub: api_pb2_grpc.DevicePluginStub
    options: api_pb2.DevicePluginOptions
    devices: dict[str, str] = field(default_factory=dict)  # ID -> health
    updates: int = 0
    connected: bool = True


@dataclass
class Allocation:
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]
    response: api_pb2.ContainerAllocateResponse
    namespace: str = "default"


class KubeletEmulator:
    """Serves ``kubelet.sock`` and PodResources; tests and the demo drive it."""

    def __init__(self, plugin_dir: Path, *, pod_resources_socket: Path | None = None) -> None:
        self.plugin_dir = plugin_dir
        self.pod_resources_socket = pod_resources_socket
        self.registrations: list[tuple[str, str]] = []  # (resource, endpoint), in order
        self.allocations: list[Allocation] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._changed = threading.Condition()
        self._server: grpc.Server | None = None
        self._pr_server: grpc.Server | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._delete_sockets()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="kubelet"))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.plugin_dir / 'kubelet.sock'}")
        server.start()
        self._server = server
        if self.pod_resources_socket is not None and self._pr_server is None:
            self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
            self.pod_resources_socket.unlink(missing_ok=True)
            pr = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="podres"))
            pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), pr)
            pr.add_insecure_port(f"unix://{self.pod_resources_socket}")
            pr.start()
            self._pr_server = pr

    def stop(self) -> None:
        """The kubelet goes away: its socket stops answering, every stream drops."""
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        with self._changed:
            endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            endpoint.channel.close()
        (self.plugin_dir / "kubelet.sock").unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        if self._pr_server is not None:
            self._pr_server.stop(grace=None).wait(5)
            self._pr_server = None

    def restart(self) -> None:
        """Stop, delete every unix socket in the plugin directory, start again."""
        self.stop()
        with self._changed:
            self._endpoints.clear()
            self._changed.notify_all()
        self.start()

    def _delete_sockets(self) -> None:
        for path in self.plugin_dir.iterdir():
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except FileNotFoundError:
                pass

    # -- registration and ListAndWatch -------------------------------------

    def _register(self, request: api_pb2.RegisterRequest) -> None:
        if request.version != "v1beta1":
            raise ValueError(
                f"requested API version {request.version!r} is not supported by "
                f"kubelet. Supported version is 'v1beta1'"
            )
        if not is_extended_resource_name(request.resource_name):
            raise ValueError(f"the ResourceName {request.resource_name!r} is invalid")
        target = self.plugin_dir / request.endpoint
        # A fresh connection, as the kubelet's new ClientConn: with gRPC Python's shared
        # subchannel pool a dial-back could wait out the reconnect backoff (~1 s) of a
        # closing channel to the same path, e.g. the stream of a just-restarted kubelet.
        channel = grpc.insecure_channel(
            f"unix://{target}",
            options=[
                ("grpc.default_authority", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = api_pb2_grpc.DevicePluginStub(channel)
            options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
        except Exception:
            channel.close()
            raise
        endpoint = _Endpoint(request.resource_name, request.endpoint, channel, stub, options)
        with self._changed:
            old = self._endpoints.get(request.resource_name)
            self._endpoints[request.resource_name] = endpoint
            self.registrations.append((request.resource_name, request.endpoint))
            self._changed.notify_all()
        if old is not None:
            old.channel.close()
        threading.Thread(
            target=self._list_and_watch, args=(endpoint,), daemon=True, name=f"law-{request.resource_name}"
        ).start()

    def _list_and_watch(self, endpoint: _Endpoint) -> None:
        try:
            for response in endpoint.stub.ListAndWatch(api_pb2.Empty()):
                with self._changed:
                    endpoint.devices = {d.ID: d.health for d in response.devices}
                    endpoint.updates += 1
                    self._changed.notify_all()
        except (grpc.RpcError, ValueError):  # ValueError: the channel was closed before the call
            pass
        with self._changed:
            endpoint.connected = False
            endpoint.devices = {i: "Unhealthy" for i in endpoint.devices}
            self._changed.notify_all()

    # -- observations ---------------------------------------------------------

    def devices(self, resource: str) -> dict[str, str]:
        """The latest device list of a resource (ID -> health); empty if unknown."""
        with self._changed:
            endpoint = self._endpoints.get(resource)
            return dict(endpoint.devices) if endpoint else {}

    def resources(self) -> dict[str, dict[str, str]]:
        with self._changed:
            return {name: dict(e.devices) for name, e in self._endpoints.items() if e.devices}

    def healthy(self, resource: str) -> list[str]:
        return sorted(i for i, h in self.devices(resource).items() if h == "Healthy")

    def connected(self, resource: str) -> bool:
        with self._changed:
            endpoint = self._endpoints.get(resource)
            return endpoint is not None and endpoint.connected

    def updates(self, resource: str) -> int:
        with self._changed:
            endpoint = self._endpoints.get(resource)
            return endpoint.updates if endpoint else 0

    def wait_for(self, condition: Callable[[KubeletEmulator], bool], timeout: float = 5.0) -> bool:
        """Wait until ``condition(self)`` holds; checked on every change."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.25))
            return True

    # -- admission ------------------------------------------------------------

    def allocate(
        self, pod: str, resource: str, count: int, *, container: str = "main", namespace: str = "default"
    ) -> Allocation:
        """Admit one container asking for ``count`` devices, as the kubelet does."""
        with self._changed:
            endpoint = self._endpoints.get(resource)
            if endpoint is None or not endpoint.connected:
                raise AdmissionError(f"no registered device plugin for {resource}")
            taken = {i for a in self.allocations if a.resource == resource for i in a.device_ids}
            free = sorted(i for i, h in endpoint.devices.items() if h == "Healthy" and i not in taken)
        if len(free) < count:
            raise AdmissionError(f"requested {count} {resource}, only {len(free)} available")
        chosen = free[:count]
        if endpoint.options.get_preferred_allocation_available:
            preferred = endpoint.stub.GetPreferredAllocation(
                api_pb2.PreferredAllocationRequest(
                    container_requests=[
                        api_pb2.ContainerPreferredAllocationRequest(
                            available_deviceIDs=free, allocation_size=count
                        )
                    ]
                ),
                timeout=10,
            )
            picked = [i for i in preferred.container_responses[0].deviceIDs if i in free][:count]
            chosen = picked + [i for i in free if i not in picked][: count - len(picked)]
        return self.allocate_ids(pod, resource, chosen, container=container, namespace=namespace)

    def allocate_ids(
        self, pod: str, resource: str, ids: list[str], *, container: str = "main", namespace: str = "default"
    ) -> Allocation:
        """Send Allocate for exactly these IDs; a plugin error is an :class:`AdmissionError`."""
        with self._changed:
            endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise AdmissionError(f"no registered device plugin for {resource}")
        try:
            response = endpoint.stub.Allocate(
                api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)]
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            raise AdmissionError(f"Allocate failed due to {exc.details()}, which is unexpected") from exc
        if not response.container_responses:
            raise AdmissionError("no containers return in allocation response")
        allocation = Allocation(
            pod, container, resource, tuple(ids), response.container_responses[0], namespace
        )
        with self._changed:
            self.allocations.append(allocation)
            self._changed.notify_all()
        return allocation

    def release(self, pod: str) -> None:
        """The pod ended; its devices are free again."""
        with self._changed:
            self.allocations = [a for a in self.allocations if a.pod != pod]
            self._changed.notify_all()


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletEmulator) -> None:
        self._kubelet = kubelet

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        try:
            self._kubelet._register(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            context.abort(grpc.StatusCode.UNKNOWN, f"failed to get device plugin options: {exc}")
        return api_pb2.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: KubeletEmulator) -> None:
        self._kubelet = kubelet

    def _pods(self) -> list[pr_pb2.PodResources]:
        pods: dict[tuple[str, str], dict[str, list[Allocation]]] = {}
        for a in list(self._kubelet.allocations):
            pods.setdefault((a.namespace, a.pod), {}).setdefault(a.container, []).append(a)
        result = []
        for (namespace, name), containers in sorted(pods.items()):
            pod = pr_pb2.PodResources(name=name, namespace=namespace)
            for container, allocations in containers.items():
                entry = pod.containers.add(name=container)
                for a in allocations:
                    for device_id in a.device_ids:
                        entry.devices.add(resource_name=a.resource, device_ids=[device_id])
            result.append(pod)
        return result

    def List(
        self, request: pr_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr_pb2.ListPodResourcesResponse:
        return pr_pb2.ListPodResourcesResponse(pod_resources=self._pods())

    def GetAllocatableResources(
        self, request: pr_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> pr_pb2.AllocatableResourcesResponse:
        response = pr_pb2.AllocatableResourcesResponse()
        for resource, devices in self._kubelet.resources().items():
            for device_id, health in devices.items():
                if health == "Healthy":
                    response.devices.add(resource_name=resource, device_ids=[device_id])
        return response

    def Get(
        self, request: pr_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr_pb2.GetPodResourcesResponse:
        for pod in self._pods():
            if (pod.name, pod.namespace) == (request.pod_name, request.pod_namespace):
                return pr_pb2.GetPodResourcesResponse(pod_resources=pod)
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_namespace}/{request.pod_name} not found")
        raise AssertionError("unreachable")
