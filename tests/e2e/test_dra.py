"""fatia as a DRA driver in the real cluster: the real scheduler picks MIG placements from
fatia's ResourceSlices, the real kubelet asks fatia to prepare them, fatia cuts exactly
that slice.

No feature gate is set: everything used here is on by default in Kubernetes 1.37
(DynamicResourceAllocation GA, DRAPartitionableDevices beta, DRADeviceTaints GA,
DRAExtendedResource GA, ResourceHealthStatus beta). The kube-controller-manager's
resourceclaim controller turns ResourceClaimTemplates into claims.

What the tests read back: the claim's allocation from the API server, the simulated GPUs
(``fatia sim show``: the instances that really exist), and the fake CRI's record of
CreateContainer (the CDI devices the kubelet passed to the runtime).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness import (
    FATIA,
    NODE_NAME,
    REPO,
    Cluster,
    E2EError,
    Node,
    Process,
    fatia_env,
    free_port,
    wait_for,
)
from mig.catalog import MODELS

DRIVER = "gpu.fatia.dev"
COMPONENT = REPO / "daemonset" / "components" / "dra"
POOL = """version: v1
gpus:
  - devices: [0]
    mig-enabled: false
  - devices: [1]
    mig-enabled: true
health: {recoverySeconds: 15}
"""
H100 = MODELS["h100-80gb"]
PROFILE_BY_ID = {p.id: p for p in H100.profiles}


@pytest.fixture(scope="module")
def dra(cluster: Cluster) -> Iterator[Cluster]:
    """The DRA component's DeviceClasses, RBAC and admission policy (the DaemonSet, which
    nothing runs here, stays as the base left it); the classes are removed afterwards."""
    for name in ("deviceclasses.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "--server-side", "--field-manager=fatia-e2e", "-f", str(COMPONENT / name))
    yield cluster
    delete_slices(cluster)
    # The classes map nvidia.com/gpu and nvidia.com/mig-* to DRA: later tests run the
    # device-plugin mode, whose pods must never be routed to a driver that is gone.
    cluster.kubectl("delete", "--ignore-not-found", "-f", str(COMPONENT / "deviceclasses.yaml"), check=False)


def delete_slices(cluster: Cluster) -> None:
    cluster.kubectl("delete", "resourceslices", f"--field-selector=spec.driver={DRIVER}",
                    "--ignore-not-found", check=False)  # fmt: skip


def start_dra(cluster: Cluster, node: Node) -> Process:
    process = cluster.start_fatia(
        node.state_dir,
        metrics_port=free_port(),
        extra=["--mode=dra", "--kubelet-dir=/var/lib/kubelet", "--cdi-dir=/var/run/cdi"],
    )
    node.fatias.append(process)
    return process


def slices(cluster: Cluster) -> list[dict[str, Any]]:
    assert cluster.api is not None
    found: list[dict[str, Any]] = cluster.api.get(
        f"/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName={NODE_NAME},spec.driver={DRIVER}"
    )["items"]
    return found


def devices(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices(cluster) for d in s["spec"].get("devices", [])}


def wait_pool(cluster: Cluster, process: Process, count: int = 1 + 25) -> None:
    def published() -> bool:
        if not process.alive():
            raise E2EError(f"fatia exited:\n{process.tail()}")
        return len(devices(cluster)) == count

    wait_for(published, 90, f"{count} devices in fatia's ResourceSlices")


def instances(cluster: Cluster, node: Node) -> dict[int, str]:
    """The H100's instances as the simulator holds them: start slice -> 'profile MIG-uuid'."""
    state = json.loads(cluster.fatia_sim(node.state_dir, "show"))
    gpu = state["gpus"][1]
    return {
        gi["start"]: f"{PROFILE_BY_ID[gi['profile_id']].name} "
        + ",".join(ci["uuid"] for ci in gi["compute_instances"])
        for gi in gpu["gpu_instances"]
    }


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def claim_template(cluster: Cluster, name: str, profile: str, *, start: int | None = None) -> None:
    """A claim template for one MIG device of ``profile`` (at memory slice ``start``, if given)."""
    where = "" if start is None else f' && device.attributes["{DRIVER}"].placementStart == {start}'
    apply(cluster, {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"spec": {"devices": {"requests": [{
            "name": "gpu",
            "exactly": {
                "deviceClassName": f"mig.{DRIVER}",
                "selectors": [{"cel": {"expression": f'device.attributes["{DRIVER}"].profile == "{profile}"' + where}}],  # noqa: E501
            },
        }]}}},
    })  # fmt: skip


