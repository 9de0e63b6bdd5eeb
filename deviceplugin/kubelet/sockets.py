"""fatia's sockets in the kubelet's directories: how they appear, their names, who listens.

A socket appears only once it is served (:func:`serve_at`). Every fatia process names
its sockets ``fatia-<resource>-<instance>.sock`` with an instance id of its own, so that
during a rolling update an old and a new fatia can both be registered without deleting
each other's sockets. Whether a socket is live is asked of the socket itself (a
connect): a socket nobody listens on was left by a killed process and may go; one that
answers belongs to a fatia still running.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from pathlib import Path

import grpc


def serve_at(server: grpc.Server, path: Path) -> None:
    """Start ``server`` on the unix socket ``path``, which appears only once it is served.

    gRPC binds a hidden name beside ``path`` (the kubelet's plugin watcher ignores names
    that start with a dot) and the socket is then renamed into place, replacing an old one
    in one step: whoever sees ``path`` can connect. gRPC also removes the name it bound
    when a server stops, at a moment of its own that can come after ``stop().wait()``
    returns; that name is now the hidden one, long gone, and never a newer socket at
    ``path`` (a re-served socket was seen to vanish that way).
    """
    hidden = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    server.add_insecure_port(f"unix://{hidden}")
    server.start()
    os.replace(hidden, path)


def socket_name(resource: str, instance: str) -> str:
    """``nvidia.com/mig-1g.5gb`` -> ``fatia-mig-1g.5gb-<instance>.sock``."""
    short = resource.removeprefix("nvidia.com/").replace("/", "_")
    return f"fatia-{short}-{instance}.sock"


def listening(path: Path) -> bool | None:
    """True if something accepts connections on ``path``; False if not; None if unsure."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError as exc:
        return False if exc.errno in (errno.ECONNREFUSED, errno.ENOENT) else None
    finally:
        probe.close()


def remove_stale_sockets(plugin_dir: Path) -> list[Path]:
    """Delete fatia sockets nobody listens on (left by a killed process); keep live ones."""
    removed = []
    for path in plugin_dir.glob("fatia-*.sock"):
        if listening(path) is False:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def other_instance(plugin_dir: Path, resource: str, own: str) -> Path | None:
    """The socket of another live fatia serving ``resource`` in ``plugin_dir``, if any."""
    prefix = socket_name(resource, "").removesuffix(".sock")
    for path in sorted(plugin_dir.glob(f"{prefix}*.sock")):
        instance = path.name.removeprefix(prefix).removesuffix(".sock")
        if path.name != own and "-" not in instance and listening(path):
            return path
    return None
