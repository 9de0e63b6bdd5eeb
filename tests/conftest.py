"""Shared fixtures: short socket directories, the kubelet emulator, a running fatia.

Unix socket paths are limited to 107 bytes, so socket directories live
directly under /tmp rather than in pytest's deep tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import structlog

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from deviceplugin.testing.apiserver import FakeKube
from deviceplugin.testing.kubelet import KubeletEmulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[list[MutableMapping[str, Any]]]:
    """Logs of in-process code are captured, never printed; and each test starts clean.

    ``fatia``'s CLI configures structlog globally (``logs.configure``); a test that calls
    it in-process would otherwise change logging for every test after it.
    """
    with structlog.testing.capture_logs() as captured:
        yield captured
    structlog.reset_defaults()


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """A running fake API server, stopped (connections and watches cut) after the test."""
    with FakeKube() as kube:
        yield kube


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ft", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(sockdir: Path) -> Iterator[KubeletEmulator]:
    """A started kubelet emulator: plugin dir ``sockdir/dp``, PodResources at ``sockdir/pr.sock``."""
    emulator = KubeletEmulator(sockdir / "dp", pod_resources_socket=sockdir / "pr.sock")
    emulator.start()
    yield emulator
    emulator.close()


@dataclass
class FatiaProcess:
    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class RunFatia(Protocol):
    """The ``run_fatia`` fixture: start ``fatia run --nvml NVML`` against the kubelet emulator."""

    def __call__(
        self,
        nvml: str,
        *,
        config: Path | None = None,
        extra: tuple[str, ...] = (),
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> FatiaProcess: ...


@pytest.fixture
def run_fatia(sockdir: Path, kubelet: KubeletEmulator) -> Iterator[RunFatia]:
    """Start ``fatia run`` as a real process against the emulator: ``run_fatia(nvml, config=...)``."""
    started: list[FatiaProcess] = []

    def start(
        nvml: str,
        *,
        config: Path | None = None,
        extra: tuple[str, ...] = (),
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> FatiaProcess:
        state = state_dir or sockdir / "state"
        log = sockdir / f"fatia-{len(started)}.log"
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
            str(sockdir / "pr.sock"),
            "--node-name",
            "node-a",
            "--log-format",
            "json",
            *extra,
        ]
        if config is not None:
            args += ["--config", str(config)]
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO, env={**os.environ, **(env or {})}
            )
        handle = FatiaProcess(proc, state, log)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def wait_until(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``condition()`` for things no event tells about (files another process writes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory where the host has one: the simulator and the MIG journal
    rename (and fsync) on every NVML step, which a disk makes the slowest part of a test."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="fatia-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class RecordingNvml:
    """Forwards every call to an NVML (the simulator) and records its name and arguments.

    It only watches: each call still reaches the real simulator.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith("nvml") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return attr(*args, **kwargs)

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.names())