def claim_pod(cluster: Cluster, node: Node, name: str, template: str = "", *, claim: str = "") -> None:
    """A pod with one claim: a new one from ``template``, or the named ``claim`` (which pods share)."""
    source = {"resourceClaimName": claim} if claim else {"resourceClaimTemplateName": template}
    node.pods.append(name)
    apply(cluster, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"fatia-e2e": "1"}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "resourceClaims": [{"name": "gpu", **source}],
            "containers": [{"name": "c0", "image": "registry.invalid/fatia-e2e/pause:1",
                            "resources": {"claims": [{"name": "gpu"}]}}],
        },
    })  # fmt: skip


def allocation(cluster: Cluster, pod: str) -> tuple[str, str]:
    """(claim UID, allocated device) of a running pod's claim."""
    assert cluster.api is not None
    status = wait_for(lambda: (cluster.pod(pod) or {}).get("status", {}).get("resourceClaimStatuses"), 30,
                      f"pod {pod}'s claim")  # fmt: skip
    claim = cluster.api.get(
        f"/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/{status[0]['resourceClaimName']}"
    )
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"]) == (DRIVER, NODE_NAME)
    return claim["metadata"]["uid"], result["device"]


def start_of(device: str) -> int:
    return int(device.rsplit("-", 1)[1])


def cdi_devices(cluster: Cluster, pod: str) -> list[str]:
    record = wait_for(lambda: cluster.record_of(pod, "c0"), 60, f"the fake CRI to record pod {pod}")
    found: list[str] = record["cdiDevices"]
    return found


def unschedulable(cluster: Cluster, pod: str) -> str | None:
    conditions = (cluster.pod(pod) or {}).get("status", {}).get("conditions") or []
    scheduled = next((c for c in conditions if c["type"] == "PodScheduled"), None)
    if scheduled and scheduled["status"] == "False" and scheduled.get("reason") == "Unschedulable":
        return str(scheduled.get("message", ""))
    return None


def delete_pods(node: Node) -> None:
    """Delete the test's pods while fatia still runs (the kubelet unprepares their claims)."""
    for name in list(node.pods):
        node.cluster.kubectl("delete", "pod", name, "--wait=false", "--ignore-not-found", check=False)
    for name in list(node.pods):
        node.wait_pod_gone(name, 90)


@pytest.fixture
def dra_node(dra: Cluster, node: Node) -> Iterator[Node]:
    node.apply_config(POOL)
    yield node
    try:
        delete_pods(node)
    finally:
        for process in node.fatias:
            process.stop()
        delete_slices(dra)


@pytest.fixture
def fatia(dra: Cluster, dra_node: Node) -> Process:
    """fatia started in DRA mode on the node, its pool published."""
    process = start_dra(dra, dra_node)
    wait_pool(dra, process)
    return process


def test_the_slices_fatia_would_publish_pass_the_api_servers_validation(dra: Cluster, tmp_path: Any) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "version: v1\ngpus: [{devices: [0], mig-enabled: false}, {devices: all, mig-enabled: true}]\n"
    )
    plan = subprocess.run([str(FATIA), "plan", "--mode=dra", f"--config={config}",
                           "--nvml=sim:a100-40gb:1,h100-80gb:8,a30:1,rtx-pro-6000:1"],
                          capture_output=True, text=True, timeout=60, check=True,
                          env=fatia_env())  # fmt: skip
    done = dra.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=plan.stdout)
    assert (
        done.stdout.count("resourceslice.resource.k8s.io/") == plan.stdout.count("kind: ResourceSlice") >= 3
    )


