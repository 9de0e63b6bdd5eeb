"""MIG devices as the kubelet sees them: names per strategy, allocation, device nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RunFatia, wait_until, write_config

from deviceplugin.testing.daemon import FatiaProcess
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.apply import GpuTarget, Reconciler
from mig.devicenodes import read_mig_minors
from mig.inventory import InventoryReader
from mig.layout import Placement
from mig.nvml import open_nvml
from mig.sim.nvml import SimControl
from mig.sim.state import SimFault

MIG_AND_WHOLE = """version: v1
gpus:
  - devices: [0]
    mig-devices: {1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}
plugin: {passDeviceSpecs: true}
"""
TWO_3G = "version: v1\ngpus: [{devices: all, mig-devices: {3g.40gb: 2}}]\n"
THREE_2G = "version: v1\ngpus: [{devices: all, mig-devices: {2g.20gb: 3}}]\n"


def instance_uuids(state_dir: Path) -> set[str]:
    """The UUIDs of the MIG devices (compute instances) GPU 0 of the simulated node has."""
    gpu = SimControl(state_dir).node().gpus[0]
    return {ci.uuid for gi in gpu.gpu_instances for ci in gi.compute_instances}


def test_mixed_strategy_advertises_each_profile_and_allocates_mig_uuids(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    config = write_config(sockdir, MIG_AND_WHOLE)
    daemon = run_fatia("sim:h100-80gb:2", config=config)
    assert kubelet.wait_for(
        lambda k: (
            sorted(k.resources())
            == [
                "nvidia.com/gpu",
                "nvidia.com/mig-1g.10gb",
                "nvidia.com/mig-2g.20gb",
                "nvidia.com/mig-3g.40gb",
            ]
        ),
        10,
    ), daemon.logs()
    assert len(kubelet.devices("nvidia.com/gpu")) == 1  # GPU 1 stays whole

    allocation = kubelet.allocate("p", "nvidia.com/mig-3g.40gb", 1)
    (mig_uuid,) = allocation.device_ids
    assert mig_uuid.startswith("MIG-")
    assert allocation.response.envs["NVIDIA_VISIBLE_DEVICES"] == mig_uuid

    # passDeviceSpecs: the parent's node and the GI and CI capability nodes.
    node = SimControl(daemon.state_dir).node()
    gi = next(g for g in node.gpus[0].gpu_instances if g.compute_instances[0].uuid == mig_uuid)
    minors = read_mig_minors(daemon.state_dir / "proc")
    paths = [d.host_path for d in allocation.response.devices]
    assert "/dev/nvidia0" in paths
    assert f"/dev/nvidia-caps/nvidia-cap{minors[f'gpu0/gi{gi.id}/access']}" in paths
    assert f"/dev/nvidia-caps/nvidia-cap{minors[f'gpu0/gi{gi.id}/ci0/access']}" in paths
    assert all(d.permissions == "rw" for d in allocation.response.devices)


def test_mig_devices_can_be_time_sliced(sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia) -> None:
    config = write_config(
        sockdir,
        """version: v1
gpus: [{devices: all, mig-devices: {3g.40gb: 2}}]
sharing:
  timeSlicing:
    renameByDefault: true
    resources: [{name: nvidia.com/mig-3g.40gb, replicas: 3}]
