"""Health through NVML events and answers of the mock library: XIDs, ECC, lost GPUs."""

from __future__ import annotations

import time

import pytest
from conftest import wait_until

from deviceplugin.testing.daemon import FatiaProcess
from deviceplugin.testing.kubelet import KubeletEmulator
from realnvml.conftest import StartFatia
from realnvml.mock import MockNode, log_events, status

NODE = ["model=a100-40gb numa=0"] * 4
QUICK = "version: v1\nhealth: {recoverySeconds: 2, livenessSeconds: 1}\n"


def started(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator, config: str = QUICK, gpus: int = 4
) -> FatiaProcess:
    """fatia serving every GPU, with its NVML event set registered on all of them."""
    daemon = start_fatia(config)
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == gpus, 15), daemon.logs()
    assert wait_until(lambda: mock_node.registered_events() >= set(range(gpus)), 10), daemon.logs()
    return daemon


@pytest.fixture
def daemon(mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator) -> FatiaProcess:
    """fatia serving four A100s of the mock, with its event set registered on each."""
    mock_node.configure(NODE)
    return started(mock_node, start_fatia, kubelet)


def health(kubelet: KubeletEmulator) -> dict[str, str]:
    return kubelet.devices("nvidia.com/gpu")


def test_an_xid_marks_only_the_devices_of_its_gpu(
    mock_node: MockNode, kubelet: KubeletEmulator, daemon: FatiaProcess
) -> None:
    gpu = mock_node.gpus
    mock_node.inject("xid 1 48")
    assert kubelet.wait_for(lambda k: health(k)[gpu[1]] == "Unhealthy", 5), daemon.logs()
    time.sleep(0.3)  # anything else it would mark comes with the same update
    assert health(kubelet) == {u: "Unhealthy" if u == gpu[1] else "Healthy" for u in gpu}

    mock_node.inject("ecc 2")  # a double-bit ECC error: that GPU too, and only it
    assert kubelet.wait_for(lambda k: health(k)[gpu[2]] == "Unhealthy", 5), daemon.logs()
    assert health(kubelet)[gpu[0]] == health(kubelet)[gpu[3]] == "Healthy"


def test_ignored_xids_change_nothing(
    mock_node: MockNode, kubelet: KubeletEmulator, daemon: FatiaProcess
) -> None:
    ignored = (13, 31, 43, 45, 68, 109)  # the README's default health.ignoredXids
    mock_node.inject(*(f"xid 0 {x}" for x in ignored), "xid 3 79")
    # The fatal XID on GPU 3 comes last: once it is seen, so were the ignored ones.
    assert kubelet.wait_for(lambda k: health(k)[mock_node.gpus[3]] == "Unhealthy", 5), daemon.logs()
    assert [health(kubelet)[u] for u in mock_node.gpus[:3]] == ["Healthy"] * 3
    seen = [(e["gpu"], e["xid"]) for e in log_events(daemon.logs()) if e["event"] == "xid_ignored"]
    assert seen == [(0, x) for x in ignored]


def test_a_marked_gpu_heals_after_the_recovery_time(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(NODE[:2])
    daemon = started(mock_node, start_fatia, kubelet, gpus=2)
    uuid = mock_node.gpus[0]
    mock_node.inject("xid 0 48")
    assert kubelet.wait_for(lambda k: health(k)[uuid] == "Unhealthy", 5), daemon.logs()
    marked = time.monotonic()
    assert kubelet.wait_for(lambda k: health(k)[uuid] == "Healthy", 6), daemon.logs()
    assert time.monotonic() - marked >= 1.5  # recoverySeconds: 2, not sooner
    assert any(e["event"] == "device_healthy" for e in log_events(daemon.logs()))


def test_an_xid_on_a_gpu_that_fell_off_the_bus_marks_only_that_gpu(
    mock_node: MockNode, kubelet: KubeletEmulator, daemon: FatiaProcess
) -> None:
    """Defect 1: nvmlDeviceGetIndex of the event's device answers GPU_IS_LOST."""
    gpu = mock_node.gpus
    mock_node.inject("lost 2", "xid 2 79")
    assert kubelet.wait_for(lambda k: gpu[2] not in k.healthy("nvidia.com/gpu"), 5), daemon.logs()
    time.sleep(0.3)
    assert kubelet.healthy("nvidia.com/gpu") == sorted(gpu[:2] + gpu[3:]), daemon.logs()


def test_a_gpu_lost_at_start_is_reported_and_the_others_are_served(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    """Defect 8: a GPU that answers GPU_IS_LOST from the start must be said, not only left out."""
    mock_node.configure(NODE)
    mock_node.inject("lost 1")
    daemon = start_fatia(QUICK)
    others = sorted(mock_node.gpus[:1] + mock_node.gpus[2:])
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == others, 15), daemon.logs()
    assert wait_until(lambda: status(daemon.state_dir).get("phase") == "idle", 10), daemon.logs()
    message = str(status(daemon.state_dir)["message"])
    assert "GPU 1" in message and "lost" in message, message
    warned = [
        e for e in log_events(daemon.logs()) if e.get("level") in ("warning", "error") and "lost" in str(e)
    ]
    assert warned, f"no warning in the log says GPU 1 is lost:\n{daemon.logs()}"


def test_a_gpu_lost_at_run_time_without_an_xid_is_withdrawn_or_marked(
    mock_node: MockNode, kubelet: KubeletEmulator, daemon: FatiaProcess
) -> None:
    """Defect 7: nothing asks a device in steady state, so a silent loss goes unseen."""
    gpu = mock_node.gpus
    mock_node.inject("lost 3")
    # Within a liveness period (health.livenessSeconds: 1 here, 10 s by default) and slack.
    assert kubelet.wait_for(lambda k: gpu[3] not in k.healthy("nvidia.com/gpu"), 5), daemon.logs()
    assert kubelet.healthy("nvidia.com/gpu") == sorted(gpu[:3])
