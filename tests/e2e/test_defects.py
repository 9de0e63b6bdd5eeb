"""Behaviour only a real kubelet shows, written as specifications (issue 11).

- A DaemonSet rolling update with ``maxSurge: 1`` (what daemonset/daemonset.yaml ships)
  runs a second fatia on the node next to the first, then stops the first: the node must
  keep every resource allocatable.
- A container asking for two MIG profiles: the kubelet merges the Allocate answers of
  the two resources, and with ``deviceListStrategy: envvar`` keeps one
  ``NVIDIA_VISIBLE_DEVICES`` only; ``volume-mounts`` and CDI names deliver both.
- A kubelet restart (it deletes every socket in the device-plugin directory): every
  resource is back in the Node's allocatable within 2 s of the kubelet serving again.

The surge and restart tests run against two kubelets (fixture ``kubelet_version``):
1.37, whose device manager keeps a client per plugin socket (Kubernetes PR #135437),
and 1.36, the newest release that keeps one client per resource name, where the old
instance's closing stream takes the new instance's registration with it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from e2e.harness import FATIA, NVML_SPEC, Cluster, Node, Process, fatia_env, http_ok, wait_for
from e2e.layouts import A100_MIG_COUNTS, H100_MIG, H100_MIG_COUNTS, a100_mig

BACK_WITHIN_S = 2.0
STAYS_FOR_S = 5.0


def ready(node: Node, process: Process) -> bool:
    """fatia's /readyz, which the DaemonSet's readinessProbe asks."""
    return http_ok(f"http://127.0.0.1:{node.metrics_port(process)}/readyz")


def gpu_counts(node: Node, expected: dict[str, int]) -> dict[str, int]:
    allocatable = node.gpu_allocatable()
    return {name: allocatable.get(name, 0) for name in expected}


def assert_back_and_stays(node: Node, expected: dict[str, int], since: float, what: str) -> None:
    """From BACK_WITHIN_S after ``since`` on, for STAYS_FOR_S, allocatable is ``expected``.

    What the Node shows before that may be anything: the old status, a dip to zero.
    On failure the message lists every change of the counts, in seconds from ``since``.
    """
    back_by, until = since + BACK_WITHIN_S, since + BACK_WITHIN_S + STAYS_FOR_S
    timeline: list[tuple[float, dict[str, int]]] = []
    failed_at: float | None = None
    while time.monotonic() < until or (failed_at is not None and time.monotonic() < failed_at + 5):
        now, counts = time.monotonic(), gpu_counts(node, expected)
        if not timeline or timeline[-1][1] != counts:
            timeline.append((now - since, counts))
        if failed_at is None and now >= back_by and counts != expected:
            failed_at = now  # keep watching 5 s more: slow, or gone for good?
        time.sleep(0.05)
    if failed_at is not None:
        changes = "; ".join(f"{t:+.2f} s {c}" for t, c in timeline)
        raise AssertionError(
            f"{what}: not {expected} from {BACK_WITHIN_S} s to {BACK_WITHIN_S + STAYS_FOR_S} s "
            f"(first miss at {failed_at - since:+.2f} s); allocatable over time: {changes}"
        )


def test_surge_rolling_update_keeps_every_resource_allocatable(kubelet_version: str, node: Node) -> None:
    node.apply_config(H100_MIG)
    old = node.start_fatia()
    node.wait_allocatable(H100_MIG_COUNTS, 90)
    wait_for(lambda: ready(node, old), 30, "the old fatia ready")

    # The DaemonSet's surge pod: same node, same hostPath state directory, its own
    # instance; the old pod is stopped once the new one is Ready.
    new = node.start_fatia()
    wait_for(lambda: ready(node, new), 60, "the new fatia ready")
    old.signal(signal.SIGTERM)
    old.popen.wait(30)
    stopped = time.monotonic()

    assert_back_and_stays(node, H100_MIG_COUNTS, stopped, "allocatable after the old fatia stopped")
    assert new.alive()
    assert ready(node, new)


def test_kubelet_restart_every_resource_back_within_2s(
    kubelet_version: str, cluster: Cluster, node: Node
) -> None:
    node.apply_config(H100_MIG)
    fatia = node.start_fatia()
    node.wait_allocatable(H100_MIG_COUNTS, 90)

    cluster.stop_kubelet()
    cluster.kubelet = cluster.start_kubelet()
    serving = cluster.wait_kubelet_serving(120)

    assert_back_and_stays(node, H100_MIG_COUNTS, serving, "allocatable after the kubelet restart")
    assert fatia.alive()
    cluster.wait_node_ready(60)


def test_two_mig_profiles_under_envvar_reach_the_container_as_one(cluster: Cluster, node: Node) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(), A100_MIG_COUNTS)

    node.create_pod("two-profiles", {"nvidia.com/mig-1g.5gb": 1, "nvidia.com/mig-2g.10gb": 1})

    pod = node.wait_pod_running("two-profiles")
    record = wait_for(lambda: cluster.record_of("two-profiles"), 60, "the container's record")
    assigned = cluster.assigned_devices(pod["metadata"]["uid"], "c0")
    both = sorted(ids[0] for ids in assigned.values())
    assert len(both) == 2
    # The kubelet merges the two Allocate answers by key: one value survives.
    [visible] = [e for e in record["envList"] if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    assert visible.split("=", 1)[1] in both
    # fatia says so on the Node, for the config that mixes profiles under envvar.
    warnings = [e for e in cluster.fatia_events() if e["type"] == "Warning" and "envvar" in e["message"]]
    assert warnings, [(e["reason"], e["message"]) for e in cluster.fatia_events()]


@pytest.mark.parametrize("strategy", ["volume-mounts", "cdi-cri"])
def test_two_mig_profiles_reach_the_container_under(cluster: Cluster, node: Node, strategy: str) -> None:
    node.start_fatia()
    node.partition_a100(a100_mig(strategy), A100_MIG_COUNTS)

    node.create_pod("two-profiles", {"nvidia.com/mig-1g.5gb": 1, "nvidia.com/mig-2g.10gb": 1})

    pod = node.wait_pod_running("two-profiles")
    record = wait_for(lambda: cluster.record_of("two-profiles"), 60, "the container's record")
    both = sorted(ids[0] for ids in cluster.assigned_devices(pod["metadata"]["uid"], "c0").values())
    if strategy == "volume-mounts":
        paths = sorted(
            m["containerPath"]
            for m in record["mounts"]
            if m["containerPath"].startswith("/var/run/nvidia-container-devices/")
        )
        assert paths == [f"/var/run/nvidia-container-devices/{d}" for d in both]
    else:
        assert record["cdiDevices"] == sorted(f"nvidia.com/gpu={d}" for d in both)


def test_plan_warns_that_envvar_cannot_deliver_two_mig_profiles(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(a100_mig("envvar"))

    done = subprocess.run(
        [str(FATIA), "plan", f"--config={config}", f"--nvml={NVML_SPEC}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=fatia_env(),
    )

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "envvar" in output and "warn" in output.lower(), output
