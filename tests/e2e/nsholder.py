"""Holds the private mount namespace that the node side of the e2e cluster runs in.

Started by the harness as ``unshare --mount --propagation private -- python nsholder.py
HOST_NS BINDS``: ``unshare`` gives this process a new mount namespace in which no mount
propagates back to the host (``HOST_NS``, the harness's own namespace, is there to
check that). Here each ``[source, target]`` of the JSON list ``BINDS`` is bind-mounted,
with the mount(2) system call, so that no ``mount`` binary writes its bookkeeping under
the host's ``/run``. The kubelet, the fake CRI and every
``fatia run`` then join this namespace with ``nsenter --mount=/proc/<pid>/ns/mnt``:
they see the temporary ``/var/lib``, ``/var/log``, ``/run`` and sysctl files instead
of the host's, so the kubelet's writes to them stay in the temporary directory.

The process prints ``ready`` once the mounts are in place and then waits for its
standard input to close: the harness closes it at teardown, and if the harness dies
the pipe closes too. The namespace ends when its last process ends.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_BIND = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


def bind(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} -> {target}: {os.strerror(err)}")


def main() -> int:
    host_namespace, binds = sys.argv[1], json.loads(sys.argv[2])
    if os.readlink("/proc/self/ns/mnt") == host_namespace:
        print("nsholder: not in a private mount namespace (run it under unshare --mount)", file=sys.stderr)
        return 1
    for source, target in binds:
        bind(source, target)
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
