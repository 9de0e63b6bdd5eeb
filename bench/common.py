"""What the benchmarks share: a real ``fatia run`` against the kubelet emulator.

Every benchmark measures the shipped daemon, as a separate process, talking
real gRPC over unix sockets to the in-process kubelet emulator; how that
daemon is started and stopped is :mod:`deviceplugin.testing.daemon`, shared
with the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from deviceplugin.testing.daemon import FATIA, start_fatia_run
from deviceplugin.testing.kubelet import KubeletEmulator

MIB = 1024 * 1024


@dataclass
class Fatia:
    """A running ``fatia run`` and the emulated kubelet it registers with."""

    process: subprocess.Popen[bytes]
    kubelet: KubeletEmulator
    started: float  # perf_counter just before the process was started
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
    env: Mapping[str, str] | None = None,
    program: Sequence[str] = FATIA,
) -> Iterator[Fatia]:
    """Start the emulator, then ``fatia run --nvml NVML`` against it; stop both on exit.

    The daemon's log goes to ``workdir/fatia.log`` (as a container runtime would
    take it: per-call logging is part of what is measured). ``env`` and ``program``
    are as for :func:`~deviceplugin.testing.daemon.start_fatia_run`.
    """
    kubelet = KubeletEmulator(workdir / "dp", pod_resources_socket=workdir / "pr.sock")
    kubelet.start()
    started = time.perf_counter()
    daemon = start_fatia_run(
        nvml,
        state_dir=workdir / "state",
        plugin_dir=kubelet.plugin_dir,
        pod_resources_socket=workdir / "pr.sock",
        log=workdir / "fatia.log",
        node_name=node_name,
        config=config,
        extra=extra,
        env=env,
        program=program,
    )
    try:
        yield Fatia(daemon.process, kubelet, started, daemon.state_dir, daemon.log)
    finally:
        daemon.stop()
        kubelet.close()


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time that ``pid`` and its descendants have used so far."""
    total = 0.0
    for p in process_tree(pid):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def rss_mib(pid: int) -> float:
    """The resident memory of ``pid`` and its descendants, in MiB."""
    rss: int = sum(p.memory_info().rss for p in process_tree(pid))
    return rss / MIB


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def arguments(doc: str, **counts: int) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first line, ``--check``, and an integer
    option per keyword (``injections=50``: ``--injections``, 50 by default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    for name, default in counts.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser
