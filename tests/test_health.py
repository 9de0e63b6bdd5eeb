"""Device health, end to end: NVML events in the simulator, ListAndWatch at the kubelet.

Every test runs ``fatia run`` as a real process against the kubelet emulator and
drives the simulated GPUs from outside (``SimControl``): an XID, a double-bit
ECC error, a lost GPU, a health loop that cannot start. What is checked is what
the kubelet sees: which device IDs turn Unhealthy, which stay Healthy, and that
they come back once the policy's quiet time has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest
from conftest import RunFatia, wait_until, write_config

from deviceplugin.testing.daemon import FatiaProcess
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl, open_sim
from mig.sim.state import SimFault

GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-3g.40gb"
UNATTRIBUTED = 0xFFFFFFFF
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"

WHOLE = "version: v1\nhealth: {recoverySeconds: 60}\n"
REPLICAS = "version: v1\ngpus: [{devices: all, replicas: 4}]\nhealth: {recoverySeconds: 60}\n"
MIXED = """version: v1
gpus:
  - devices: [0]
    mig-devices: {3g.40gb: 2}
  - devices: all
    replicas: 4
health: {recoverySeconds: 60}
"""


class Start:
    """The ``start`` fixture: ``start(config, expect={resource: count})`` starts fatia (on
    two simulated H100s unless ``nvml`` says otherwise) and waits until every expected
    resource is advertised, all Healthy; it returns the daemon and the control of its GPUs."""

    def __init__(self, run_fatia: RunFatia, kubelet: KubeletEmulator, sockdir: Path) -> None:
        self._run_fatia, self._kubelet, self._sockdir = run_fatia, kubelet, sockdir

    def __call__(
        self, config: str, *, nvml: str = "sim:h100-80gb:2", expect: dict[str, int]
    ) -> tuple[FatiaProcess, SimControl]:
        daemon = self._run_fatia(nvml, config=write_config(self._sockdir, config))
        assert self._kubelet.wait_for(lambda k: all(len(k.healthy(r)) == n for r, n in expect.items()), 20), (
            daemon.logs()
        )
        return daemon, SimControl(daemon.state_dir)


@pytest.fixture
def start(run_fatia: RunFatia, kubelet: KubeletEmulator, sockdir: Path) -> Start:
    return Start(run_fatia, kubelet, sockdir)


def uuid_of(sim: SimControl, gpu: int) -> str:
    return sim.node().gpus[gpu].uuid


def of_gpu(kubelet: KubeletEmulator, resource: str, uuid: str) -> dict[str, str]:
    """The devices of ``resource`` backed by GPU (or MIG device) ``uuid``: ID -> health."""
    return {i: h for i, h in kubelet.devices(resource).items() if i.split("::")[0] == uuid}


def all_are(devices: dict[str, str], health: str) -> bool:
    return bool(devices) and all(h == health for h in devices.values())


def with_fault(sockdir: Path, fault: SimFault) -> None:
    """Create the two simulated H100s of ``fatia run`` with ``fault`` injected, so that it
    is in place before fatia opens NVML."""
    state = sockdir / "state"
    state.mkdir()
    open_sim(["h100-80gb", "h100-80gb"], state_dir=state, node="node-a")
    SimControl(state).inject_fault(fault)


def mig_devices(sim: SimControl, gpu: int) -> list[tuple[int, int, str]]:
    """(GPU instance id, compute instance id, MIG UUID) of every MIG device on ``gpu``."""
    return [
        (gi.id, ci.id, ci.uuid) for gi in sim.node().gpus[gpu].gpu_instances for ci in gi.compute_instances
    ]


# -- XIDs and lost GPUs -------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "event"),
    [
        (WHOLE, {"data": 79}),
        ("version: v1\nhealth: {fatalXids: [13], recoverySeconds: 60}\n", {"data": 13}),
        (WHOLE, {"event_type": pynvml.nvmlEventTypeDoubleBitEccError}),
    ],
    ids=["an XID", "an ignored XID listed in fatalXids", "a double-bit ECC error"],
)
def test_an_error_on_a_whole_gpu_makes_only_that_gpu_unhealthy(
    start: Start, kubelet: KubeletEmulator, config: str, event: dict[str, int]
) -> None:
    daemon, sim = start(config, expect={GPU: 2})
    bad, good = uuid_of(sim, 1), uuid_of(sim, 0)

    sim.inject_event(1, **event)

    assert kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == UNHEALTHY, 5), daemon.logs()
    assert kubelet.devices(GPU) == {bad: UNHEALTHY, good: HEALTHY}
    assert "device_unhealthy" in daemon.logs()


@pytest.mark.parametrize(
    "hit",
    [lambda sim: sim.inject_event(1, data=48), lambda sim: sim.set_lost(1)],
    ids=["an XID", "a lost GPU"],
)
def test_a_hit_gpu_has_every_replica_unhealthy_and_the_other_gpu_is_still_served(
    start: Start, kubelet: KubeletEmulator, hit: Callable[[SimControl], None]
) -> None:
    daemon, sim = start(REPLICAS, expect={GPU: 8})
    bad, good = uuid_of(sim, 1), uuid_of(sim, 0)

    hit(sim)

    assert kubelet.wait_for(lambda k: all_are(of_gpu(k, GPU, bad), UNHEALTHY), 5), daemon.logs()
    assert len(of_gpu(kubelet, GPU, bad)) == 4
    assert all_are(of_gpu(kubelet, GPU, good), HEALTHY)
    assert len(of_gpu(kubelet, GPU, good)) == 4
    assert kubelet.connected(GPU)
    allocation = kubelet.allocate("pod-a", GPU, 2)
    assert all(i.startswith(good) for i in allocation.device_ids)
    assert daemon.process.poll() is None


def test_an_attributed_xid_makes_only_that_mig_device_unhealthy(
    start: Start, kubelet: KubeletEmulator
) -> None:
    daemon, sim = start(MIXED, expect={MIG: 2, GPU: 4})
    (gi, ci, hit), (_, _, spared) = mig_devices(sim, 0)

    sim.inject_event(0, data=94, gpu_instance=gi, compute_instance=ci)

    assert kubelet.wait_for(lambda k: k.devices(MIG).get(hit) == UNHEALTHY, 5), daemon.logs()
    assert kubelet.devices(MIG)[spared] == HEALTHY
    assert all_are(kubelet.devices(GPU), HEALTHY)


def test_an_unattributed_xid_makes_every_mig_device_of_that_gpu_unhealthy(
    start: Start, kubelet: KubeletEmulator
) -> None:
    daemon, sim = start(MIXED, expect={MIG: 2, GPU: 4})

    sim.inject_event(0, data=94, gpu_instance=UNATTRIBUTED, compute_instance=UNATTRIBUTED)

    assert kubelet.wait_for(lambda k: all_are(k.devices(MIG), UNHEALTHY), 5), daemon.logs()
    assert len(kubelet.devices(MIG)) == 2
    assert all_are(kubelet.devices(GPU), HEALTHY)


def test_an_ignored_xid_changes_nothing(start: Start, kubelet: KubeletEmulator) -> None:
    daemon, sim = start(WHOLE, expect={GPU: 2})

    sim.inject_event(0, data=13)
    # An XID that counts, on the other GPU, afterwards: once it shows, the 13 was seen too.
    sim.inject_event(1, data=79)

    assert kubelet.wait_for(lambda k: k.devices(GPU).get(uuid_of(sim, 1)) == UNHEALTHY, 5), daemon.logs()
    assert kubelet.devices(GPU)[uuid_of(sim, 0)] == HEALTHY
    assert '"xid_ignored"' in daemon.logs()


# -- a broken health loop -----------------------------------------------------


def test_a_health_loop_that_cannot_start_reports_every_device_unhealthy(
    run_fatia: RunFatia, kubelet: KubeletEmulator, sockdir: Path
) -> None:
    with_fault(sockdir, SimFault(call="nvmlEventSetCreate", error=999, count=100))

    daemon = run_fatia("sim:h100-80gb:2", config=write_config(sockdir, MIXED))

    assert kubelet.wait_for(
        lambda k: (
            len(k.devices(MIG)) == 2
            and len(k.devices(GPU)) == 4
            and all_are(k.devices(MIG), UNHEALTHY)
            and all_are(k.devices(GPU), UNHEALTHY)
        ),
        20,
    ), daemon.logs()
    assert wait_until(lambda: '"health_loop_failed"' in daemon.logs())


# -- recovery -----------------------------------------------------------------


def test_a_device_is_healthy_again_after_the_quiet_time(start: Start, kubelet: KubeletEmulator) -> None:
    config = MIXED.replace("recoverySeconds: 60", "recoverySeconds: 1")
    daemon, sim = start(config, expect={MIG: 2, GPU: 4})
    (gi, ci, hit), _ = mig_devices(sim, 0)
    replicas = uuid_of(sim, 1)

    sim.inject_event(0, data=94, gpu_instance=gi, compute_instance=ci)
    sim.inject_event(1, data=79)
    assert kubelet.wait_for(
        lambda k: k.devices(MIG).get(hit) == UNHEALTHY and all_are(of_gpu(k, GPU, replicas), UNHEALTHY), 5
    ), daemon.logs()

    assert kubelet.wait_for(
        lambda k: all_are(k.devices(MIG), HEALTHY) and all_are(k.devices(GPU), HEALTHY), 10
    ), daemon.logs()
    assert "device_healthy" in daemon.logs()


def test_a_lost_gpu_that_comes_back_is_healthy_again(start: Start, kubelet: KubeletEmulator) -> None:
    config = REPLICAS.replace("recoverySeconds: 60", "recoverySeconds: 1")
    daemon, sim = start(config, expect={GPU: 8})
    lost = uuid_of(sim, 1)
    sim.set_lost(1)
    assert kubelet.wait_for(lambda k: all_are(of_gpu(k, GPU, lost), UNHEALTHY), 5), daemon.logs()

    sim.set_lost(1, False)

    assert kubelet.wait_for(lambda k: all_are(k.devices(GPU), HEALTHY), 10), daemon.logs()
    # Its events are watched again: a new XID on it is seen.
    sim.inject_event(1, data=79)
    assert kubelet.wait_for(lambda k: all_are(of_gpu(k, GPU, lost), UNHEALTHY), 5), daemon.logs()


@pytest.mark.parametrize("xid", [79])
def test_an_unhealthy_device_stays_unhealthy_while_errors_continue(
    start: Start, kubelet: KubeletEmulator, xid: int
) -> None:
    config = WHOLE.replace("recoverySeconds: 60", "recoverySeconds: 1.5")
    daemon, sim = start(config, expect={GPU: 2})
    bad = uuid_of(sim, 0)
    sim.inject_event(0, data=xid)
    assert kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == UNHEALTHY, 5), daemon.logs()

    # A new error every 0.5 s for 3 s: the quiet time never passes.
    for _ in range(6):
        assert not kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == HEALTHY, 0.5)
        sim.inject_event(0, data=xid)

    assert kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == HEALTHY, 10), daemon.logs()


def test_recovery_is_not_held_up_by_events_on_another_gpu(start: Start, kubelet: KubeletEmulator) -> None:
    config = WHOLE.replace("recoverySeconds: 60", "recoverySeconds: 1")
    daemon, sim = start(config, expect={GPU: 2})
    bad = uuid_of(sim, 1)
    sim.inject_event(1, data=79)
    assert kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == UNHEALTHY, 5), daemon.logs()

    # GPU 0 keeps reporting an ignored XID every 0.3 s; GPU 1 itself stays quiet.
    healed = False
    for _ in range(15):
        sim.inject_event(0, data=13)
        if kubelet.wait_for(lambda k: k.devices(GPU).get(bad) == HEALTHY, 0.3):
            healed = True
            break

    assert healed, daemon.logs()
    assert kubelet.devices(GPU)[uuid_of(sim, 0)] == HEALTHY


def test_a_gpu_that_delivers_no_events_is_not_called_unhealthy(
    start: Start, kubelet: KubeletEmulator, sockdir: Path
) -> None:
    with_fault(
        sockdir,
        SimFault(
            call="nvmlDeviceGetSupportedEventTypes", gpu=1, error=pynvml.NVML_ERROR_NOT_SUPPORTED, count=100
        ),
    )
    daemon, sim = start(WHOLE, expect={GPU: 2})
    assert wait_until(lambda: "health_events_not_supported" in daemon.logs()), daemon.logs()
    assert all_are(kubelet.devices(GPU), HEALTHY)
    # GPU 0 is still watched.
    sim.inject_event(0, data=79)
    assert kubelet.wait_for(lambda k: all_are(of_gpu(k, GPU, uuid_of(sim, 0)), UNHEALTHY), 5)
    assert all_are(of_gpu(kubelet, GPU, uuid_of(sim, 1)), HEALTHY)
