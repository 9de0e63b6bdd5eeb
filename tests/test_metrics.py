"""``--metrics-addr``: Prometheus metrics and the probes, from a real ``fatia run``.

The daemon runs as a process against the kubelet emulator and the simulated
GPUs; the tests scrape ``/metrics`` over HTTP, parse it with
``prometheus_client``'s own parser and check the values after the things that
should move them: an XID, an Allocate, a kubelet restart, a config edit, an
NVML error. ``/healthz`` and ``/readyz`` are checked as the kubelet's probes
would see them.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import RunFatia, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from deviceplugin.testing.daemon import FatiaProcess, start_fatia_run
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl, open_sim
from mig.sim.state import SimFault

GPU = "nvidia.com/gpu"
CONFIG = "version: v1\ngpus: [{devices: all, replicas: 2}]\nhealth: {recoverySeconds: 60}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def sample(port: int, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly these labels, or None."""
    code, text = get(port, "/metrics")
    if code != 200:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def has(port: int, value: float, name: str, **labels: str) -> Callable[[], bool]:
    return lambda: sample(port, name, **labels) == value


@pytest.fixture
def daemon(
    run_fatia: RunFatia, kubelet: KubeletEmulator, sockdir: Path
) -> Iterator[tuple[FatiaProcess, int]]:
    """fatia on two simulated A100s with 2 replicas each, metrics on a free port, registered."""
    port = free_port()
    config = write_config(sockdir, CONFIG)
    process = run_fatia("sim:a100-40gb:2", config=config, extra=("--metrics-addr", f"127.0.0.1:{port}"))
    assert kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 4, 20), process.logs()
    yield process, port


def test_healthz_answers_and_readyz_is_ready_once_registered_and_applied(
    daemon: tuple[FatiaProcess, int],
) -> None:
    _, port = daemon
    assert get(port, "/healthz")[0] == 200
    assert wait_until(lambda: get(port, "/readyz")[0] == 200, 10), get(port, "/readyz")


def test_device_counts_by_health(daemon: tuple[FatiaProcess, int], kubelet: KubeletEmulator) -> None:
    process, port = daemon
    assert wait_until(has(port, 4, "fatia_devices", resource=GPU, health="Healthy"))

    SimControl(process.state_dir).inject_event(0, data=79)

    assert kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 2, 5), process.logs()
    assert wait_until(has(port, 2, "fatia_devices", resource=GPU, health="Unhealthy"))
    assert sample(port, "fatia_devices", resource=GPU, health="Healthy") == 2
    assert sample(port, "fatia_xid_events_total", gpu="0", xid="79") == 1


def test_allocations_and_their_latency(daemon: tuple[FatiaProcess, int], kubelet: KubeletEmulator) -> None:
    _, port = daemon

    kubelet.allocate("pod-a", GPU, 1)
    kubelet.allocate("pod-b", GPU, 2)

    assert sample(port, "fatia_allocations_total", resource=GPU, outcome="success") == 2
    assert sample(port, "fatia_allocated_devices_total", resource=GPU) == 3
    assert sample(port, "fatia_allocate_duration_seconds_count", resource=GPU) == 2


def test_registrations_count_up_after_a_kubelet_restart(
    daemon: tuple[FatiaProcess, int], kubelet: KubeletEmulator
) -> None:
    process, port = daemon
    # Devices reach the kubelet inside Register, a moment before Register returns.
    assert wait_until(lambda: sample(port, "fatia_kubelet_registrations_total", resource=GPU) == 1)

    kubelet.restart()

    assert kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 4, 20), process.logs()
    assert wait_until(has(port, 2, "fatia_kubelet_registrations_total", resource=GPU), 10)


def test_reconfigurations_and_config_state(
    daemon: tuple[FatiaProcess, int], sockdir: Path, kubelet: KubeletEmulator
) -> None:
    process, port = daemon
    assert wait_until(has(port, 1, "fatia_reconfigurations_total", outcome="success"))
    assert sample(port, "fatia_config_state", state="success") == 1
    assert sample(port, "fatia_config_state", state="failed") == 0

    (sockdir / "config.yaml").write_text("version: v1\ngpus: [{devices: all, replicas: 0}]\n")

    assert wait_until(has(port, 1, "fatia_config_state", state="failed"), 10), process.logs()
    assert sample(port, "fatia_config_state", state="success") == 0
    assert sample(port, "fatia_reconfigurations_total", outcome="failed") == 1
    assert len(kubelet.healthy(GPU)) == 4  # a bad edit changes nothing


def test_nvml_errors_are_counted(daemon: tuple[FatiaProcess, int]) -> None:
    process, port = daemon

    SimControl(process.state_dir).inject_fault(SimFault(call="nvmlEventSetWait_v2", error=999, count=1))

    assert wait_until(
        has(port, 1, "fatia_nvml_errors_total", call="nvmlEventSetWait", error="NVMLError_Unknown"), 10
    ), get(port, "/metrics")[1]


def test_readyz_is_unready_while_fatia_cannot_register(sockdir: Path) -> None:
    """No kubelet: the plugin directory has no kubelet.sock."""
    plugin_dir = sockdir / "lonely"
    plugin_dir.mkdir()
    port = free_port()
    daemon = start_fatia_run(
        "sim:a100-40gb:1",
        state_dir=sockdir / "state",
        plugin_dir=plugin_dir,
        pod_resources_socket=sockdir / "pr.sock",
        log=sockdir / "fatia.log",
        extra=("--metrics-addr", f"127.0.0.1:{port}"),
    )
    try:
        assert wait_until(lambda: get(port, "/healthz")[0] == 200, 10), daemon.logs()
        # The config (defaults) is applied soon after start; registering never succeeds.
        assert wait_until(lambda: "applied" in daemon.logs(), 10), daemon.logs()
        code, body = get(port, "/readyz")
        assert code == 503
        assert "not registered" in body
    finally:
        daemon.stop()


def test_a_failed_mig_step_counts_as_an_nvml_error(
    run_fatia: RunFatia, kubelet: KubeletEmulator, sockdir: Path
) -> None:
    port = free_port()
    state = sockdir / "state"
    open_sim(["h100-80gb"], state_dir=state, node="node-a")  # so the fault is there first
    SimControl(state).inject_fault(SimFault(call="nvmlDeviceCreateGpuInstanceWithPlacement", error=23))
    config = write_config(sockdir, "version: v1\ngpus: [{devices: all, mig-devices: {3g.40gb: 2}}]\n")
    process = run_fatia("sim:h100-80gb:1", config=config, extra=("--metrics-addr", f"127.0.0.1:{port}"))
    assert wait_until(
        has(port, 1, "fatia_nvml_errors_total", call="create_gi", error="NVMLError_InsufficientResources"), 10
    ), process.logs()
    assert wait_until(has(port, 1, "fatia_reconfigurations_total", outcome="failed"))
