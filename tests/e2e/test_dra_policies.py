"""DRA mode's policies (``dra:`` in the pool config) in the real cluster.

- ``reuse: identical``: the kubelet's NodeUnprepareResources, after the real pod is
  deleted, leaves the MIG instance in place; a new claim the real scheduler puts on the
  same placement (a CEL selector on ``placementStart`` steers it there) gets the same MIG
  UUID, and no other instance changes.
- ``taintEffect: NoExecute``: an Xid taints the GPU's devices ``NoExecute``, and
  kube-controller-manager's device-taint eviction controller (on by default in 1.37:
  DRADeviceTaints is GA and the controller is not among the disabled-by-default ones; the
  tier runs the controller manager with its default ``--controllers``) deletes the pod
  whose claim uses one of them.

The helpers and fixtures are :mod:`e2e.test_dra`'s.
"""

from __future__ import annotations

import json
from typing import Any

from e2e.harness import Cluster, Node, Process, wait_for
from e2e.test_dra import (
    DRIVER,
    POOL,
    allocation,
    cdi_devices,
    claim_pod,
    claim_template,
    devices,
    instances,
    start_dra,
    start_of,
    wait_pool,
)
from e2e.test_dra import dra as dra  # the fixtures, re-exported so that pytest finds them here
from e2e.test_dra import dra_node as dra_node


def start_with(cluster: Cluster, node: Node, policy: str) -> Process:
    node.apply_config(POOL + policy)
    process = start_dra(cluster, node)
    wait_pool(cluster, process)
    return process


def logged(process: Process, event: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.output().splitlines() if f'"{event}"' in line]


def evictions(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    """The device-taint eviction controller's Events about ``pod``."""
    return [
        e
        for e in cluster.events()
        if e["reason"] == "DeviceTaintManagerEviction" and e["involvedObject"]["name"] == pod
    ]


def test_a_kept_instance_is_adopted_by_a_claim_of_the_same_placement(dra: Cluster, dra_node: Node) -> None:
    cluster, node = dra, dra_node
    fatia = start_with(cluster, node, "dra: {reuse: identical}\n")
    claim_template(cluster, "mig-1g", "1g.10gb")
    claim_template(cluster, "mig-3g", "3g.40gb")
    claim_pod(cluster, node, "reuse-a", "mig-1g")
    claim_pod(cluster, node, "reuse-other", "mig-3g")
    for pod in ("reuse-a", "reuse-other"):
        node.wait_pod_running(pod, 120)
    _, device = allocation(cluster, "reuse-a")
    before = instances(cluster, node)
    assert len(before) == 2

    # The pod goes, the kubelet unprepares its claim: the instance stays, kept.
    node.delete_pod("reuse-a", 90)
    node.pods.remove("reuse-a")
    wait_for(lambda: logged(fatia, "instance_kept"), 60, "fatia to keep the instance")
    assert instances(cluster, node) == before
    assert device in devices(cluster)  # published, free for the scheduler
    wait_for(lambda: f"kept for reuse: {device}" in (node.annotation() or {}).get("message", ""), 30,
             "the Node's status to name the kept instance")  # fmt: skip

    # A new claim that the scheduler must put on the same placement adopts it.
    claim_template(cluster, "mig-1g-there", "1g.10gb", start=start_of(device))
    claim_pod(cluster, node, "reuse-b", "mig-1g-there")
    node.wait_pod_running("reuse-b", 120)
    uid, again = allocation(cluster, "reuse-b")
    assert again == device
    assert instances(cluster, node) == before  # the same MIG UUID; every other one unchanged
    assert cdi_devices(cluster, "reuse-b") == [f"fatia.dev/gpu={uid}-{device}"]
    assert [e["device"] for e in logged(fatia, "kept_instance_adopted")] == [device]


def test_an_xid_under_no_execute_evicts_the_pod_using_the_device(dra: Cluster, dra_node: Node) -> None:
    cluster, node = dra, dra_node
    start_with(cluster, node, "dra: {taintEffect: NoExecute}\n")
    claim_template(cluster, "mig-2g", "2g.20gb")
    claim_pod(cluster, node, "evicted", "mig-2g")
    node.wait_pod_running("evicted", 120)
    _, device = allocation(cluster, "evicted")

    cluster.fatia_sim(node.state_dir, "xid", "--gpu=1", "--xid=79")
    taints = wait_for(lambda: devices(cluster)[device].get("taints"), 30, "the device's taint")
    assert [(t["key"], t["effect"]) for t in taints] == [(f"{DRIVER}/unhealthy", "NoExecute")]
    assert not devices(cluster)["gpu-0"].get("taints")

    node.wait_pod_gone("evicted", 60)  # deleted by the device-taint eviction controller, not us
    node.pods.remove("evicted")
    wait_for(lambda: evictions(cluster, "evicted"), 30, "the eviction controller's Event")
    wait_for(lambda: not instances(cluster, node), 60, "the claim's instance to be destroyed")
