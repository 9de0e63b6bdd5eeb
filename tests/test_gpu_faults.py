"""One GPU NVML cannot read never costs another GPU its devices (issue 10, defect 2).

``fatia run`` on eight simulated A100s; GPU 3 (in MIG mode) fails one NVML call on every
try. The other seven stay advertised and Healthy through the kubelet emulator, past the
first retries; GPU 3 is not offered, and the status says which GPU, which call, which error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pynvml
import pytest
from conftest import RunFatia, wait_until, write_config

from deviceplugin.testing.daemon import FatiaProcess
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl, open_sim
from mig.sim.state import SimFault

BAD = 3
GPU = "nvidia.com/gpu"
CASES = [
    ("nvmlDeviceGetGpuInstances", pynvml.NVML_ERROR_NOT_SUPPORTED),
    ("nvmlDeviceGetMigMode", pynvml.NVML_ERROR_UNKNOWN),  # NOT_SUPPORTED there means "no MIG"
    ("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_UNKNOWN),
    ("nvmlDeviceGetUUID", pynvml.NVML_ERROR_UNKNOWN),
]


@dataclass(frozen=True)
class OneBadGpu:
    daemon: FatiaProcess
    call: str  # the NVML call GPU 3 fails
    bad: str  # GPU 3's UUID
    others: list[str]  # the other seven UUIDs


@pytest.fixture(params=CASES, ids=[c for c, _ in CASES])
def one_bad_gpu(
    request: pytest.FixtureRequest, sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> OneBadGpu:
    """fatia on eight A100s whose GPU 3, in MIG mode, fails one call on every try; returned
    once the other seven are advertised healthy."""
    call, error = request.param
    state = sockdir / "state"
    nvml = open_sim(["a100-40gb"] * 8, state_dir=state, node="node-a")
    nvml.nvmlInit()
    uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(8)]
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(BAD), pynvml.NVML_DEVICE_MIG_ENABLE)
    SimControl(state).inject_fault(SimFault(call=call, error=error, gpu=BAD, count=None))
    config = write_config(sockdir, "version: v1\ngpus: [{devices: all}]\n")
    daemon = run_fatia("sim:a100-40gb:8", config=config, state_dir=state)
    others = sorted(u for i, u in enumerate(uuids) if i != BAD)
    assert kubelet.wait_for(lambda k: set(others) <= set(k.healthy(GPU)), 15), daemon.logs()
    return OneBadGpu(daemon, call, uuids[BAD], others)


def test_one_gpu_failing_a_call_keeps_the_other_seven_advertised_and_healthy(
    kubelet: KubeletEmulator, one_bad_gpu: OneBadGpu
) -> None:
    time.sleep(2)  # past a first retry: they stay
    assert set(one_bad_gpu.others) <= set(kubelet.healthy(GPU)), one_bad_gpu.daemon.logs()


def test_the_gpu_that_fails_is_not_offered_and_the_status_names_it(
    kubelet: KubeletEmulator, one_bad_gpu: OneBadGpu
) -> None:
    daemon = one_bad_gpu.daemon
    offered = set(kubelet.resources().get(GPU, {}))
    assert one_bad_gpu.bad not in offered and "" not in offered, offered
    assert wait_until(lambda: f"GPU {BAD}" in str(daemon.status().get("message")), 5), daemon.status()
    message = str(daemon.status()["message"])
    assert one_bad_gpu.call in message and "NVML_ERROR_" in message, message
