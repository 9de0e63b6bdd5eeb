"""One device-plugin gRPC server: a resource, its socket, its registration.

A :class:`PluginServer` serves the kubelet's ``v1beta1.DevicePlugin`` service
for one resource name on its own unix socket, and registers that socket with
the kubelet. It knows nothing of GPUs: it serves whatever
:class:`~deviceplugin.plan.resources.Resource` it was last given, and the allocation
policy decides the answers.

Kubelet behaviours this is built around (see the kubelet contract):

- Registration is synchronous: inside ``Register`` the kubelet dials the
  plugin's socket and calls ``GetDevicePluginOptions``, so the server must be
  serving, with a free worker, before ``Register`` is called.
- Every ListAndWatch message replaces the resource's whole device list, and a
  stream that ends makes every device unhealthy until the plugin registers
  again, so the stream stays open as long as the resource should exist.
- Allocate holds up pod admission: it does no I/O and no NVML, only lookups in
  data prepared when the resource was set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.kubelet.allocation import AllocationError, container_response, preferred_devices
from deviceplugin.plan.resources import Device, Resource

log = structlog.get_logger("fatia.plugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT_S = 15.0  # the kubelet's own dial-back may take up to 10 s
OPTIONS = api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


@dataclass(frozen=True)
class _Snapshot:
    """What the server answers with, swapped as one object when the resource changes."""

    resource: Resource
    by_id: dict[str, Device]
    listing: api_pb2.ListAndWatchResponse
    version: int


def listing(resource: Resource) -> api_pb2.ListAndWatchResponse:
    """The ListAndWatch message for a resource: every device, with its health and NUMA node."""
    response = api_pb2.ListAndWatchResponse()
    for device in resource.devices:
        entry = response.devices.add(ID=device.id, health=device.health)
        if device.numa_node is not None:
            # Only set when known: a present but empty topology hides the device
            # from the kubelet's GetAllocatableResources.
            entry.topology.nodes.add(ID=device.numa_node)
    return response


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(
        self,
        resource: Resource,
        *,
        host_device_nodes: tuple[str, ...],
        on_allocate: Callable[[str, int, float, bool], None] | None,
    ) -> None:
        self._changed = threading.Condition()
        self._closed = False
        self._streams = 0
        self._delivered = -1
        self._host_device_nodes = host_device_nodes
        self._on_allocate = on_allocate
        self._snapshot = _Snapshot(resource, resource.by_id(), listing(resource), 0)

    # -- state ------------------------------------------------------------

    def set_resource(self, resource: Resource) -> int:
        """Swap in a resource; streams send a new list only if the kubelet would see a change."""
        with self._changed:
            new_listing = listing(resource)
            version = self._snapshot.version
            if new_listing != self._snapshot.listing:
                version += 1
            self._snapshot = _Snapshot(resource, resource.by_id(), new_listing, version)
            self._changed.notify_all()
            return version

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_delivered(self, version: int, timeout: float) -> bool:
        """Wait until every open stream has sent ``version`` (or no stream is open)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._streams == 0 or self._delivered >= version, timeout)

    @property
    def resource(self) -> Resource:
        return self._snapshot.resource

    # -- RPCs -------------------------------------------------------------

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return OPTIONS

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        def wake() -> None:
            with self._changed:
                self._changed.notify_all()

        context.add_callback(wake)
        sent = [-1]  # the version this stream last sent
        with self._changed:
            self._streams += 1
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(
                        lambda: self._closed or not context.is_active() or self._snapshot.version != sent[0],
                        timeout=30,
                    )
                    if self._closed or not context.is_active():
                        return
                    snapshot = self._snapshot
                if snapshot.version == sent[0]:
                    continue
                yield snapshot.listing
                sent[0] = snapshot.version
                with self._changed:
                    self._delivered = max(self._delivered, sent[0])
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._streams -= 1
                self._changed.notify_all()

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        snapshot = self._snapshot
        response = api_pb2.PreferredAllocationResponse()
        for req in request.container_requests:
            try:
                ids = preferred_devices(
                    snapshot.resource,
                    snapshot.by_id,
                    req.available_deviceIDs,
                    req.must_include_deviceIDs,
                    req.allocation_size,
                )
            except Exception:  # a preference must never fail the pod's admission
                log.exception("preferred_allocation_failed", resource=snapshot.resource.name)
                ids = list(req.must_include_deviceIDs)
            response.container_responses.add(deviceIDs=ids)
        return response

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        started = time.perf_counter()
        snapshot = self._snapshot
        response = api_pb2.AllocateResponse()
        try:
            for req in request.container_requests:
                response.container_responses.append(
                    container_response(
                        snapshot.resource,
                        snapshot.by_id,
                        req.devices_ids,
                        host_device_nodes=self._host_device_nodes,
                    )
                )
        except AllocationError as exc:
            self._allocated(snapshot.resource.name, 0, started, ok=False)
            log.warning("allocate_rejected", resource=snapshot.resource.name, error=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        count = sum(len(r.devices_ids) for r in request.container_requests)
        self._allocated(snapshot.resource.name, count, started, ok=True)
        log.info(
            "allocated",
            resource=snapshot.resource.name,
            devices=[list(r.devices_ids) for r in request.container_requests],
        )
        return response

    def _allocated(self, resource: str, count: int, started: float, *, ok: bool) -> None:
        if self._on_allocate is not None:
            self._on_allocate(resource, count, time.perf_counter() - started, ok)

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


class PluginServer:
    """Serves one resource on ``plugin_dir/socket_name`` and registers it with the kubelet."""

    def __init__(
        self,
        resource: Resource,
        *,
        plugin_dir: Path,
        socket_name: str,
        host_device_nodes: tuple[str, ...] = (),
        on_allocate: Callable[[str, int, float, bool], None] | None = None,
    ) -> None:
        self.name = resource.name
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self._servicer = _Servicer(resource, host_device_nodes=host_device_nodes, on_allocate=on_allocate)
        self._server: grpc.Server | None = None
        self.registered_with: int | None = None  # inode of the kubelet.sock we registered with

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.socket_name

    @property
    def resource(self) -> Resource:
        return self._servicer.resource

    def serve(self) -> None:
        """(Re)start serving on a fresh socket; the registration is then to be done again."""
        self._stop_server()
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"dp-{self.name}"),
            options=[("grpc.so_reuseport", 0)],
        )
        api_pb2_grpc.add_DevicePluginServicer_to_server(self._servicer, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        self.registered_with = None

    def register(self, kubelet_inode: int) -> None:
        """Register with the kubelet; raises ``grpc.RpcError`` if the kubelet refuses or is absent."""
        request = api_pb2.RegisterRequest(
            version=API_VERSION, endpoint=self.socket_name, resource_name=self.name, options=OPTIONS
        )
        target = f"unix://{self.plugin_dir / KUBELET_SOCKET}"
        with grpc.insecure_channel(target) as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)
        self.registered_with = kubelet_inode

    def update(self, resource: Resource) -> int:
        return self._servicer.set_resource(resource)

    def wait_delivered(self, version: int, timeout: float) -> bool:
        return self._servicer.wait_delivered(version, timeout)

    def stop(self) -> None:
        self._servicer.close()
        self._stop_server()
        self.socket_path.unlink(missing_ok=True)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
