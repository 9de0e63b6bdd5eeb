"""Keeps one :class:`PluginServer` per advertised resource, registered with the kubelet.

The manager receives the whole desired ``resource name -> Resource`` map and
acts on the difference: a new name gets a server (serve, then register), a
changed one gets its new device list over the open ListAndWatch streams, and a
name that disappears first sends an empty list (so the node does not keep
stale capacity) and then stops. Nothing restarts when only devices change.

A watcher thread keeps every server registered across kubelet restarts. A new
kubelet deletes every socket in the device-plugin directory and creates a new
``kubelet.sock``; the watcher notices either signal (the server's own socket is
gone, or ``kubelet.sock`` has a new inode), serves a fresh socket and registers
again. It polls a few ``stat`` calls every 200 ms, which costs nothing
measurable while idle and re-registers well within a second.

Socket names are unique per process (``fatia-<resource>-<instance>.sock``), so
during a rolling update an old and a new fatia can both be registered without
deleting each other's sockets.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import structlog

from deviceplugin.kubelet.server import KUBELET_SOCKET, PluginServer
from deviceplugin.plan.resources import Resource

log = structlog.get_logger("fatia.manager")

POLL_INTERVAL_S = 0.2
RETRY_INTERVAL_S = 1.0
REMOVAL_FLUSH_S = 2.0


def socket_name(resource: str, instance: str) -> str:
    """``nvidia.com/mig-1g.5gb`` -> ``fatia-mig-1g.5gb-<instance>.sock``."""
    short = resource.removeprefix("nvidia.com/").replace("/", "_")
    return f"fatia-{short}-{instance}.sock"


def remove_stale_sockets(plugin_dir: Path) -> list[Path]:
    """Delete fatia sockets nobody listens on (left by a killed process); keep live ones."""
    removed = []
    for path in plugin_dir.glob("fatia-*.sock"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                path.unlink(missing_ok=True)
                removed.append(path)
        finally:
            probe.close()
    return removed


class PluginManager:
    """Starts, updates and stops plugin servers by difference, and keeps them registered."""

    def __init__(
        self,
        *,
        plugin_dir: Path,
        host_device_nodes: tuple[str, ...] = (),
        on_allocate: Callable[[str, int, float, bool], None] | None = None,
        on_register: Callable[[str], None] | None = None,
        instance: str | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.instance = instance or secrets.token_hex(3)
        self._host_device_nodes = host_device_nodes
        self._on_allocate = on_allocate
        self._on_register = on_register
        self._servers: dict[str, PluginServer] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._next_try: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_sockets(self.plugin_dir):
            log.info("stale_socket_removed", socket=str(path))
        self._thread = threading.Thread(target=self._watch, name="plugin-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for server in self._servers.values():
                server.stop()
            self._servers.clear()

    # -- desired state ----------------------------------------------------

    def update(self, resources: Mapping[str, Resource]) -> None:
        """Make the served resources exactly ``resources``."""
        with self._lock:
            current = set(self._servers)
            for name in sorted(current - set(resources)):
                self._remove(name)
            for name, resource in sorted(resources.items()):
                server = self._servers.get(name)
                if server is None:
                    self._add(resource)
                elif server.resource != resource:
                    server.update(resource)
                    log.info("resource_updated", resource=name, devices=len(resource.devices))
        self._wake.set()

    def _add(self, resource: Resource) -> None:
        server = PluginServer(
            resource,
            plugin_dir=self.plugin_dir,
            socket_name=socket_name(resource.name, self.instance),
            host_device_nodes=self._host_device_nodes,
            on_allocate=self._on_allocate,
        )
        server.serve()
        self._servers[resource.name] = server
        self._next_try[resource.name] = 0.0
        log.info(
            "resource_added", resource=resource.name, devices=len(resource.devices), socket=server.socket_name
        )

    def _remove(self, name: str) -> None:
        server = self._servers.pop(name)
        version = server.update(Resource(name=name, devices=()))
        if not server.wait_delivered(version, REMOVAL_FLUSH_S):
            log.warning("resource_removal_unacknowledged", resource=name)
        server.stop()
        self._next_try.pop(name, None)
        log.info("resource_removed", resource=name)

    # -- queries ----------------------------------------------------------

    def resources(self) -> dict[str, Resource]:
        with self._lock:
            return {name: server.resource for name, server in self._servers.items()}

    def registered(self) -> bool:
        """Every served resource is registered with the current kubelet."""
        inode = self._kubelet_inode()
        with self._lock:
            return inode is not None and all(s.registered_with == inode for s in self._servers.values())

    # -- watcher ----------------------------------------------------------

    def _kubelet_inode(self) -> int | None:
        try:
            return os.stat(self.plugin_dir / KUBELET_SOCKET).st_ino
        except FileNotFoundError:
            return None

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._keep_registered()
            except Exception:  # the watcher must outlive any single failure
                log.exception("plugin_watcher_failed")
            self._wake.wait(POLL_INTERVAL_S)
            self._wake.clear()

    def _keep_registered(self) -> None:
        inode = self._kubelet_inode()
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            if self._stopping.is_set():
                return
            socket_gone = not server.socket_path.exists()
            kubelet_changed = server.registered_with is not None and server.registered_with != inode
            if socket_gone or kubelet_changed:
                log.info(
                    "kubelet_restart_detected",
                    resource=server.name,
                    socket_gone=socket_gone,
                    kubelet_changed=kubelet_changed,
                )
                with self._lock:
                    if self._servers.get(server.name) is not server:
                        continue
                    server.serve()
                self._next_try[server.name] = 0.0
            if inode is not None and server.registered_with is None:
                self._try_register(server, inode)

    def _try_register(self, server: PluginServer, inode: int) -> None:
        now = time.monotonic()
        if now < self._next_try.get(server.name, 0.0):
            return
        try:
            server.register(inode)
        except grpc.RpcError as exc:
            self._next_try[server.name] = now + RETRY_INTERVAL_S
            log.warning("register_failed", resource=server.name, code=str(exc.code()), error=exc.details())
            return
        log.info("registered", resource=server.name, socket=server.socket_name)
        if self._on_register is not None:
            self._on_register(server.name)
