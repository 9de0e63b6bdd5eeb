"""The agent's decisions in-process: the simulated NVML, a recording manager, a test clock.

The subprocess tests (``test_daemon.py`` and others) are the contract of ``fatia run``;
these drive :class:`Agent` directly so that what it offers, when it retries and what it
reports are checked without sockets, processes or sleeping through backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pynvml
import pytest
from conftest import Clock, wait_until

from deviceplugin.agent.loop import Agent
from deviceplugin.agent.status import AgentStatus, Phase
from deviceplugin.config.source import ConfigText
from deviceplugin.plan.resources import Resource
from deviceplugin.telemetry.metrics import Metrics
from mig.sim.nvml import SimControl, open_sim
from mig.sim.state import SimFault

GPU = "nvidia.com/gpu"
MIG_ON_GPU0 = "version: v1\ngpus: [{devices: [0], mig-devices: {3g.40gb: 2}}]\n"
REPLICAS = "version: v1\ngpus: [{devices: all, replicas: 2}]\n"
CREATE = "nvmlDeviceCreateGpuInstanceWithPlacement"
APPLY_S = 20.0  # a bound on a MIG apply in the simulator on a loaded machine, not a target


@dataclass
class Offered:
    """A plugin manager that records every full map it is handed."""

    history: list[dict[str, int]] = field(default_factory=list)

    def update(self, resources: Mapping[str, Resource]) -> None:
        self.history.append({name: len(r.devices) for name, r in resources.items()})

    def ready(self) -> tuple[bool, str]:
        return True, "ready"

    @property
    def now(self) -> dict[str, int]:
        return self.history[-1] if self.history else {}


@dataclass
class Held:
    uuids: set[str] = field(default_factory=set)

    def held_uuids(self) -> set[str]:
        return set(self.uuids)


@dataclass
class Events:
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    phases: list[str] = field(default_factory=list)

    def status(self, status: AgentStatus) -> None:
        self.phases.append(status.phase)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.seen.append((kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


@dataclass
class Rig:
    agent: Agent
    sim: SimControl
    offered: Offered
    held: Held
    events: Events
    clock: Clock
    metrics: Metrics

    def send(self, text: str) -> None:
        self.agent.config_changed(ConfigText(text, "test"))

    def tick(self, seconds: float) -> None:
        """Move the clock and wake the loop (a health change with nothing unhealthy)."""
        self.clock.now += seconds
        self.agent.health_changed(())

    def attempts(self, outcome: str) -> float:
        return self.metrics.reconfigurations.labels(outcome)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    nvml = open_sim(["h100-80gb", "h100-80gb"], state_dir=tmp_path, node="node-a")
    nvml.nvmlInit()
    offered, held, events, clock, metrics = Offered(), Held(), Events(), Clock(100.0), Metrics()
    agent = Agent(
        nvml=nvml,
        manager=offered,
        state_dir=tmp_path,
        pod_resources=held,
        metrics=metrics,
        reporter=events,
        proc_root=tmp_path / "proc",
        clock=clock,
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    yield Rig(agent, SimControl(tmp_path), offered, held, events, clock, metrics)
    agent.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_a_config_is_applied_and_its_devices_offered(rig: Rig) -> None:
    rig.send(REPLICAS)
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    assert rig.offered.now == {GPU: 4}
    assert wait_until(lambda: "Applied" in rig.events.reasons())  # sent just after the phase


def test_a_mig_apply_nvml_refuses_costs_that_gpu_only_on_every_attempt(rig: Rig) -> None:
    rig.sim.inject_fault(SimFault(call=CREATE, error=pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, count=100))
    rig.send(MIG_ON_GPU0)
    assert wait_until(lambda: rig.attempts("failed") == 1)
    for _ in range(3):  # retries, each rolled back on GPU 0 alone
        before = rig.attempts("failed")
        rig.tick(400)
        assert wait_until(lambda b=before: rig.attempts("failed") == b + 1)  # type: ignore[misc]
    # GPU 1 is offered from the first attempt on and never withdrawn; GPU 0 never offered.
    assert rig.offered.history and all(offer == {GPU: 1} for offer in rig.offered.history), (
        rig.offered.history
    )
    assert rig.agent.status.resources == {GPU: 1}
    assert rig.agent.status.phase is Phase.FAILED
    message = rig.agent.status.message
    assert "GPU 0 (GPU-" in message and "create GPU instance" in message, message
    assert "NVML_ERROR_INSUFFICIENT_RESOURCES" in message, message


def test_a_failed_apply_is_retried_with_doubling_backoff_without_an_edit(rig: Rig) -> None:
    rig.sim.inject_fault(SimFault(call=CREATE, error=pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, count=100))
    rig.send(MIG_ON_GPU0)
    assert wait_until(lambda: rig.attempts("failed") == 1)
    for delay in (1.0, 2.0, 4.0):
        before = rig.attempts("failed")
        rig.tick(delay - 0.01)
        assert not wait_until(lambda b=before: rig.attempts("failed") > b, timeout=0.3)  # type: ignore[misc]
        rig.tick(0.01)
        assert wait_until(lambda b=before: rig.attempts("failed") == b + 1)  # type: ignore[misc]


def test_an_apply_that_nvml_refuses_once_succeeds_on_the_retry(rig: Rig) -> None:
    rig.sim.inject_fault(SimFault(call=CREATE, error=pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, count=1))
    rig.send(MIG_ON_GPU0)
    assert wait_until(lambda: rig.attempts("failed") == 1)
    rig.tick(1)
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    assert rig.offered.now == {GPU: 1, "nvidia.com/mig-3g.40gb": 2}


def test_an_invalid_config_changes_nothing_that_is_offered(rig: Rig) -> None:
    rig.send(REPLICAS)
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    offers, applied = len(rig.offered.history), rig.agent.status.applied_config
    rig.send("version: v1\ngpus: [{devices: all, replicas: -1}]\n")
    assert wait_until(lambda: rig.agent.status.phase is Phase.FAILED)
    assert "gpus[0].replicas" in rig.agent.status.message
    assert rig.offered.history[offers:] == []
    assert rig.agent.status.applied_config == applied
    assert wait_until(lambda: "InvalidConfig" in rig.events.reasons())  # sent just after the phase


def test_a_held_mig_device_is_withheld_and_waited_for(rig: Rig) -> None:
    rig.send(MIG_ON_GPU0)
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    held = rig.sim.node().gpus[0].gpu_instances[0].compute_instances[0].uuid
    rig.held.uuids = {held}
    rig.send("version: v1\ngpus: [{devices: [0], mig-devices: {1g.10gb: 7}}]\n")
    assert wait_until(lambda: rig.agent.status.phase is Phase.WAITING, APPLY_S)
    assert held in rig.agent.status.message or rig.agent.status.waiting
    assert held in {ci.uuid for gi in rig.sim.node().gpus[0].gpu_instances for ci in gi.compute_instances}
    seen = len(rig.events.phases)
    for delay in (1, 2):  # retries keep saying what they wait for
        before = rig.attempts("waiting")
        rig.tick(delay)
        assert wait_until(lambda b=before: rig.attempts("waiting") > b)  # type: ignore[misc]
    assert set(rig.events.phases[seen:]) == {Phase.WAITING}, rig.events.phases[seen:]
    rig.held.uuids = set()
    rig.tick(30)  # past the backoff, whatever it has grown to
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    assert rig.offered.now["nvidia.com/mig-1g.10gb"] == 7


def test_a_gpu_lost_at_start_is_reported_and_the_other_served(rig: Rig) -> None:
    rig.sim.set_lost(1)
    rig.send(REPLICAS)
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    assert rig.offered.now == {GPU: 2}
    assert "GPU 1" in rig.agent.status.message and "lost" in rig.agent.status.message
    assert wait_until(lambda: "GpuUnavailable" in rig.events.reasons())  # sent just after the phase


def test_stop_ends_the_loop_at_once_while_a_retry_is_far_away(rig: Rig) -> None:
    rig.sim.inject_fault(SimFault(call=CREATE, error=pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, count=100))
    rig.send(MIG_ON_GPU0)
    assert wait_until(lambda: rig.attempts("failed") == 1)
    # The fixture's teardown stops the agent and requires its thread to end within 2 s.


def test_a_config_mixing_mig_profiles_under_envvar_is_applied_with_a_warning(rig: Rig) -> None:
    rig.send("version: v1\ngpus: [{devices: [0], mig-devices: {3g.40gb: 1, 2g.20gb: 1}}]\n")
    assert wait_until(lambda: rig.agent.status.phase is Phase.IDLE, APPLY_S)
    assert wait_until(lambda: "ConfigWarning" in rig.events.reasons())  # sent just after the phase
