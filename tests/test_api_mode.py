"""``fatia run`` in API mode against a fake API server, with the real kubernetes client.

The daemon runs as a real process: it watches its per-node ConfigMap over HTTP,
applies layouts on the simulated GPUs, serves the kubelet emulator, and
reports on its Node (label, annotation, Events).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from conftest import RunFatia, wait_until

from deviceplugin.testing.apiserver import FakeKube
from deviceplugin.testing.daemon import FatiaProcess
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl

NAMESPACE = "fatia-system"
NODE = "node-a"
STATE_LABEL = "fatia.dev/config.state"

TIME_SLICED = "version: v1\ngpus: [{devices: all, replicas: 2}]\n"
MIG = "version: v1\ngpus: [{devices: [0], mig-devices: {3g.40gb: 2}}, {devices: all, replicas: 3}]\n"


@pytest.fixture
def cluster(fake_kube: FakeKube, sockdir: Path) -> tuple[FakeKube, Path]:
    fake_kube.add_node(NODE, labels={"kubernetes.io/hostname": NODE})
    return fake_kube, fake_kube.write_kubeconfig(sockdir / "kubeconfig")


def start(run_fatia: RunFatia, kubeconfig: Path) -> FatiaProcess:
    return run_fatia(
        "sim:h100-80gb:2",
        extra=("--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE),
    )


def set_config(fake: FakeKube, text: str, configmap: str = f"fatia-{NODE}") -> None:
    """Create or replace a fatia ConfigMap (the node's own by default) holding ``text``."""
    fake.set_configmap(NAMESPACE, configmap, {"config.yaml": text})


@pytest.fixture
def time_sliced(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> tuple[FakeKube, FatiaProcess]:
    """fatia with its node's ConfigMap (2 replicas on two H100s) applied: 4 devices advertised."""
    fake, kubeconfig = cluster
    set_config(fake, TIME_SLICED)
    daemon = start(run_fatia, kubeconfig)
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 10), daemon.logs()
    return fake, daemon


def state(fake: FakeKube) -> str | None:
    node = fake.node(NODE) or {}
    return (node.get("metadata", {}).get("labels") or {}).get(STATE_LABEL)


def status(fake: FakeKube) -> dict[str, object]:
    node = fake.node(NODE) or {}
    raw = (node.get("metadata", {}).get("annotations") or {}).get("fatia.dev/config.status")
    return json.loads(raw) if raw else {}


def counts(kubelet: KubeletEmulator) -> dict[str, int]:
    return {name: len(devices) for name, devices in kubelet.resources().items()}


def test_configmap_created_edited_and_deleted_reach_the_node(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    fake, kubeconfig = cluster
    daemon = start(run_fatia, kubeconfig)
    # No ConfigMap yet: both GPUs are advertised whole, nothing is shared.
    assert kubelet.wait_for(lambda k: counts(k) == {"nvidia.com/gpu": 2}, 10), daemon.logs()

    set_config(fake, MIG)
    assert kubelet.wait_for(lambda k: counts(k) == {"nvidia.com/gpu": 3, "nvidia.com/mig-3g.40gb": 2}, 10), (
        daemon.logs()
    )
    assert wait_until(lambda: state(fake) == "success")

    set_config(fake, TIME_SLICED)
    assert kubelet.wait_for(lambda k: counts(k).get("nvidia.com/gpu") == 4, 10), daemon.logs()
    assert kubelet.wait_for(lambda k: "nvidia.com/mig-3g.40gb" not in k.resources(), 5)

    set_config(fake, MIG, "fatia-default")
    fake.delete_configmap(NAMESPACE, f"fatia-{NODE}")
    # The node's own ConfigMap is gone: fatia-default applies.
    assert kubelet.wait_for(lambda k: counts(k) == {"nvidia.com/gpu": 3, "nvidia.com/mig-3g.40gb": 2}, 10), (
        daemon.logs()
    )
    assert wait_until(lambda: status(fake).get("source") == f"configmap {NAMESPACE}/fatia-default")
    events = {e["reason"] for e in fake.events("default")}
    assert "Applied" in events


def test_an_invalid_edit_fails_with_a_warning_and_changes_nothing(
    time_sliced: tuple[FakeKube, FatiaProcess], kubelet: KubeletEmulator
) -> None:
    fake, daemon = time_sliced
    before = kubelet.devices("nvidia.com/gpu")
    updates = kubelet.updates("nvidia.com/gpu")

    set_config(fake, "version: v1\ngpus: [{devices: all, replicas: 0}]\n")
    assert wait_until(lambda: state(fake) == "failed", 10), daemon.logs()
    warning = [e for e in fake.events("default") if e["reason"] == "InvalidConfig"]
    assert warning and warning[0]["type"] == "Warning"
    assert "gpus[0].replicas" in warning[0]["message"]
    assert "gpus[0].replicas" in str(status(fake).get("message"))
    assert kubelet.devices("nvidia.com/gpu") == before
    assert kubelet.updates("nvidia.com/gpu") == updates


@pytest.mark.parametrize("outage_s", [6, pytest.param(30, marks=pytest.mark.slow)])
def test_an_api_outage_changes_nothing_and_the_watch_resumes(
    time_sliced: tuple[FakeKube, FatiaProcess], kubelet: KubeletEmulator, outage_s: int
) -> None:
    fake, daemon = time_sliced
    assert fake.wait_for_watches(1, timeout=10)
    lists_before = len(fake.requests(method="GET", path=f"/api/v1/namespaces/{NAMESPACE}/configmaps"))

    fake.stop()
    # The API server is away; the device plugin keeps serving and nothing changes.
    set_config(fake, "version: v1\ngpus: [{devices: all, replicas: 5}]\n")
    deadline = time.monotonic() + outage_s
    while time.monotonic() < deadline:
        assert kubelet.connected("nvidia.com/gpu")
        assert len(kubelet.healthy("nvidia.com/gpu")) == 4
        time.sleep(1)
    assert daemon.process.poll() is None
    fake.start()

    # The edit made while the server was away arrives through the resumed watch.
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 10, 15), daemon.logs()
    watches = [r for r in fake.requests(method="GET") if r.is_watch]
    assert watches, "the watch was not resumed"
    lists_after = len(
        [
            r
            for r in fake.requests(method="GET", path=f"/api/v1/namespaces/{NAMESPACE}/configmaps")
            if not r.is_watch
        ]
    )
    assert lists_after - lists_before <= 1


def test_410_gone_is_answered_by_a_fresh_list(
    time_sliced: tuple[FakeKube, FatiaProcess], kubelet: KubeletEmulator
) -> None:
    fake, daemon = time_sliced
    assert fake.wait_for_watches(1, timeout=10)
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    lists = len([r for r in fake.requests(method="GET", path=path) if not r.is_watch])

    fake.stop()
    set_config(fake, "version: v1\ngpus: [{devices: all, replicas: 3}]\n")
    fake.expire_history()
    fake.start()

    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 6, 15), daemon.logs()
    relists = [r for r in fake.requests(method="GET", path=path) if not r.is_watch]
    assert len(relists) > lists
    assert "configmap_watch_expired" in daemon.logs()


