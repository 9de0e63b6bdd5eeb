"""Propagation through a real cluster: ConfigMap edit -> Node allocatable, pod -> container.

Boots the e2e tier's one-node cluster (tests/e2e/harness.py: etcd, kube-apiserver,
controller manager, scheduler, the real kubelet with the recording fake CRI; binaries
from ``make e2e-build``), runs ``fatia run`` on the node with its ServiceAccount token
and measures, as a user sees it:

1. **edit -> allocatable**: the clock starts before ``kubectl apply`` of the edited
   per-node ConfigMap and stops when the Node object (read from the API server every
   50 ms) shows the new counts. 20 edits alternate between two H100 layouts, each at a
   random point (seeded) of the kubelet's node-status update period
   (``nodeStatusUpdateFrequency``): the kubelet writes device counts into the Node's
   status only then, so part of that period is in every sample. It is printed, and
   ``--node-status-update-frequency`` sets it (the e2e tier uses 1s, the kubelet's
   default is 10s).
2. **pod -> container**: the clock starts before ``kubectl apply`` of a pod asking for
   ``nvidia.com/mig-1g.5gb: 1`` and stops when the fake CRI has recorded the pod's
   CreateContainer with ``NVIDIA_VISIBLE_DEVICES=MIG-...`` (scheduling, binding, the
   kubelet's admission, fatia's Allocate, the CRI call).

Targets (issue 11): edit -> allocatable median <= 2 s, pod -> container median <= 3 s.
``--check`` exits 1 when one is missed. Run from the repository root:

    FATIA_E2E_BIN=~/.cache/fatia-e2e/v1.37.2/bin .venv/bin/python bench/e2e_propagation.py
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.harness import Cluster, Node, booted, wait_for
from e2e.layouts import (
    A100_MIG_COUNTS,
    H100_MIG,
    H100_MIG_COUNTS,
    H100_MIG_EDITED,
    H100_MIG_EDITED_COUNTS,
    a100_mig,
)

EDIT_TARGET_S = 2.0
POD_TARGET_S = 3.0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def seconds(duration: str) -> float:
    """A kubelet duration such as ``1s``, ``500ms`` or ``1m``."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * scale
    raise ValueError(f"not a duration: {duration}")


def measure_edits(node: Node, edits: int, period: float) -> list[float]:
    """Each edit at a random point of the kubelet's node-status period, as a user's is:
    edits right after one another would each start just after the Node was written and
    wait a whole period."""
    layouts = [(H100_MIG_EDITED, H100_MIG_EDITED_COUNTS), (H100_MIG, H100_MIG_COUNTS)]
    phase = random.Random(11)
    samples = []
    for i in range(edits):
        config, counts = layouts[i % 2]
        time.sleep(phase.uniform(0, period))
        start = time.perf_counter()
        node.apply_config(config)
        node.wait_allocatable(counts, 60)
        samples.append(time.perf_counter() - start)
        print(f"  edit {i + 1:2d}: {samples[-1]:.2f} s", flush=True)
    return samples


def measure_pods(cluster: Cluster, node: Node, pods: int) -> list[float]:
    samples = []
    for i in range(pods):
        name = f"bench-pod-{i}"
        start = time.perf_counter()
        node.create_pod(name, {"nvidia.com/mig-1g.5gb": 1})

        def recorded(pod: str = name) -> dict[str, Any] | None:
            record = cluster.record_of(pod)
            visible = (record or {}).get("envs", {}).get("NVIDIA_VISIBLE_DEVICES", "")
            return record if visible.startswith("MIG-") else None

        record = wait_for(recorded, 60, f"the container of {name}", interval=0.02)
        samples.append(time.perf_counter() - start)
        print(
            f"  pod {i + 1:2d}: {samples[-1]:.2f} s  "
            f"NVIDIA_VISIBLE_DEVICES={record['envs']['NVIDIA_VISIBLE_DEVICES']}",
            flush=True,
        )
        node.delete_pod(name)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bin",
        type=Path,
        default=os.environ.get("FATIA_E2E_BIN"),
        help="the binaries of make e2e-build (default: $FATIA_E2E_BIN)",
    )
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--node-status-update-frequency", default="1s")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    if args.bin is None:
        parser.error("--bin or FATIA_E2E_BIN is required (make e2e-build prints the path)")

    with booted(args.bin, node_status_update_frequency=args.node_status_update_frequency) as cluster:
        print(
            f"cluster booted in {cluster.timings['boot']:.1f} s; kubelet "
            f"nodeStatusUpdateFrequency: {cluster.node_status_update_frequency} "
            "(the kubelet's default: 10s)",
            flush=True,
        )
        node = Node(cluster, "bench/e2e_propagation")
        try:
            node.apply_config(H100_MIG)
            node.start_fatia()
            node.wait_allocatable(H100_MIG_COUNTS, 120)
            print(f"edit -> allocatable, {args.edits} kubectl apply edits:", flush=True)
            edits = measure_edits(node, args.edits, seconds(args.node_status_update_frequency))
            node.partition_a100(a100_mig(), {**A100_MIG_COUNTS, "nvidia.com/gpu": 0})
            print(f"pod -> container with the MIG UUID, {args.pods} pods:", flush=True)
            pods = measure_pods(cluster, node, args.pods)
        finally:
            node.cleanup()
        # Before the teardown, whose checks may still fail the run.
        edit_median, edit_p90 = statistics.median(edits), percentile(edits, 0.9)
        pod_median = statistics.median(pods)
        edit_ok, pod_ok = edit_median <= EDIT_TARGET_S, pod_median <= POD_TARGET_S
        print(f"kubelet nodeStatusUpdateFrequency: {args.node_status_update_frequency}")
        print(
            f"edit -> allocatable: median {edit_median:.2f} s, p90 {edit_p90:.2f} s "
            f"(target median <= {EDIT_TARGET_S} s) {'PASS' if edit_ok else 'FAIL'}"
        )
        print(
            f"pod -> container: median {pod_median:.2f} s, max {max(pods):.2f} s "
            f"(target median <= {POD_TARGET_S} s) {'PASS' if pod_ok else 'FAIL'}"
        )

    return 1 if args.check and not (edit_ok and pod_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
