"""DRA mode through the real pynvml: the pool NVML describes, and slices cut on demand.

``fatia run --mode dra --nvml real`` over the mock library, against the fake API
server; the test plays the kubelet (registration, NodePrepareResources,
NodeUnprepareResources), and reads the truth back from NVML itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from test_dra_driver import NAMESPACE, NODE, DraNode

from deviceplugin.dra.devices import device_name
from deviceplugin.testing.apiserver import FakeKube
from realnvml.mock import LIBRARY, MockNode, mapped_library
from realnvml.test_mig import mig_devices

POOL = """version: v1
gpus:
  - devices: [0]
    mig-enabled: true
  - devices: all
    mig-enabled: false
"""


@pytest.fixture
def dra_node(fake_kube: FakeKube, sockdir: Path, mock_node: MockNode) -> Iterator[DraNode]:
    mock_node.configure(["model=a100-40gb mig=1", "model=a100-40gb"])
    fake_kube.add_node(NODE)
    fake_kube.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": POOL})
    node = DraNode(fake_kube, sockdir, fake_kube.write_kubeconfig(sockdir / "kubeconfig"))
    node.start(nvml="real", env=mock_node.env)
    assert node.process is not None
    node.wait(lambda: mapped_library(node.process.pid), "the NVML library to be mapped")  # type: ignore[union-attr]
    assert mapped_library(node.process.pid) == [str(mock_node.library / LIBRARY)], node.logs()
    yield node
    node.stop()


def planned_devices(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """What ``fatia plan --mode dra`` prints for the same two GPUs on the simulator."""
    config = tmp_path / "pool.yaml"
    config.write_text(POOL)
    done = subprocess.run(
        [sys.executable, "-m", "deviceplugin.cli.main", "plan", "--mode", "dra", "--config", str(config),
         "--nvml", "sim:a100-40gb:2"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )  # fmt: skip
    slices = [s for s in yaml.safe_load_all(done.stdout) if s]
    return {d["name"]: d for s in slices for d in s["spec"].get("devices", [])}


def test_the_published_pool_is_what_nvml_reads_and_the_simulator_plans(
    dra_node: DraNode, mock_node: MockNode, tmp_path: Path
) -> None:
    planned = planned_devices(tmp_path)
    dra_node.wait(lambda: set(dra_node.devices()) == set(planned), "the pool NVML describes")
    published = dra_node.devices()
    for name, device in planned.items():
        # Same devices, counters and profiles; only what names one GPU (UUID, bus) differs.
        assert published[name].get("consumesCounters") == device.get("consumesCounters"), name
        assert published[name]["attributes"].get("profile") == device["attributes"].get("profile"), name
    assert mig_devices(mock_node) == []  # publishing cuts nothing


def test_a_claim_cuts_its_placement_through_nvml_and_unprepare_destroys_only_it(
    dra_node: DraNode, mock_node: MockNode
) -> None:
    one, two = device_name(0, "1g.5gb", 3), device_name(0, "2g.10gb", 4)
    dra_node.wait(lambda: {one, two} <= set(dra_node.devices()), "the pool")
    first, second = dra_node.add_claim("c1", one), dra_node.add_claim("c2", two)

    answer = dra_node.prepare(first, "c1")
    assert answer.error == "", answer.error
    (cut,) = mig_devices(mock_node)
    assert (cut["gpu"], cut["start"], cut["size"]) == (0, 3, 1)
    spec = json.loads((dra_node.cdi / f"fatia.dev-gpu_{first}.json").read_text())
    assert spec["devices"][0]["containerEdits"]["env"] == [f"NVIDIA_VISIBLE_DEVICES={cut['uuid']}"]

    assert dra_node.prepare(second, "c2").error == ""
    both = {(d["start"], d["size"]): d["uuid"] for d in mig_devices(mock_node)}
    assert both.keys() == {(3, 1), (4, 2)} and both[(3, 1)] == cut["uuid"]

    assert dra_node.unprepare(first) == ""
    assert [(d["start"], d["uuid"]) for d in mig_devices(mock_node)] == [(4, both[(4, 2)])]
    assert not (dra_node.cdi / f"fatia.dev-gpu_{first}.json").exists()

    # Cut again at the same placement, it is a new MIG device, with a new UUID.
    assert dra_node.prepare(first, "c1").error == ""
    again = {(d["start"], d["size"]): d["uuid"] for d in mig_devices(mock_node)}
    assert again.keys() == {(3, 1), (4, 2)} and again[(3, 1)] != cut["uuid"]
    assert again[(4, 2)] == both[(4, 2)]


def test_a_whole_gpu_claim_is_its_uuid_and_creates_no_instance(
    dra_node: DraNode, mock_node: MockNode
) -> None:
    dra_node.wait(lambda: "gpu-1" in dra_node.devices(), "the pool")
    uid = dra_node.add_claim("whole", "gpu-1", device_class="gpu.fatia.dev")

    assert dra_node.prepare(uid, "whole").error == ""

    spec = json.loads((dra_node.cdi / f"fatia.dev-gpu_{uid}.json").read_text())
    assert spec["devices"][0]["containerEdits"]["env"] == [f"NVIDIA_VISIBLE_DEVICES={mock_node.gpus[1]}"]
    assert mig_devices(mock_node) == []