def test_node_labels_describe_the_gpus(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    fake, kubeconfig = cluster
    set_config(fake, TIME_SLICED, "fatia-default")
    daemon = start(run_fatia, kubeconfig)
    assert wait_until(lambda: state(fake) == "success", 10), daemon.logs()
    node = fake.node(NODE)
    assert node is not None
    labels = node["metadata"]["labels"]
    assert labels["fatia.dev/gpu.count"] == "2"
    assert labels["fatia.dev/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["fatia.dev/gpu.memory"] == "81559"
    assert labels["fatia.dev/mig.capable"] == "true"
    assert labels["fatia.dev/mig.strategy"] == "mixed"
    assert labels["fatia.dev/gpu.replicas"] == "2"
    assert labels["kubernetes.io/hostname"] == NODE


def test_node_writes_retry_on_conflict(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    fake, kubeconfig = cluster
    fake.conflict_next_node_writes(2, name=NODE)
    set_config(fake, TIME_SLICED)
    daemon = start(run_fatia, kubeconfig)
    assert wait_until(lambda: state(fake) == "success", 10), daemon.logs()


def test_health_changes_are_node_events(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    fake, kubeconfig = cluster
    set_config(fake, TIME_SLICED.replace("replicas: 2}]", "replicas: 2}]\nhealth: {recoverySeconds: 1}"))
    daemon = start(run_fatia, kubeconfig)
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 10), daemon.logs()

    SimControl(daemon.state_dir).inject_event(1, data=79)
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 2, 5), daemon.logs()
    assert wait_until(
        lambda: any(
            e["reason"] == "DeviceUnhealthy" and "XID 79" in e["message"] for e in fake.events("default")
        ),
        5,
    )
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 10), daemon.logs()
    assert wait_until(lambda: any(e["reason"] == "DeviceHealthy" for e in fake.events("default")))


def test_a_config_in_binary_data_is_read_and_non_utf8_bytes_fail_with_the_reason(
    cluster: tuple[FakeKube, Path], kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    fake, kubeconfig = cluster
    encoded = base64.b64encode(TIME_SLICED.encode()).decode()
    fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {}, binary_data={"config.yaml": encoded})
    daemon = start(run_fatia, kubeconfig)
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 4, 10), daemon.logs()

    latin1 = base64.b64encode("version: v1\n# caf\xe9\n".encode("latin-1")).decode()
    fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {}, binary_data={"config.yaml": latin1})
    assert wait_until(lambda: state(fake) == "failed", 10), daemon.logs()
    assert "UTF-8" in str(status(fake).get("message"))
    assert len(kubelet.healthy("nvidia.com/gpu")) == 4
