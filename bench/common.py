"""What the benchmarks share: a real ``fatia run`` against the kubelet emulator.

Every benchmark measures the shipped daemon, as a separate process, talking
real gRPC over unix sockets to the in-process kubelet emulator. Directories
live directly under /tmp because unix socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.testing.kubelet import KubeletEmulator

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Fatia:
    """A running ``fatia run`` and the emulated kubelet it registers with."""

    process: subprocess.Popen[bytes]
    kubelet: KubeletEmulator
    started: float  # perf_counter just before Popen
    state_dir: Path
    log: Path


@contextmanager
def running_fatia(
    workdir: Path,
    nvml: str,
    *,
    config: Path | None = None,
    extra: Sequence[str] = (),
    node_name: str = "bench",
) -> Iterator[Fatia]:
    """Start the emulator, then ``fatia run --nvml NVML`` against it; stop both on exit.

    The daemon's log goes to ``workdir/fatia.log`` (as a container runtime would
    take it: per-call logging is part of what is measured).
    """
    kubelet = KubeletEmulator(workdir / "dp", pod_resources_socket=workdir / "pr.sock")
    kubelet.start()
    state, log = workdir / "state", workdir / "fatia.log"
    args = [
        sys.executable,
        "-m",
        "deviceplugin.cli.main",
        "run",
        "--nvml",
        nvml,
        "--state-dir",
        str(state),
        "--device-plugin-dir",
        str(kubelet.plugin_dir),
        "--pod-resources-socket",
        str(workdir / "pr.sock"),
        "--node-name",
        node_name,
        "--log-format",
        "json",
        *extra,
    ]
    if config is not None:
        args += ["--config", str(config)]
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=out, cwd=REPO)
    try:
        yield Fatia(process, kubelet, started, state, log)
    finally:
        stop(process)
        kubelet.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
