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
  data prepared when the resource was set (a
  :class:`~deviceplugin.kubelet.allocation.ResourceIndex`, built once per
  resource). Its ``allocated`` log line is written by a thread of the
  server's own, in batches (:class:`AllocationLog`), so the kubelet does not
  wait for the logger.
- GetPreferredAllocation offers every free device: each container's request is left
  serialized (:mod:`~deviceplugin.kubelet.wire`) and read by the offer reader in C,
  without a Python object per offered ID.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from google.protobuf.message import DecodeError

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.kubelet import wire
from deviceplugin.kubelet.allocation import ResourceIndex
from deviceplugin.kubelet.sockets import serve_at
from deviceplugin.plan.resources import Resource
from mig.errors import AllocationError

log = structlog.get_logger("fatia.plugin")

API_VERSION = "v1beta1"
_SERVICE = api_pb2.DESCRIPTOR.services_by_name["DevicePlugin"]
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT_S = 15.0  # the kubelet's own dial-back may take up to 10 s
ALLOCATION_LOG_BATCH_S = 0.02  # how long the allocation log gathers lines before writing
OPTIONS = api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


_Seen = tuple[tuple[str, str, int | None], ...]  # what the kubelet sees of each device


def _handlers(servicer: object) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, read off its descriptor; GetPreferredAllocation's messages
    are the :mod:`~deviceplugin.kubelet.wire` ones, with IDs as bytes."""
    handlers = {}
    for method in _SERVICE.methods:
        module = wire if method.name == "GetPreferredAllocation" else api_pb2
        request, response = (getattr(module, t.name) for t in (method.input_type, method.output_type))
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return handlers


@dataclass(frozen=True)
class _Snapshot:
    """What the server answers with, swapped as one object when the resource changes."""

    resource: Resource
    index: ResourceIndex
    seen: _Seen
    listing: api_pb2.ListAndWatchResponse
    version: int


def _must_include(container: bytes) -> list[bytes]:
    """A failed preference's answer: the container's must-include IDs, if they can be read."""
    try:
        return list(wire.ContainerPreferredAllocationRequest.FromString(container).must_include_deviceIDs)
    except DecodeError:
        return []


def _seen(resource: Resource) -> _Seen:
    return tuple((d.id, d.health, d.numa_node) for d in resource.devices)


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


class AllocationLog:
    """The ``allocated`` log lines of one server, written by a thread of their own.

    Rendering a structlog line costs more CPU than the rest of Allocate put
    together; paid on the handler's thread, the kubelet would wait for it.
    :meth:`record` only queues the request. The writer thread, started on the
    first one, blocks on the queue while there is nothing to write (no idle
    wake-ups), and on a line waits ``batch_s`` for more before writing them
    all, so a burst of allocations costs one wake-up, with warm caches. A line
    is therefore written (and timestamped) up to ``batch_s`` after its
    Allocate. :meth:`close` writes what is queued and ends the thread; a line
    recorded after it is written at once, by the recording thread.

    Threads: handler threads put on the queue, under ``_lock`` (which also
    guards ``_writer`` and ``_closed``); the writer thread alone takes from it.
    """

    def __init__(self, *, batch_s: float = ALLOCATION_LOG_BATCH_S) -> None:
        self._batch_s = batch_s
        # None is the close marker; the lock keeps every line ahead of it.
        self._pending: queue.SimpleQueue[tuple[str, api_pb2.AllocateRequest] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()  # cuts the writer's gathering wait short

    def record(self, resource: str, request: api_pb2.AllocateRequest) -> None:
        with self._lock:
            if not self._closed:
                self._pending.put((resource, request))
                if self._writer is None:
                    self._writer = threading.Thread(target=self._run, name="allocation-log", daemon=True)
                    self._writer.start()
                return
        _write_allocated(resource, request)

    def close(self, timeout: float = 5.0) -> None:
        """Write every queued line, then end the writer thread."""
        with self._lock:
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._pending.put(None)
        self._closing.set()
        if writer is not None:
            writer.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is not None:
                self._closing.wait(self._batch_s)  # let the rest of a burst arrive
            for entry in [first, *self._queued()]:
                if entry is None:
                    return
                _write_allocated(*entry)

    def _queued(self) -> Iterator[tuple[str, api_pb2.AllocateRequest] | None]:
        while True:
            try:
                yield self._pending.get_nowait()
            except queue.Empty:
                return


def _write_allocated(resource: str, request: api_pb2.AllocateRequest) -> None:
    log.info(
        "allocated", resource=resource, devices=[list(r.devices_ids) for r in request.container_requests]
    )


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(
        self,
        resource: Resource,
        *,
        host_device_nodes: tuple[str, ...],
        on_allocate: Callable[[str, int, float, bool], None] | None,
        on_stream_end: Callable[[], None] | None = None,
    ) -> None:
        self._changed = threading.Condition()
        self._on_stream_end = on_stream_end
        self._closed = False
        self._streams = 0
        self._delivered = -1
        self._host_device_nodes = host_device_nodes
        self._on_allocate = on_allocate
        self._allocation_log = AllocationLog()
        self._snapshot = _Snapshot(resource, self._index(resource), _seen(resource), listing(resource), 0)

    # -- state ------------------------------------------------------------

    def _index(self, resource: Resource) -> ResourceIndex:
        return ResourceIndex(resource, host_device_nodes=self._host_device_nodes)

    def set_resource(self, resource: Resource) -> int:
        """Swap in a resource; streams send a new list only if the kubelet would see a change."""
        index, seen = self._index(resource), _seen(resource)  # built outside the lock
        with self._changed:
            old = self._snapshot
            if seen == old.seen:
                new_listing, version = old.listing, old.version
            else:
                new_listing, version = listing(resource), old.version + 1
            self._snapshot = _Snapshot(resource, index, seen, new_listing, version)
            self._changed.notify_all()
            return version

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._allocation_log.close()

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
                ended_by_kubelet = not self._closed
            if ended_by_kubelet and self._on_stream_end is not None:
                self._on_stream_end()

    @property
    def streams(self) -> int:
        """ListAndWatch streams open now (the kubelet keeps one while it uses this plugin)."""
        return self._streams

    def GetPreferredAllocation(
        self, request: wire.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> wire.PreferredAllocationResponse:
        """Each container's request arrives serialized, for the offer reader (see
        :mod:`~deviceplugin.kubelet.wire`)."""
        index = self._snapshot.index
        response = wire.PreferredAllocationResponse()
        for container in request.container_requests:
            try:
                ids = index.preferred_wire(container)
            except Exception:  # a preference must never fail the pod's admission
                log.exception("preferred_allocation_failed", resource=index.resource.name)
                ids = _must_include(container)
            response.container_responses.add(deviceIDs=ids)
        return response

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        started = time.perf_counter()
        index = self._snapshot.index
        name = index.resource.name
        try:
            response = index.allocate_response([req.devices_ids for req in request.container_requests])
        except AllocationError as exc:
            self._allocated(name, 0, started, ok=False)
            log.warning("allocate_rejected", resource=name, error=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        count = sum(len(r.devices_ids) for r in request.container_requests)
        self._allocated(name, count, started, ok=True)
        self._allocation_log.record(name, request)
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
        on_stream_end: Callable[[], None] | None = None,
    ) -> None:
        self.name = resource.name
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self._servicer = _Servicer(
            resource,
            host_device_nodes=host_device_nodes,
            on_allocate=on_allocate,
            on_stream_end=on_stream_end,
        )
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
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"dp-{self.name}"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_registered_method_handlers(_SERVICE.full_name, _handlers(self._servicer))
        serve_at(server, self.socket_path)
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

    @property
    def streams(self) -> int:
        return self._servicer.streams

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
