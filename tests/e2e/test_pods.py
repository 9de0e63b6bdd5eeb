"""Pods asking for MIG devices: the real scheduler, the real kubelet, fatia's Allocate.

What reaches the container is read from the fake CRI's record of CreateContainer: the
kubelet builds that request from fatia's Allocate answer, so the record is exactly what
a real runtime (and the NVIDIA container toolkit) would be handed.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from e2e.harness import NODE_NAME, Cluster, Node, wait_for
from e2e.layouts import A100_MIG_COUNTS, A100_TWO_HALVES, A100_TWO_HALVES_COUNTS, a100_mig

MIG_UUID = re.compile(r"^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIG_1G = "nvidia.com/mig-1g.5gb"


def container_record(cluster: Cluster, pod: str, container: str = "c0") -> dict[str, Any]:
    return wait_for(
        lambda: cluster.record_of(pod, container),
        60,
        f"the fake CRI to record container {container} of pod {pod}",
    )


def test_pod_with_a_mig_slice_gets_its_uuid_from_allocate(cluster: Cluster, node: Node) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(), A100_MIG_COUNTS)

    node.create_pod("mig-pod", {MIG_1G: 1})

    pod = node.wait_pod_running("mig-pod")
    record = container_record(cluster, "mig-pod")
    assert pod["spec"]["nodeName"] == NODE_NAME
    visible = record["envs"]["NVIDIA_VISIBLE_DEVICES"]
    assert MIG_UUID.match(visible), visible
    assigned = cluster.assigned_devices(pod["metadata"]["uid"], "c0")
    assert assigned == {MIG_1G: [visible]}
    assert visible in cluster.device_checkpoint()["RegisteredDevices"][MIG_1G]
    wait_for(lambda: int(cluster.allocatable()[MIG_1G]) == 2, 10, "allocatable unchanged")


@pytest.mark.parametrize("strategy", ["volume-mounts", "cdi-cri"])
def test_device_list_strategy_reaches_the_container(cluster: Cluster, node: Node, strategy: str) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(strategy), A100_MIG_COUNTS)

    node.create_pod("mig-pod", {MIG_1G: 1})

    pod = node.wait_pod_running("mig-pod")
    record = container_record(cluster, "mig-pod")
    [device] = cluster.assigned_devices(pod["metadata"]["uid"], "c0")[MIG_1G]
    assert MIG_UUID.match(device), device
    if strategy == "volume-mounts":
        mounts = [
            m for m in record["mounts"] if m["containerPath"].startswith("/var/run/nvidia-container-devices/")
        ]
        assert [m["containerPath"] for m in mounts] == [f"/var/run/nvidia-container-devices/{device}"], (
            record["mounts"]
        )
        assert mounts[0]["hostPath"] == "/dev/null"
    else:
        assert record["cdiDevices"] == [f"nvidia.com/gpu={device}"], record


def test_pod_asking_for_more_than_exists_stays_pending(cluster: Cluster, node: Node) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(), A100_MIG_COUNTS)

    node.create_pod("greedy-pod", {MIG_1G: 3})

    def unschedulable() -> dict[str, Any] | None:
        pod = cluster.pod("greedy-pod")
        for condition in (pod or {}).get("status", {}).get("conditions", []):
            if condition["type"] == "PodScheduled" and condition["status"] == "False":
                found: dict[str, Any] = condition
                return found
        return None

    condition = wait_for(unschedulable, 60, "the scheduler to give up on greedy-pod")
    assert condition["reason"] == "Unschedulable"
    assert f"Insufficient {MIG_1G}" in condition["message"], condition["message"]
    time.sleep(2)  # nothing may change its mind: no node, no container
    pod = cluster.pod("greedy-pod")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    assert cluster.record_of("greedy-pod") is None


def test_edit_that_destroys_a_held_slice_waits_for_the_pod(cluster: Cluster, node: Node) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(), A100_MIG_COUNTS)
    node.create_pod("holder", {MIG_1G: 1})
    node.wait_pod_running("holder")
    container_record(cluster, "holder")
    node.wait_phase("idle")

    node.apply_config(A100_TWO_HALVES)

    waiting = node.wait_phase("waiting", 30)
    assert waiting["waiting"], waiting
    # fatia learns from the kubelet's PodResources that the slice is held, and waits:
    # it stays so while the pod runs.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = node.status()
        assert status is not None and status["phase"] == "waiting", status
        time.sleep(0.5)
    assert cluster.pod("holder") is not None

    node.delete_pod("holder")

    node.wait_allocatable(A100_TWO_HALVES_COUNTS, 60)
    gpu0 = next(g for g in node.wait_phase("idle", 30)["gpus"] if g["index"] == 0)
    assert sorted(gpu0["layout"]) == ["3g.20gb@0", "3g.20gb@4"]
