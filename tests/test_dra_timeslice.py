"""Specification of sharing at NodePrepareResources: a claim's ``gpu.fatia.dev`` parameters
are checkpointed per device and told to the workload (CDI env), a whole GPU gets the claim's
time-slice interval (the simulator holds it, as ``nvidia-smi compute-policy`` would set it)
and has it put back at unprepare; and the ``nvidia-smi`` seam itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from test_dra_plugin import Node

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.allocation import ClaimRef
from deviceplugin.dra.checkpoint import Checkpoint
from deviceplugin.dra.devices import device_name
from deviceplugin.dra.sharing import Sharing
from mig.apply import GpuTarget, Reconciler
from mig.nvml import Nvml
from mig.sim.nvml import SimControl
from mig.timeslice import NvidiaSmi, TimesliceError, timeslicer_for

POOL = "gpus: [{devices: [0], mig-enabled: false}, {devices: [1], mig-enabled: true}]"
MIG = device_name(1, "1g.10gb", 0)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """GPU 0 (an A100) offered whole, GPU 1 (an H100) as MIG partitions."""
    n = Node(tmp_path, "a100-40gb:1,h100-80gb:1", pool=POOL)
    Reconciler(n.nvml, state_dir=n.state).apply([GpuTarget(1, "", True, ())])
    return n


def shared(node: Node, uid: str, device: str, interval: Any = "Long") -> ClaimRef:
    """A claim of ``device`` whose own config asks for time-slicing at ``interval``."""
    ref = node.claims.add(uid, device)
    claim = node.claims.claims[("default", ref.name)]
    parameters = {
        "apiVersion": "gpu.fatia.dev/v1alpha1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "interval": interval},
    }
    config = {"opaque": {"driver": DRIVER_NAME, "parameters": parameters}}
    claim["spec"] = {"devices": {"config": [config]}}
    claim["status"]["allocation"]["devices"]["config"] = [{"source": "FromClaim", **config}]
    return ref


def timeslice(node: Node, gpu: int) -> int:
    return node.control.node().gpus[gpu].timeslice


def env(node: Node, uid: str) -> list[str]:
    spec = json.loads((node.cdi / f"fatia.dev-gpu_{uid}.json").read_text())
    found: list[str] = spec["devices"][0]["containerEdits"]["env"]
    return found


def test_a_whole_gpu_has_its_claims_interval_until_the_claim_is_unprepared(node: Node) -> None:
    ref = shared(node, "uid-1", "gpu-0", "Long")
    first = node.preparer().prepare([ref])["uid-1"]

    assert first.error is None
    assert timeslice(node, 0) == 3 and timeslice(node, 1) == 0
    assert env(node, "uid-1") == [
        f"NVIDIA_VISIBLE_DEVICES={node.inventory().gpus[0].uuid}",
        "FATIA_SHARING_STRATEGY=TimeSlicing",
        "FATIA_TIMESLICE_INTERVAL=Long",
    ]
    record = Checkpoint(node.state).get("uid-1")
    assert record is not None and [d.sharing for d in record.devices] == [Sharing("TimeSlicing", "Long")]

    reads = node.claims.reads
    again = node.preparer().prepare([ref])["uid-1"]  # another pod of the claim, after a restart
    assert again == first and node.claims.reads == reads

    assert node.preparer().unprepare([ref]) == {"uid-1": None}
    assert timeslice(node, 0) == 0


def test_a_mig_device_is_time_sliced_at_the_default_interval(node: Node) -> None:
    ref = shared(node, "uid-1", MIG, "Default")
    assert node.preparer().prepare([ref])["uid-1"].error is None
    assert env(node, "uid-1")[1:] == [
        "FATIA_SHARING_STRATEGY=TimeSlicing",
        "FATIA_TIMESLICE_INTERVAL=Default",
    ]
    assert [timeslice(node, 0), timeslice(node, 1)] == [0, 0]


def test_a_mig_device_asking_for_another_interval_fails_with_the_key_path(node: Node) -> None:
    error = node.preparer().prepare([shared(node, "uid-1", MIG, "Short")])["uid-1"].error
    assert error == (
        "ResourceClaim default/claim-uid-1: devices.config[0].opaque.parameters.sharing.interval: Short "
        f"cannot be set for {MIG} (request req-0): a MIG device is time-sliced at the Default interval only"
    )
    assert node.instances() == {} and Checkpoint(node.state).records() == ()


def test_a_claim_with_admin_access_may_not_change_the_interval_of_another_claims_gpu(node: Node) -> None:
    node.preparer().prepare([shared(node, "uid-1", "gpu-0", "Long")])
    admin = shared(node, "uid-2", "gpu-0", "Short")
    node.claims.claims[("default", admin.name)]["status"]["allocation"]["devices"]["results"][0][
        "adminAccess"
    ] = True
    error = node.preparer().prepare([admin])["uid-2"].error
    assert error is not None and error.endswith(
        "sharing.interval: Short cannot be set for gpu-0 (request req-0) with admin access: the device is "
        "another claim's"
    )
    assert timeslice(node, 0) == 3


def test_bad_parameters_fail_the_claim_before_anything_is_touched(node: Node) -> None:
    error = node.preparer().prepare([shared(node, "uid-1", "gpu-0", "Fast")])["uid-1"].error
    assert error == (
        "ResourceClaim default/claim-uid-1: devices.config[0].opaque.parameters.sharing.interval: "
        "must be one of Default, Short, Medium, Long, not 'Fast'"
    )
    assert Checkpoint(node.state).records() == () and not node.cdi.exists()
    assert timeslice(node, 0) == 0


def test_without_nvidia_smi_only_the_default_interval_can_be_had(node: Node) -> None:
    no_smi = NvidiaSmi(which=lambda _: None)
    long = node.preparer(timeslicer=no_smi).prepare([shared(node, "uid-1", "gpu-0", "Long")])["uid-1"]
    assert long.error is not None and long.error.endswith(
        "the time-slice interval Long needs nvidia-smi, which is not on PATH (NVML has no call for it)"
    )
    assert node.preparer(timeslicer=no_smi).unprepare([ClaimRef("", "uid-1", "")]) == {"uid-1": None}
    default = node.preparer(timeslicer=no_smi).prepare([shared(node, "uid-2", "gpu-0", "Default")])
    assert default["uid-2"].error is None


def test_a_reboot_forgets_the_interval_and_fatia_sets_it_again_when_it_starts(node: Node) -> None:
    node.preparer().prepare([shared(node, "uid-1", "gpu-0", "Medium")])
    node.control.reboot()
    assert timeslice(node, 0) == 0
    node.preparer().restore_intervals()
    assert timeslice(node, 0) == 2


def test_nvidia_smi_is_run_with_the_gpus_uuid_and_the_level() -> None:
    ran: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        failed = argv[-1] == "1"
        return subprocess.CompletedProcess(argv, 6 if failed else 0, "", "Not Supported\n" if failed else "")

    smi = NvidiaSmi(which=lambda _: "/usr/bin/nvidia-smi", run=run)
    smi.set_timeslice("GPU-1234", 3)
    assert ran == [["/usr/bin/nvidia-smi", "compute-policy", "-i", "GPU-1234", "--set-timeslice", "3"]]
    with pytest.raises(TimesliceError, match=r"\(Short\) failed \(exit 6\): Not Supported$"):
        smi.set_timeslice("GPU-1234", 1)


def test_the_simulator_sets_the_interval_on_a_simulated_node_and_nvidia_smi_on_a_real_one(node: Node) -> None:
    assert isinstance(timeslicer_for(node.nvml), SimControl)
    assert isinstance(timeslicer_for(cast(Nvml, object())), NvidiaSmi)
    with pytest.raises(TimesliceError, match="GPU-nope: no such GPU"):
        node.control.set_timeslice("GPU-nope", 1)
