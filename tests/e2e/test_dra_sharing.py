"""Sharing in DRA mode in the real cluster: one ResourceClaim referenced by several pods, with
``gpu.fatia.dev`` parameters that choose the time-slice interval.

The real kubelet prepares a claim once per node however many of its pods run there, and
unprepares it when the last of them is gone; fatia sets the claim's interval on the whole
GPU (the simulator holds it: ``fatia sim show``) and puts Default back at unprepare. A
claim whose parameters are wrong never starts its pod, and the pod's events carry fatia's
message with the key path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.harness import Cluster, Node, Process, wait_for
from e2e.test_dra import DRIVER, apply, cdi_devices, claim_pod, dra, dra_node, fatia  # noqa: F401 - the fixtures

GPU_CONFIG = {"apiVersion": "gpu.fatia.dev/v1alpha1", "kind": "GpuConfig"}


def whole_gpu_claim(cluster: Cluster, name: str, interval: str) -> None:
    """A named claim of one whole GPU, time-sliced at ``interval``."""
    apply(cluster, {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}],
            "config": [{"requests": ["gpu"], "opaque": {"driver": DRIVER, "parameters": {
                **GPU_CONFIG, "sharing": {"strategy": "TimeSlicing", "interval": interval},
            }}}],
        }},
    })  # fmt: skip


def claim(cluster: Cluster, name: str) -> dict[str, Any]:
    assert cluster.api is not None
    found: dict[str, Any] = cluster.api.get(
        f"/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/{name}"
    )
    return found


def timeslice(cluster: Cluster, node: Node, gpu: int) -> int:
    return int(json.loads(cluster.fatia_sim(node.state_dir, "show"))["gpus"][gpu]["timeslice"])


def logged(process: Process, event: str, uid: str) -> int:
    lines = [json.loads(line) for line in process.output().splitlines() if f'"{event}"' in line]
    return sum(1 for line in lines if line.get("event") == event and line.get("uid") == uid)


def delete_claim(cluster: Cluster, name: str) -> None:
    cluster.kubectl("delete", "resourceclaim", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.usefixtures("fatia")  # fatia in DRA mode, the pool published
def test_a_claim_shared_by_two_pods_is_prepared_once_with_its_interval_and_freed_with_the_last(
    cluster: Cluster, node: Node
) -> None:
    driver = node.fatias[-1]
    whole_gpu_claim(cluster, "shared-gpu", "Long")
    try:
        for pod in ("share-a", "share-b"):
            claim_pod(cluster, node, pod, claim="shared-gpu")
        for pod in ("share-a", "share-b"):
            node.wait_pod_running(pod, 120)
        shared = claim(cluster, "shared-gpu")
        uid = shared["metadata"]["uid"]
        (result,) = shared["status"]["allocation"]["devices"]["results"]
        assert (result["device"], len(shared["status"]["reservedFor"])) == ("gpu-0", 2)
        wanted = [f"fatia.dev/gpu={uid}-gpu-0"]
        assert cdi_devices(cluster, "share-a") == cdi_devices(cluster, "share-b") == wanted
        assert timeslice(cluster, node, 0) == 3  # Long, on the A100 the claim holds
        assert logged(driver, "claim_prepared", uid) == 1  # the kubelet prepared it for both pods at once

        # One pod goes: the other still runs on the claim, which stays prepared.
        node.delete_pod("share-a", 90)
        node.pods.remove("share-a")
        assert timeslice(cluster, node, 0) == 3 and logged(driver, "claim_unprepared", uid) == 0

        # The last one goes: the kubelet unprepares the claim, once, and the GPU is Default again.
        node.delete_pod("share-b", 90)
        node.pods.remove("share-b")
        wait_for(lambda: logged(driver, "claim_unprepared", uid) or None, 60, "the claim to be unprepared")
        assert timeslice(cluster, node, 0) == 0
        assert logged(driver, "claim_unprepared", uid) == 1
    finally:
        delete_claim(cluster, "shared-gpu")


@pytest.mark.usefixtures("fatia")  # fatia in DRA mode, the pool published
def test_a_claim_with_a_bad_parameter_keeps_its_pod_from_starting_and_the_pod_says_where(
    cluster: Cluster, node: Node
) -> None:
    whole_gpu_claim(cluster, "bad-gpu", "Fast")
    try:
        claim_pod(cluster, node, "share-bad", claim="bad-gpu")
        path = "devices.config[0].opaque.parameters.sharing.interval"
        expected = (
            f"ResourceClaim default/bad-gpu: {path}: must be one of Default, Short, Medium, Long, not 'Fast'"
        )

        def told() -> dict[str, Any] | None:
            events = [e for e in cluster.events() if e["involvedObject"].get("name") == "share-bad"]
            return next((e for e in events if expected in e.get("message", "")), None)

        event = wait_for(told, 90, "the pod's event with fatia's message")
        assert (event["type"], event["reason"]) == ("Warning", "FailedPrepareDynamicResources"), event
        pod = cluster.pod("share-bad")
        assert pod is not None and pod["status"].get("phase") == "Pending"
        assert cluster.record_of("share-bad") is None  # no container was ever created
        assert timeslice(cluster, node, 0) == 0
    finally:
        node.delete_pod("share-bad", 90)
        node.pods.remove("share-bad")
        delete_claim(cluster, "bad-gpu")
