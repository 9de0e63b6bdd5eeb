"""``fatia run`` as a real process against the kubelet emulator, for tests and benchmarks.

Tests and benchmarks check the shipped daemon the way a node runs it: a separate process
talking real gRPC over unix sockets to the in-process :class:`KubeletEmulator`. This module
is the one place that knows the command line that takes (plugin directory, PodResources
socket, state directory, JSON logs), how it is started (its log to a file, stdout dropped)
and how it is stopped (SIGTERM, then SIGKILL if it hangs).

Unix socket paths are limited to 107 bytes, so the directories for them live directly
under /tmp (:func:`socket_dir`) rather than in a deep temporary path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deviceplugin.agent.status import read_status

REPO = Path(__file__).resolve().parents[2]

# The program of ``fatia ARGS``, run by this interpreter from this checkout.
FATIA: tuple[str, ...] = (sys.executable, "-m", "deviceplugin.cli.main")


def fatia_cli(
    *args: str, cwd: Path = REPO, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``fatia ARGS`` (``status``, ``plan``, ...) as a process to its end, output as text.

    ``env`` is the whole environment of the process (default: this process's).
    """
    return subprocess.run([*FATIA, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@contextmanager
def socket_dir(prefix: str) -> Iterator[Path]:
    """A new directory directly under /tmp, short enough for unix sockets; removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and SIGKILL if it has not exited 10 s later; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


@dataclass
class FatiaProcess:
    """A started ``fatia run``: the process, its state directory and the file its log goes to."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path

    def stop(self) -> int:
        return stop_process(self.process)

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def status(self) -> dict[str, Any]:
        """What it last wrote to its status file; empty before the first write."""
        try:
            return read_status(self.state_dir)
        except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
            return {}


def start_fatia_run(
    nvml: str,
    *,
    state_dir: Path,
    plugin_dir: Path,
    pod_resources_socket: Path,
    log: Path,
    node_name: str = "node-a",
    config: Path | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    program: Sequence[str] = FATIA,
) -> FatiaProcess:
    """Start ``fatia run --nvml NVML`` for a kubelet whose plugin directory is ``plugin_dir``.

    Its JSON log (stderr) goes to ``log``; ``env`` is added to this process's environment.
    ``program`` is what runs ``fatia`` with the arguments after it: a wrapper that sets up
    the process first (a resource limit, thread names) and then runs ``deviceplugin.cli.main``.
    """
    args = [
        *program,
        "run",
        "--nvml",
        nvml,
        "--state-dir",
        str(state_dir),
        "--device-plugin-dir",
        str(plugin_dir),
        "--pod-resources-socket",
        str(pod_resources_socket),
        "--node-name",
        node_name,
        "--log-format",
        "json",
        *extra,
        *(("--config", str(config)) if config is not None else ()),
    ]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO, env={**os.environ, **(env or {})}
        )
    return FatiaProcess(process, state_dir, log)
