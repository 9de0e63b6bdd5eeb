"""Registration with the kubelet's plugin watcher, as a DRA driver.

The kubelet watches ``<kubelet-dir>/plugins_registry/``; a socket that appears there is
asked ``GetInfo``: fatia answers type ``DRAPlugin``, name ``gpu.fatia.dev``, the endpoint
of its DRA service (``<kubelet-dir>/plugins/gpu.fatia.dev/dra.sock``) and, as "supported
versions", the gRPC services it offers there (``v1.DRAPlugin``, ``v1.DRAResourceHealth``).
The kubelet then reports the outcome with ``NotifyRegistrationStatus`` (passed on to
``on_status``: the driver publishes its devices only once the kubelet can prepare them).
Nothing is registered by calling the kubelet: serving the socket is the registration, and
removing it (at stop) unregisters.

A socket that disappears while fatia runs (someone cleaned the directory) is served again
within a second, so the kubelet finds the driver again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.pluginregistration.v1 import api_pb2, api_pb2_grpc
from deviceplugin.kubelet.sockets import serve_at

log = structlog.get_logger("fatia.dra")

PLUGIN_TYPE = "DRAPlugin"
DRA_SERVICE = "v1.DRAPlugin"
HEALTH_SERVICE = "v1.DRAResourceHealth"
WATCH_INTERVAL_S = 1.0


class _Servicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, info: api_pb2.PluginInfo, on_status: Callable[[bool], None] | None) -> None:
        self.info = info
        self.on_status = on_status
        self.registered = threading.Event()
        self.error: str | None = None
        self.notifications = 0

    def GetInfo(self, request: api_pb2.InfoRequest, context: grpc.ServicerContext) -> api_pb2.PluginInfo:
        return self.info

    def NotifyRegistrationStatus(
        self, request: api_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> api_pb2.RegistrationStatusResponse:
        self.notifications += 1
        if request.plugin_registered:
            self.error = None
            self.registered.set()
            log.info("registered", driver=self.info.name, endpoint=self.info.endpoint)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("register_failed", driver=self.info.name, error=request.error)
        if self.on_status is not None:
            self.on_status(request.plugin_registered)
        return api_pb2.RegistrationStatusResponse()


class RegistrationServer:
    """Serves ``pluginregistration.Registration`` on ``<registry_dir>/<driver>-reg.sock``."""

    def __init__(
        self,
        *,
        registry_dir: Path,
        driver: str,
        endpoint: Path,
        versions: tuple[str, ...] = (DRA_SERVICE,),
        on_status: Callable[[bool], None] | None = None,
    ) -> None:
        self.socket_path = registry_dir / f"{driver}-reg.sock"
        info = api_pb2.PluginInfo(
            type=PLUGIN_TYPE, name=driver, endpoint=str(endpoint), supported_versions=versions
        )
        self._servicer = _Servicer(info, on_status)
        self._server: grpc.Server | None = None
        self._inode: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dra-registration", daemon=True)

    @property
    def registered(self) -> threading.Event:
        """Set once the kubelet said it registered the driver (cleared if it says it failed)."""
        return self._servicer.registered

    @property
    def error(self) -> str | None:
        return self._servicer.error

    def start(self) -> None:
        self._serve()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(WATCH_INTERVAL_S * 2)
        self._stop_server()
        self.socket_path.unlink(missing_ok=True)

    def _serve(self) -> None:
        self._stop_server()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="dra-reg"),
            options=[("grpc.so_reuseport", 0)],
        )
        api_pb2_grpc.add_RegistrationServicer_to_server(self._servicer, server)
        serve_at(server, self.socket_path)
        self._server = server
        self._inode = self.socket_path.stat().st_ino

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                inode: int | None = self.socket_path.stat().st_ino
            except FileNotFoundError:
                inode = None
            if inode != self._inode and not self._stop.is_set():
                log.warning("registration_socket_lost", path=str(self.socket_path))
                self._servicer.registered.clear()
                try:
                    self._serve()
                except (OSError, RuntimeError) as exc:  # the directory itself is gone; try again
                    log.error("registration_serve_failed", path=str(self.socket_path), error=str(exc))
                    self._inode = None

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