def test_claims_get_non_overlapping_slices_cut_on_demand_and_freed_one_by_one(
    dra: Cluster, dra_node: Node, fatia: Process
) -> None:
    cluster, node = dra, dra_node
    assert devices(cluster)["gpu-0"]["attributes"]["type"] == {"string": "gpu"}
    claim_template(cluster, "mig-1g", "1g.10gb")
    claim_template(cluster, "mig-7g", "7g.80gb")

    # One claim: the real scheduler picks a placement, the kubelet asks fatia to prepare it.
    claim_pod(cluster, node, "dra-a", "mig-1g")
    node.wait_pod_running("dra-a", 120)
    uid_a, device_a = allocation(cluster, "dra-a")
    cut = instances(cluster, node)
    assert set(cut) == {start_of(device_a)} and cut[start_of(device_a)].startswith("1g.10gb MIG-")
    assert cdi_devices(cluster, "dra-a") == [f"fatia.dev/gpu={uid_a}-{device_a}"]

    # Two more: other placements, and the first instance untouched.
    for pod in ("dra-b", "dra-c"):
        claim_pod(cluster, node, pod, "mig-1g")
    for pod in ("dra-b", "dra-c"):
        node.wait_pod_running(pod, 120)
    placed = {pod: allocation(cluster, pod)[1] for pod in ("dra-a", "dra-b", "dra-c")}
    assert len({start_of(d) for d in placed.values()}) == 3
    three = instances(cluster, node)
    assert set(three) == {start_of(d) for d in placed.values()}
    assert three[start_of(device_a)] == cut[start_of(device_a)]

    # A 7g cannot fit next to them: the scheduler keeps it pending, nothing is cut.
    claim_pod(cluster, node, "dra-big", "mig-7g")
    reason = wait_for(lambda: unschedulable(cluster, "dra-big"), 60, "dra-big to be unschedulable")
    assert "claim" in reason.lower(), reason
    assert instances(cluster, node) == three

    # Deleting one pod destroys only its instance.
    node.delete_pod("dra-b", 90)
    node.pods.remove("dra-b")
    wait_for(lambda: len(instances(cluster, node)) == 2, 60, "dra-b's instance to be destroyed")
    assert instances(cluster, node) == {s: three[s] for s in three if s != start_of(placed["dra-b"])}

    # Once the others are gone the 7g fits and is cut.
    for pod in ("dra-a", "dra-c"):
        node.delete_pod(pod, 90)
        node.pods.remove(pod)
    node.wait_pod_running("dra-big", 180)
    assert [v.split()[0] for v in instances(cluster, node).values()] == ["7g.80gb"]


def test_an_extended_resource_pod_is_served_through_dra(dra: Cluster, dra_node: Node, fatia: Process) -> None:
    cluster, node = dra, dra_node
    node.create_pod("dra-extended", {"nvidia.com/mig-1g.20gb": 1})
    pod = node.wait_pod_running("dra-extended", 120)
    assert pod["status"].get("extendedResourceClaimStatus"), pod["status"]
    [cdi] = cdi_devices(cluster, "dra-extended")
    assert cdi.startswith("fatia.dev/gpu=") and "-mig-1g-20gb-" in cdi
    assert [v.split()[0] for v in instances(cluster, node).values()] == ["1g.20gb"]


def test_fatia_killed_in_the_middle_of_a_prepare_converges_after_restart(
    dra: Cluster, dra_node: Node, fatia: Process
) -> None:
    cluster, node = dra, dra_node
    claim_template(cluster, "mig-3g", "3g.40gb")
    # The compute instance is created, then fatia dies before it records the claim prepared.
    cluster.fatia_sim(node.state_dir, "fault", "--call=nvmlGpuInstanceCreateComputeInstance",
                      "--action=kill", "--when=after", "--gpu=1")  # fmt: skip
    claim_pod(cluster, node, "dra-crash", "mig-3g")
    wait_for(lambda: not fatia.alive(), 120, "fatia to be killed by the injected fault")
    half = instances(cluster, node)
    assert len(half) == 1  # the instance exists; nobody has been told

    second = start_dra(cluster, node)
    node.wait_pod_running("dra-crash", 180)  # the kubelet retries NodePrepareResources
    uid, device = allocation(cluster, "dra-crash")
    assert instances(cluster, node) == half  # no second instance, no orphan: adopted
    assert cdi_devices(cluster, "dra-crash") == [f"fatia.dev/gpu={uid}-{device}"]
    logs = fatia.output() + second.output()
    prepared = [json.loads(line) for line in logs.splitlines() if '"claim_prepared"' in line]
    assert [p["uid"] for p in prepared] == [uid]  # prepared exactly once