""",
    )
    daemon = run_fatia("sim:h100-80gb:1", config=config)
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb.shared")) == 6, 10), daemon.logs()
    ids = kubelet.devices("nvidia.com/mig-3g.40gb.shared")
    assert all(i.startswith("MIG-") and "::" in i for i in ids)
    allocation = kubelet.allocate("p", "nvidia.com/mig-3g.40gb.shared", 2)
    # Spread over the two MIG devices (distributed), each UUID once in the env.
    uuids = {i.split("::")[0] for i in allocation.device_ids}
    assert len(uuids) == 2
    assert set(allocation.response.envs["NVIDIA_VISIBLE_DEVICES"].split(",")) == uuids


@pytest.fixture
def two_3g(sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia) -> tuple[FatiaProcess, Path]:
    """fatia on one H100 split into two 3g.40gb, both advertised; and its config file."""
    config = write_config(sockdir, TWO_3G)
    daemon = run_fatia("sim:h100-80gb:1", config=config)
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 2, 10), daemon.logs()
    return daemon, config


def test_profiles_appear_and_vanish_without_a_restart(
    kubelet: KubeletEmulator, two_3g: tuple[FatiaProcess, Path]
) -> None:
    daemon, config = two_3g
    registrations = len(kubelet.registrations)

    config.write_text("version: v1\ngpus: [{devices: all, mig-devices: {3g.40gb: 1, 2g.20gb: 2}}]\n")
    assert kubelet.wait_for(
        lambda k: (
            len(k.devices("nvidia.com/mig-2g.20gb")) == 2 and len(k.devices("nvidia.com/mig-3g.40gb")) == 1
        ),
        10,
    ), daemon.logs()
    config.write_text(THREE_2G)
    assert kubelet.wait_for(
        lambda k: (
            "nvidia.com/mig-3g.40gb" not in k.resources() and len(k.devices("nvidia.com/mig-2g.20gb")) == 3
        ),
        10,
    ), daemon.logs()
    # Only the new resource registered; the daemon never restarted.
    assert len(kubelet.registrations) == registrations + 1
    assert daemon.process.poll() is None


@pytest.mark.parametrize(
    ("strategy", "gpus", "advertised", "ids"),
    [
        ("single", "[{devices: all, mig-devices: {2g.20gb: 3}}]", 6, "MIG-"),  # MIG devices as GPUs
        ("none", "[{devices: [0], mig-devices: {3g.40gb: 2}}]", 2, "GPU-"),  # MIG GPUs whole
    ],
    ids=["single", "none"],
)
def test_single_and_none_strategies_advertise_only_nvidia_gpu(
    sockdir: Path,
    kubelet: KubeletEmulator,
    run_fatia: RunFatia,
    strategy: str,
    gpus: str,
    advertised: int,
    ids: str,
) -> None:
    config = write_config(sockdir, f"version: v1\nmigStrategy: {strategy}\ngpus: {gpus}\n")
    daemon = run_fatia("sim:h100-80gb:2", config=config)
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == advertised, 10), daemon.logs()
    assert list(kubelet.resources()) == ["nvidia.com/gpu"]
    assert all(i.startswith(ids) for i in kubelet.devices("nvidia.com/gpu"))


def test_single_strategy_with_two_profiles_is_a_clear_error(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    config = write_config(
        sockdir,
        "version: v1\nmigStrategy: single\ngpus:\n"
        "  - {devices: [0], mig-devices: {2g.20gb: 3}}\n"
        "  - {devices: [1], mig-devices: {3g.40gb: 2}}\n",
    )
    daemon = run_fatia("sim:h100-80gb:2", config=config)
    assert wait_until(lambda: daemon.status().get("phase") == "failed", 10)
    assert "migStrategy single" in (daemon.state_dir / "status.json").read_text()
    node = SimControl(daemon.state_dir).node()
    assert all(not g.gpu_instances for g in node.gpus)  # nothing was applied


def test_a_held_slice_is_never_destroyed(kubelet: KubeletEmulator, two_3g: tuple[FatiaProcess, Path]) -> None:
    daemon, config = two_3g
    held = kubelet.allocate("busy-pod", "nvidia.com/mig-3g.40gb", 1).device_ids[0]

    config.write_text(THREE_2G)
    assert wait_until(lambda: daemon.status().get("phase") == "waiting", 10), daemon.logs()
    assert "in use" in (daemon.state_dir / "status.json").read_text()
    # The held slice is no longer offered, but it still exists.
    assert kubelet.wait_for(lambda k: held not in k.devices("nvidia.com/mig-3g.40gb"), 5)
    uuids = instance_uuids(daemon.state_dir)
    assert held in uuids
    # The part of the change that does not depend on it went ahead.
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-2g.20gb")) >= 1, 5)

    kubelet.release("busy-pod")
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-2g.20gb")) == 3, 15), daemon.logs()
    assert wait_until(lambda: daemon.status().get("phase") == "idle", 10)


def test_nothing_is_destroyed_while_pod_resources_does_not_answer(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    # The node already has its MIG layout, so starting needs no PodResources answer.
    state = sockdir / "state"
    nvml = open_nvml("sim:h100-80gb:1", state_dir=state, node_name="node-a")
    gpu = InventoryReader(nvml).read().gpus[0]
    Reconciler(nvml, state_dir=state).apply(
        [GpuTarget(0, gpu.uuid, True, (Placement(0, 4, "3g.40gb"), Placement(4, 4, "3g.40gb")))]
    )
    config = write_config(sockdir, TWO_3G)
    daemon = run_fatia(
        "sim:h100-80gb:1", config=config, extra=("--pod-resources-socket", str(sockdir / "nobody.sock"))
    )
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 2, 10)
    before = instance_uuids(daemon.state_dir)

    config.write_text(THREE_2G)
    assert wait_until(lambda: daemon.status().get("phase") == "waiting", 10), daemon.logs()
    assert "PodResources" in (daemon.state_dir / "status.json").read_text()
    after = instance_uuids(daemon.state_dir)
    assert after == before


def test_a_failed_apply_is_rolled_back_and_retried_without_an_edit(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    state = sockdir / "state"
    open_nvml("sim:h100-80gb:1", state_dir=state, node_name="node-a")
    SimControl(state).inject_fault(SimFault(call="nvmlGpuInstanceCreateComputeInstance", error=999))
    config = write_config(sockdir, TWO_3G)
    daemon = run_fatia("sim:h100-80gb:1", config=config)
    assert wait_until(lambda: '"reason": "ApplyFailed"' in daemon.logs(), 10), daemon.logs()
    assert "the previous layout was restored" in daemon.logs()
    # The fault is spent; the retry applies the layout.
    assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 2, 15), daemon.logs()
    assert wait_until(lambda: daemon.status().get("phase") == "idle", 5)
