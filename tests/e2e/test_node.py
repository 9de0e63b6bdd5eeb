"""fatia on a GPU node: registration with the real kubelet, the Node's status, ConfigMap edits.

Everything is read back from the real API server: the counts are what the real
kubelet's device manager put into the Node's status from fatia's ListAndWatch.
"""

from __future__ import annotations

import time

from e2e.harness import NODE_NAME, Cluster, Node, wait_for
from e2e.layouts import (
    A100_MIG_COUNTS,
    H100_IMPOSSIBLE,
    H100_MIG,
    H100_MIG_COUNTS,
    H100_MIG_EDITED,
    H100_MIG_EDITED_COUNTS,
    WHOLE_COUNTS,
    a100_mig,
)


def test_fatia_registers_whole_gpus_with_the_real_kubelet(cluster: Cluster, node: Node) -> None:
    fatia = node.start_fatia()

    allocatable = node.wait_allocatable(WHOLE_COUNTS, 90)
    state = wait_for(
        lambda: (
            cluster.node()["metadata"]["labels"].get("fatia.dev/config.state") == "success" and cluster.node()
        ),
        30,
        "state label success",
    )
    labels = state["metadata"]["labels"]

    assert allocatable["nvidia.com/gpu"] == cluster.capacity()["nvidia.com/gpu"] == "2"
    assert labels["fatia.dev/gpu.count"] == "2"
    assert labels["fatia.dev/mig.capable"] == "true"
    assert labels["fatia.dev/mig.strategy"] == "mixed"
    assert labels["fatia.dev/gpu.product"].startswith("NVIDIA-A100")
    assert int(labels["fatia.dev/gpu.memory"]) > 0
    annotation = node.annotation()
    assert annotation is not None
    assert annotation["phase"] == "idle"
    assert annotation["resources"] == {"nvidia.com/gpu": 2}
    # Under daemonset/rbac.yaml every call fatia made was allowed.
    assert "Forbidden" not in fatia.output() and '"status": 403' not in fatia.output()


def test_mig_layouts_from_the_configmap_reach_the_node(cluster: Cluster, node: Node) -> None:
    node.start_fatia()
    node.wait_allocatable(WHOLE_COUNTS, 90)

    node.apply_config(H100_MIG)
    node.wait_allocatable(H100_MIG_COUNTS, 60)
    # GPU 1 has no rule in this config: it is left as it is, partitioned.
    both = {**A100_MIG_COUNTS, **H100_MIG_COUNTS, "nvidia.com/gpu": 0}
    node.partition_a100(a100_mig(), both)

    capacity, allocatable = cluster.capacity(), cluster.allocatable()
    for resource, count in both.items():
        if count == 0:
            assert int(allocatable.get(resource, "0")) == 0, resource
            continue
        assert int(capacity[resource]) == int(allocatable[resource]) == count, resource
    annotation = wait_for(
        lambda: (a := node.annotation()) and a["phase"] == "idle" and a, 30, "annotation phase idle"
    )
    assert annotation["resources"] == {k: v for k, v in both.items() if v}
    assert annotation["source"] == f"configmap fatia-system/fatia-{NODE_NAME}"
    gpu0 = next(g for g in annotation["gpus"] if g["index"] == 0)
    assert gpu0["mig"] == "enabled"
    assert sorted(p.split("@")[0] for p in gpu0["layout"]) == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    reasons = {e["reason"] for e in cluster.fatia_events()}
    assert "Applied" in reasons, reasons
    assert all(e["involvedObject"]["name"] == NODE_NAME for e in cluster.fatia_events())


def test_configmap_edit_repartitions_and_allocatable_follows(node: Node) -> None:
    node.apply_config(H100_MIG)
    node.start_fatia()
    node.wait_allocatable(H100_MIG_COUNTS, 90)

    node.apply_config(H100_MIG_EDITED)

    node.wait_allocatable(H100_MIG_EDITED_COUNTS, 60)
    gpu1 = next(g for g in node.wait_phase("idle")["gpus"] if g["index"] == 1)
    assert sorted(gpu1["layout"]) == sorted(f"1g.10gb@{i}" for i in range(7))


def test_bad_configmap_edit_changes_nothing_and_warns(cluster: Cluster, node: Node) -> None:
    node.apply_config(H100_MIG)
    node.start_fatia()
    node.wait_allocatable(H100_MIG_COUNTS, 90)
    node.wait_phase("idle")
    before = node.gpu_allocatable()
    invalid_before = len(cluster.fatia_events("InvalidConfig"))

    node.apply_config(H100_IMPOSSIBLE)

    warning = wait_for(
        lambda: cluster.fatia_events("InvalidConfig")[invalid_before:],
        30,
        "an InvalidConfig Event about the bad config",
        interval=0.5,
    )[0]
    assert warning["type"] == "Warning", warning
    assert "3g.40gb" in warning["message"], warning["message"]
    # The node keeps what it had, through several node-status updates.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert node.gpu_allocatable() == before
        time.sleep(0.2)
    status = node.status()
    assert status is not None and status["phase"] == "failed"
    assert status["applied_config"] != status["desired_config"]