def test_an_xid_taints_the_gpus_devices_and_the_scheduler_stops_using_them(
    dra: Cluster, dra_node: Node, fatia: Process
) -> None:
    cluster, node = dra, dra_node
    claim_template(cluster, "mig-2g", "2g.20gb")
    cluster.fatia_sim(node.state_dir, "xid", "--gpu=1", "--xid=79")
    wait_for(lambda: all(d.get("taints") for n, d in devices(cluster).items() if n.startswith("gpu-1-")),
             30, "the H100's devices to be tainted")  # fmt: skip
    assert not devices(cluster)["gpu-0"].get("taints")

    claim_pod(cluster, node, "dra-tainted", "mig-2g")
    wait_for(lambda: unschedulable(cluster, "dra-tainted"), 60, "the pod to be unschedulable while tainted")
    assert instances(cluster, node) == {}

    # The XID heals after the policy's quiet time; the taint goes and the pod is placed.
    started = time.monotonic()
    node.wait_pod_running("dra-tainted", 180)
    assert time.monotonic() - started > 1
    assert [v.split()[0] for v in instances(cluster, node).values()] == ["2g.20gb"]


def test_fatia_may_write_only_its_own_nodes_slices(dra: Cluster) -> None:
    def create(node_name: str) -> subprocess.CompletedProcess[str]:
        body = {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{node_name}-vap-check"},
            "spec": {"driver": DRIVER, "nodeName": node_name,
                     "pool": {"name": node_name, "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": "gpu-0"}]},
        }  # fmt: skip
        return dra.kubectl("create", "--dry-run=server", "-f", "-", kubeconfig=dra.fatia_kubeconfig,
                           input=json.dumps(body), check=False)  # fmt: skip

    assert create(NODE_NAME).returncode == 0, create(NODE_NAME).stderr
    other = create("someone-elses-node")
    assert other.returncode != 0
    assert f"only the ResourceSlices of the node its token is bound to ({NODE_NAME})" in other.stderr, (
        other.stderr
    )


def device_health(cluster: Cluster, pod: str) -> dict[str, str]:
    """What the kubelet says in the pod's status of its DRA devices' health: resource ID -> health."""
    statuses = (cluster.pod(pod) or {}).get("status", {}).get("containerStatuses") or []
    return {
        r["resourceID"]: r.get("health", "")
        for s in statuses
        for resource in s.get("allocatedResourcesStatus") or []
        if resource["name"].startswith("claim:")
        for r in resource.get("resources") or []
    }


def test_the_kubelet_shows_fatias_device_health_in_the_pod_status(
    dra: Cluster, dra_node: Node, fatia: Process
) -> None:
    """The real kubelet watches fatia's DRAResourceHealth stream (ResourceHealthStatus)."""
    cluster, node = dra, dra_node
    claim_template(cluster, "mig-2g", "2g.20gb")
    claim_pod(cluster, node, "dra-health", "mig-2g")
    node.wait_pod_running("dra-health", 120)
    uid, device = allocation(cluster, "dra-health")
    resource_id = f"fatia.dev/gpu={uid}-{device}"  # the kubelet names a DRA device by its CDI ID
    wait_for(lambda: device_health(cluster, "dra-health") == {resource_id: "Healthy"}, 60,
             "the pod status to show its device healthy")  # fmt: skip

    cluster.fatia_sim(node.state_dir, "xid", "--gpu=1", "--xid=79")
    wait_for(lambda: device_health(cluster, "dra-health") == {resource_id: "Unhealthy"}, 60,
             "the pod status to show its device unhealthy")  # fmt: skip
    # The XID heals after the pool's quiet time (recoverySeconds: 15).
    wait_for(lambda: device_health(cluster, "dra-health") == {resource_id: "Healthy"}, 90,
             "the pod status to show its device healthy again")  # fmt: skip
