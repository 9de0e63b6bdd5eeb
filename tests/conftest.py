"""Shared fixtures: short socket directories, the kubelet emulator, a running fatia.

Unix socket paths are limited to 107 bytes, so socket directories live
directly under /tmp rather than in pytest's deep tmp_path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from deviceplugin.testing.apiserver import FakeKube
from deviceplugin.testing.daemon import FATIA, FatiaProcess, socket_dir, start_fatia_run
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
    with socket_dir("ft") as path:
        yield path


@pytest.fixture
def kubelet(sockdir: Path) -> Iterator[KubeletEmulator]:
    """A started kubelet emulator: plugin dir ``sockdir/dp``, PodResources at ``sockdir/pr.sock``."""
    emulator = KubeletEmulator(sockdir / "dp", pod_resources_socket=sockdir / "pr.sock")
    emulator.start()
    yield emulator
    emulator.close()


class RunFatia:
    """The ``run_fatia`` fixture: ``run_fatia(nvml, config=...)`` starts ``fatia run --nvml
    NVML`` as a real process against the kubelet emulator; each is stopped after the test."""

    def __init__(self, sockdir: Path, kubelet: KubeletEmulator) -> None:
        self._sockdir = sockdir
        self._kubelet = kubelet
        self.started: list[FatiaProcess] = []

    def __call__(
        self,
        nvml: str,
        *,
        config: Path | None = None,
        extra: tuple[str, ...] = (),
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
        program: Sequence[str] = FATIA,
    ) -> FatiaProcess:
        """``state_dir`` defaults to ``sockdir/state``; ``program`` is as for :func:`start_fatia_run`."""
        handle = start_fatia_run(
            nvml,
            state_dir=state_dir or self._sockdir / "state",
            plugin_dir=self._kubelet.plugin_dir,
            pod_resources_socket=self._sockdir / "pr.sock",
            log=self._sockdir / f"fatia-{len(self.started)}.log",
            config=config,
            extra=extra,
            env=env,
            program=program,
        )
        self.started.append(handle)
        return handle


@pytest.fixture
def run_fatia(sockdir: Path, kubelet: KubeletEmulator) -> Iterator[RunFatia]:
    launcher = RunFatia(sockdir, kubelet)
    yield launcher
    for handle in launcher.started:
        handle.stop()


def write_config(sockdir: Path, text: str) -> Path:
    """``sockdir/config.yaml`` holding ``text``: the config file a test gives fatia, and edits."""
    config = sockdir / "config.yaml"
    config.write_text(text)
    return config


class Clock:
    """A clock for code that takes one (``clock: Callable[[], float]``): it moves only when
    the test sets ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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
