"""Issue 10's acceptance case: one bad GPU of eight never costs another GPU its devices."""

from __future__ import annotations

import time

import pytest

from deviceplugin.testing.kubelet import KubeletEmulator
from realnvml.conftest import StartFatia
from realnvml.mock import MockNode

BAD = 3

# The call that fails on GPU 3, and the error it answers. GetGpuInstances only
# matters on a GPU in MIG mode, so GPU 3 is in MIG mode (with no instances) in
# every case; GetMigMode gets UNKNOWN, since NOT_SUPPORTED there rightly means
# "not MIG-capable".
CASES = [
    ("nvmlDeviceGetGpuInstances", "NOT_SUPPORTED"),
    ("nvmlDeviceGetMigMode", "UNKNOWN"),
    ("nvmlDeviceGetMemoryInfo", "UNKNOWN"),
    ("nvmlDeviceGetUUID", "UNKNOWN"),
]


@pytest.mark.parametrize(("call", "error"), CASES, ids=[c for c, _ in CASES])
def test_one_gpu_failing_a_call_keeps_the_other_seven_advertised_and_healthy(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator, call: str, error: str
) -> None:
    mock_node.configure([f"model=a100-40gb numa={i // 4}" + (" mig=1" if i == BAD else "") for i in range(8)])
    mock_node.inject(f"fail {BAD} {call} {error}")
    others = sorted(u for i, u in enumerate(mock_node.gpus) if i != BAD)
    daemon = start_fatia("version: v1\ngpus: [{devices: all}]\n")
    assert kubelet.wait_for(lambda k: set(others) <= set(k.healthy("nvidia.com/gpu")), 10), daemon.logs()
    time.sleep(2)  # past a first retry: they stay
    assert set(others) <= set(kubelet.healthy("nvidia.com/gpu")), daemon.logs()
