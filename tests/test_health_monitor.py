"""Health decisions in-process: the monitor over the simulated NVML, with a test clock.

``tests/test_health.py`` checks the same behaviour end to end through ``fatia run`` and the
kubelet emulator; these tests drive :class:`HealthMonitor` directly, so that recovery
timing is checked by moving a clock, not by sleeping through quiet periods, and so that
the loop's own failure modes (a bug, a GPU NVML cannot name) can be provoked precisely.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
import pytest
from conftest import Clock, wait_until

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.health.events import Finding, What
from deviceplugin.health.judge import Devices, judge
from deviceplugin.health.monitor import HealthMonitor
from deviceplugin.health.state import HealthState, clamp_seconds
from deviceplugin.telemetry.metrics import Metrics
from mig.inventory import InventoryReader
from mig.sim.nvml import SimControl, SimNvml, open_sim
from mig.sim.state import SimFault

XID_FATAL, XID_IGNORED = 79, 13


@dataclass
class Recorder:
    """What the monitor reports: every unhealthy set, and every Event."""

    changes: list[frozenset[str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_change(self, unhealthy: frozenset[str]) -> None:
        with self.lock:
            self.changes.append(unhealthy)

    def event(self, kind: str, reason: str, message: str) -> None:
        with self.lock:
            self.events.append((kind, reason, message))

    @property
    def last(self) -> frozenset[str]:
        with self.lock:
            return self.changes[-1] if self.changes else frozenset()

    def reasons(self) -> list[str]:
        with self.lock:
            return [reason for _, reason, _ in self.events]


@dataclass
class Rig:
    nvml: Any
    sim: SimControl
    monitor: HealthMonitor
    clock: Clock
    seen: Recorder
    uuids: list[str]

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.sim.inject_event(0, data=XID_IGNORED)  # wake the loop now, about nothing fatal


def _rig(
    tmp_path: Path,
    *,
    wrap: Callable[[SimNvml], Any] | None = None,
    liveness: float = 10.0,
    policy: HealthPolicy | None = None,
) -> Rig:
    sim_nvml = open_sim(["h100-80gb", "h100-80gb"], state_dir=tmp_path, node="node-a")
    sim_nvml.nvmlInit()
    clock, seen = Clock(), Recorder()
    nvml = wrap(sim_nvml) if wrap is not None else sim_nvml
    monitor = HealthMonitor(
        nvml,
        on_change=seen.on_change,
        metrics=Metrics(),
        event=seen.event,
        clock=clock,
        liveness_seconds=liveness,
    )
    monitor.set_policy(policy or HealthPolicy(recovery_seconds=60))
    inventory = InventoryReader(sim_nvml).read()
    monitor.set_inventory(inventory)
    return Rig(nvml, SimControl(tmp_path), monitor, clock, seen, [g.uuid for g in inventory.gpus])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = _rig(tmp_path)
    rig.monitor.start()
    assert rig.monitor.watching.wait(5)
    yield rig
    rig.monitor.stop()


def test_a_fatal_xid_marks_only_its_gpu(rig: Rig) -> None:
    rig.sim.inject_event(1, data=XID_FATAL)
    assert wait_until(lambda: rig.seen.last == {rig.uuids[1]})
    assert rig.monitor.unhealthy() == {rig.uuids[1]}


def test_an_xid_from_a_gpu_nvml_no_longer_names_marks_only_that_gpu(rig: Rig) -> None:
    # A GPU that fell off the bus answers nvmlDeviceGetIndex with GPU_IS_LOST; the event
    # still carries its handle, which is enough to know which GPU it is.
    rig.sim.inject_fault(SimFault(call="nvmlDeviceGetIndex", error=pynvml.NVML_ERROR_GPU_IS_LOST, count=100))
    rig.sim.inject_event(1, data=XID_FATAL)
    assert wait_until(lambda: rig.seen.last == {rig.uuids[1]})
    rig.advance(1)
    assert wait_until(lambda: rig.seen.reasons().count("DeviceUnhealthy") == 1)
    assert rig.monitor.unhealthy() == {rig.uuids[1]}


def test_a_device_heals_once_quiet_for_the_recovery_time_and_not_before(rig: Rig) -> None:
    rig.sim.inject_event(0, data=XID_FATAL)
    assert wait_until(lambda: rig.seen.last == {rig.uuids[0]})
    rig.advance(59)
    assert not wait_until(lambda: not rig.seen.last, timeout=1.5)
    rig.advance(1)
    assert wait_until(lambda: not rig.seen.last)
    assert "DeviceHealthy" in rig.seen.reasons()


def test_a_lost_gpu_without_events_is_found_by_the_liveness_read(tmp_path: Path) -> None:
    rig = _rig(tmp_path, liveness=0.2)
    # GPU 1 delivers no events at all: only the periodic read can notice it is gone.
    rig.sim.inject_fault(
        SimFault(call="nvmlDeviceRegisterEvents", gpu=1, error=pynvml.NVML_ERROR_NOT_SUPPORTED)
    )
    rig.monitor.start()
    try:
        assert rig.monitor.watching.wait(5)
        assert rig.monitor.unhealthy() == set()
        rig.sim.set_lost(1)
        rig.advance(0.5)
        assert wait_until(lambda: rig.seen.last == {rig.uuids[1]})
    finally:
        rig.monitor.stop()


class _Buggy:
    """The simulated NVML, but waiting for events raises a plain bug, not an NVML error."""

    def __init__(self, nvml: SimNvml) -> None:
        self._nvml = nvml
        self.waits = 0

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self.waits += 1
        raise ZeroDivisionError("a bug in the loop")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvml, name)


def test_a_crash_of_the_loop_marks_nothing_and_is_reported(tmp_path: Path) -> None:
    rig = _rig(tmp_path, wrap=_Buggy)
    rig.monitor.start()
    try:
        assert wait_until(lambda: "HealthCheckCrashed" in rig.seen.reasons())
        assert rig.monitor.unhealthy() == set()
        assert all(not change for change in rig.seen.changes)
    finally:
        rig.monitor.stop()


def test_an_infinite_or_nan_recovery_time_does_not_crash_the_loop(tmp_path: Path) -> None:
    for quiet in (math.inf, math.nan, 1e308):
        rig = _rig(tmp_path / str(quiet), policy=HealthPolicy(recovery_seconds=quiet))
        rig.monitor.start()
        try:
            assert rig.monitor.watching.wait(5)
            rig.sim.inject_event(0, data=XID_FATAL)
            assert wait_until(lambda r=rig: r.seen.last == {r.uuids[0]})  # type: ignore[misc]
            rig.advance(24 * 3600)
            assert not wait_until(lambda r=rig: "HealthCheckCrashed" in r.seen.reasons(), timeout=0.5)  # type: ignore[misc]
            assert rig.monitor.unhealthy() == {rig.uuids[0]}
        finally:
            rig.monitor.stop()


def test_nvml_refusing_the_event_set_reports_every_device_unhealthy_until_it_works(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.sim.inject_fault(SimFault(call="nvmlEventSetCreate", error=999))
    rig.monitor.start()
    try:
        assert wait_until(lambda: rig.seen.last == set(rig.uuids))
        assert "HealthCheckFailed" in rig.seen.reasons()
    finally:
        rig.monitor.stop()


def test_stop_returns_without_waiting_out_the_nvml_wait(rig: Rig) -> None:
    thread = threading.Thread(target=rig.monitor.stop)
    started = rig.clock.now
    thread.start()
    thread.join(0.5)
    assert not thread.is_alive()
    assert rig.clock.now == started


# -- the pure state --------------------------------------------------------------


def test_health_state_reports_only_newly_unhealthy_devices() -> None:
    state = HealthState()
    assert state.mark(["a", "b"], 10.0) == ["a", "b"]
    assert state.mark(["b", "c"], 11.0) == ["c"]
    assert state.unhealthy() == {"a", "b", "c"}


def test_health_state_is_due_only_after_the_quiet_time_since_the_last_evidence() -> None:
    state = HealthState()
    state.mark(["a"], 10.0)
    state.mark(["a"], 20.0)
    assert state.due(79.9, 60) == []
    assert state.due(80.0, 60) == ["a"]
    assert state.next_recovery_in(30.0, 60) == pytest.approx(50.0)


def test_health_state_forgets_devices_that_no_longer_exist() -> None:
    state = HealthState()
    state.mark(["GPU-1", "MIG-1"], 1.0)
    assert state.keep_only({"GPU-1"}) == ["MIG-1"]
    assert state.unhealthy() == {"GPU-1"}


@pytest.mark.parametrize(
    ("value", "expected"), [(math.inf, 604800.0), (math.nan, 604800.0), (-5.0, 0.01), (30.0, 30.0)]
)
def test_every_duration_is_clamped(value: float, expected: float) -> None:
    assert clamp_seconds(value) == expected


# -- the pure judgement ------------------------------------------------------------

DEVICES = Devices({0: "GPU-0", 1: "GPU-1"}, {(1, 3, 0): "MIG-1-3"})


@pytest.mark.parametrize(
    ("finding", "policy", "hurt"),
    [
        (Finding(0, What.XID, 79), HealthPolicy(), "GPU-0"),
        (Finding(0, What.XID, XID_IGNORED), HealthPolicy(), None),
        (Finding(0, What.XID, XID_IGNORED), HealthPolicy(fatal_xids=frozenset({XID_IGNORED})), "GPU-0"),
        (Finding(1, What.XID, 79, 3, 0), HealthPolicy(), "MIG-1-3"),
        (Finding(1, What.XID, 79, 5, 0), HealthPolicy(), "GPU-1"),  # attributed to no known device
        (Finding(1, What.ECC), HealthPolicy(), "GPU-1"),
        (Finding(1, What.ECC), HealthPolicy(enabled=False), None),
        (Finding(1, What.LOST), HealthPolicy(enabled=False), "GPU-1"),
        (Finding(7, What.LOST), HealthPolicy(), None),  # not in the inventory: never a guess
    ],
)
def test_evidence_hurts_exactly_the_device_it_is_about(
    finding: Finding, policy: HealthPolicy, hurt: str | None
) -> None:
    assert judge(finding, policy, DEVICES).uuid == hurt
