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
again. It sleeps on inotify (:mod:`mig.fswatch`) until the directory changes,
so it re-registers as soon as the new kubelet is there while an idle node costs nothing;
it still looks every 2 s, and every 200 ms where inotify cannot be had.

The kubelet keeps one client per resource name, and a client whose ListAndWatch stream
it closes is gone for good. During a rolling update with surge, the old fatia's stream
ending makes the kubelet drop the *new* fatia's client. So when the kubelet closes the
last stream of a resource still served, the watcher registers it again (after a short
grace, with backoff) — unless another live fatia serves the same resource: then that
one is the kubelet's client now, and this one stands by until its socket goes away, so
that two instances never take the resource from each other in turn.

Socket names are unique per process (``fatia-<resource>-<instance>.sock``), so
during a rolling update an old and a new fatia can both be registered without
deleting each other's sockets (:mod:`deviceplugin.kubelet.sockets`).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import structlog

from deviceplugin.kubelet.server import KUBELET_SOCKET, PluginServer
from deviceplugin.kubelet.sockets import listening, other_instance, remove_stale_sockets, socket_name
from deviceplugin.plan.resources import Resource
from deviceplugin.retry import Backoff
from mig.fswatch import DirWatch

log = structlog.get_logger("fatia.manager")

POLL_INTERVAL_S = 0.2  # without inotify
RESYNC_S = 2.0  # with inotify: a look now and then all the same
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
STREAM_GRACE_S = 0.3  # the kubelet may close the old stream before it opens the new one
REMOVAL_FLUSH_S = 2.0


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
        # Guarded by _lock: the agent's thread adds and removes servers, the watcher
        # re-serves and registers them. Every other field is the watcher's alone.
        self._servers: dict[str, PluginServer] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._fs = DirWatch([plugin_dir])
        self._next_try: dict[str, float] = {}
        self._backoff: dict[str, Backoff] = {}
        self._stream_ended: dict[str, float] = {}  # written by stream threads, read by the watcher
        self._standing_by: dict[str, Path] = {}  # resource -> the other fatia's socket
        self._registered_at: dict[str, float] = {}
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
        self._fs.wake()
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
            removed = [self._servers.pop(name) for name in sorted(set(self._servers) - set(resources))]
            for name, resource in sorted(resources.items()):
                server = self._servers.get(name)
                if server is None:
                    self._add(resource)
                elif server.resource != resource:
                    server.update(resource)
                    log.info("resource_updated", resource=name, devices=len(resource.devices))
        self._fs.wake()
        for server in removed:  # outside the lock: the watcher and /readyz go on meanwhile
            self._remove(server)

    def _add(self, resource: Resource) -> None:
        server = PluginServer(
            resource,
            plugin_dir=self.plugin_dir,
            socket_name=socket_name(resource.name, self.instance),
            host_device_nodes=self._host_device_nodes,
            on_allocate=self._on_allocate,
            on_stream_end=lambda: self._stream_end(resource.name),
        )
        server.serve()
        self._servers[resource.name] = server
        self._next_try[resource.name] = 0.0
        log.info(
            "resource_added", resource=resource.name, devices=len(resource.devices), socket=server.socket_name
        )

    def _remove(self, server: PluginServer) -> None:
        version = server.update(Resource(name=server.name, devices=()))
        if not server.wait_delivered(version, REMOVAL_FLUSH_S):
            log.warning("resource_removal_unacknowledged", resource=server.name)
        server.stop()
        log.info("resource_removed", resource=server.name)

    def _stream_end(self, name: str) -> None:
        """A stream thread: the kubelet closed a ListAndWatch stream of ``name``."""
        self._stream_ended[name] = time.monotonic()
        self._fs.wake()

    # -- queries ----------------------------------------------------------

    def resources(self) -> dict[str, Resource]:
        with self._lock:
            return {name: server.resource for name, server in self._servers.items()}

    def registered(self) -> bool:
        """Every served resource is registered with the current kubelet."""
        return self.ready()[0]

    def ready(self) -> tuple[bool, str]:
        """Whether the kubelet uses every served resource now, and if not, which and why."""
        inode = self._kubelet_inode()
        if inode is None:
            return False, "not registered with the kubelet: it is not running (no kubelet.sock)"
        with self._lock:
            servers = list(self._servers.values())
        unregistered = sorted(s.name for s in servers if s.registered_with != inode)
        if unregistered:
            return False, f"not registered with the kubelet: {', '.join(unregistered)}"
        standing_by = sorted(self._standing_by)
        if standing_by:
            return False, f"another fatia serves {', '.join(standing_by)}"
        return True, "ready"

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
            self._fs.wait(self._next_look(time.monotonic()))
        self._fs.close()

    def _next_look(self, now: float) -> float:
        """Seconds until the watcher must look again with no change in the directory."""
        due = [RESYNC_S if self._fs.event_driven else POLL_INTERVAL_S]
        due += [at - now for at in self._next_try.values() if at > now]
        due += [ended + STREAM_GRACE_S - now for ended in self._stream_ended.values()]
        return max(0.01, min(due))

    def _check_streams(self, server: PluginServer, now: float) -> None:
        """Register again a resource whose last stream the kubelet closed, or stand by."""
        name = server.name
        ended = self._stream_ended.get(name)
        other = self._standing_by.get(name)
        if other is not None and listening(other) is not True:
            log.info("other_instance_gone", resource=name, socket=other.name)
            del self._standing_by[name]
            server.registered_with = None
        if ended is None or now - ended < STREAM_GRACE_S or server.streams > 0:
            return
        del self._stream_ended[name]
        if server.registered_with is None:
            return
        other = other_instance(self.plugin_dir, name, server.socket_name)
        if other is not None:
            log.info("standing_by", resource=name, other=other.name)
            self._standing_by[name] = other
            return
        log.warning("stream_closed_by_kubelet", resource=name)
        server.registered_with = None
        if now - self._registered_at.get(name, 0.0) > RETRY_MAX_S:  # it held: start over
            self._backoff.pop(name, None)
            self._next_try[name] = 0.0

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
                self._standing_by.pop(server.name, None)
            self._check_streams(server, time.monotonic())
            standing_by = server.name in self._standing_by
            if inode is not None and server.registered_with is None and not standing_by:
                self._try_register(server, inode)

    def _try_register(self, server: PluginServer, inode: int) -> None:
        now = time.monotonic()
        if now < self._next_try.get(server.name, 0.0):
            return
        if self._kubelet_inode() != inode or not server.socket_path.exists():
            # A new kubelet came up since this look began, and deleted the socket: a Register
            # now would have it wait 10 s for the socket to answer. Look again first.
            self._fs.wake()
            return
        backoff = self._backoff.setdefault(server.name, Backoff(RETRY_MIN_S, RETRY_MAX_S))
        try:
            server.register(inode)
        except grpc.RpcError as exc:
            self._next_try[server.name] = now + backoff.next()
            log.warning("register_failed", resource=server.name, code=str(exc.code()), error=exc.details())
            return
        # Registering again too soon after this one (the kubelet closing streams in a loop)
        # waits for the backoff; a registration that holds resets it on the next success.
        self._next_try[server.name] = now + backoff.next()
        self._registered_at[server.name] = now
        log.info("registered", resource=server.name, socket=server.socket_name)
        if self._on_register is not None:
            self._on_register(server.name)
