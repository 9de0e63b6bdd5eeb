"""Whole GPUs and time-slicing through the real pynvml: fatia shows what NVML shows."""

from __future__ import annotations

from conftest import wait_until

from deviceplugin.testing.kubelet import KubeletEmulator
from realnvml.conftest import StartFatia
from realnvml.mock import LIBRARY, MockNode, mapped_library, status

NODE = ["model=a100-40gb numa=0", "model=a100-40gb numa=0", "model=h100-80gb numa=1", "model=t4"]


def test_the_tier_is_the_real_pynvml_over_the_mock(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(NODE)
    daemon = start_fatia()
    # The process that serves the kubelet mapped the mock, and it is the library that
    # answered: its trace has the calls of that process's nvmlInit.
    assert mapped_library(daemon.process.pid) == [str(mock_node.library / LIBRARY)]
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 15), daemon.logs()
    assert ("nvmlInit", -1, 0) in mock_node.calls()


def test_whole_gpus_are_the_ones_pynvml_reads(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(NODE)
    truth = mock_node.read()
    daemon = start_fatia()
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 15), daemon.logs()
    assert kubelet.healthy("nvidia.com/gpu") == sorted(g["uuid"] for g in truth)
    assert [g["uuid"] for g in truth] == mock_node.gpus
    assert wait_until(lambda: status(daemon.state_dir).get("phase") == "idle", 10), daemon.logs()
    gpus = status(daemon.state_dir)["gpus"]
    assert [(g["index"], g["uuid"], g["product"], g["memory_mib"]) for g in gpus] == [
        (g["index"], g["uuid"], g["name"], g["memory_mib"]) for g in truth
    ]
    assert [g["name"] for g in truth] == [
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA H100 80GB HBM3",
        "Tesla T4",
    ]
    # MIG-capable ones say so; the T4 answers NOT_SUPPORTED to nvmlDeviceGetMigMode.
    assert [g["mig"] for g in gpus] == ["disabled", "disabled", "disabled", "n/a"]


def test_time_slicing_replicas_and_allocate(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(NODE[:2])
    daemon = start_fatia("version: v1\ngpus: [{devices: all, replicas: 3}]\n")
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 6, 15), daemon.logs()
    assert kubelet.healthy("nvidia.com/gpu") == sorted(
        f"{uuid}::{n}" for uuid in mock_node.gpus for n in range(3)
    )
    allocation = kubelet.allocate("pod-a", "nvidia.com/gpu", 2)
    visible = allocation.response.envs["NVIDIA_VISIBLE_DEVICES"].split(",")
    assert set(visible) <= set(mock_node.gpus) and len(visible) == len(set(visible))
    assert sorted({i.split("::")[0] for i in allocation.device_ids}) == sorted(visible)
