"""``fatia run`` in file mode, as a real process against the kubelet emulator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import RunFatia, wait_until, write_config

from deviceplugin.testing.daemon import FatiaProcess, fatia_cli
from deviceplugin.testing.kubelet import KubeletEmulator

SHARED_2 = "version: v1\ngpus: [{devices: all, replicas: 2}]\n"
SHARED_3 = "version: v1\ngpus: [{devices: all, replicas: 3}]\n"


def configmap_dir(root: Path, text: str) -> Path:
    """A directory laid out like a mounted ConfigMap: ..data -> ..<ts>/config.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    swap_configmap(root, text)
    (root / "config.yaml").symlink_to("..data/config.yaml")
    return root


def swap_configmap(root: Path, text: str) -> None:
    """Update it the way the kubelet does: a new timestamped dir, then an atomic symlink swap."""
    stamp = root / f"..{time.monotonic_ns()}"
    stamp.mkdir()
    (stamp / "config.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, root / "..data")


def gpu_count(kubelet: KubeletEmulator) -> int:
    return len(kubelet.healthy("nvidia.com/gpu"))


@pytest.fixture
def on_a_configmap(sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia) -> tuple[FatiaProcess, Path]:
    """fatia reading a mounted ConfigMap directory (2 replicas on two A100s, applied); and the directory."""
    mounted = configmap_dir(sockdir / "cm", SHARED_2)
    daemon = run_fatia("sim:a100-40gb:2", config=mounted)
    assert kubelet.wait_for(lambda k: gpu_count(k) == 4, 10), daemon.logs()
    return daemon, mounted


def test_a_configmap_symlink_swap_is_applied_within_a_second(
    kubelet: KubeletEmulator, on_a_configmap: tuple[FatiaProcess, Path]
) -> None:
    daemon, mounted = on_a_configmap

    started = time.monotonic()
    swap_configmap(mounted, SHARED_3)
    assert kubelet.wait_for(lambda k: gpu_count(k) == 6, 2), daemon.logs()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("first", "devices"),
    [(SHARED_2, 4), (None, 2)],
    ids=["an edit in place", "a file that was missing (defaults until then)"],
)
def test_a_change_of_the_config_file_is_applied(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia, first: str | None, devices: int
) -> None:
    config = sockdir / "config.yaml"
    if first is not None:
        config.write_text(first)
    daemon = run_fatia("sim:a100-40gb:2", config=config)
    assert kubelet.wait_for(lambda k: gpu_count(k) == devices, 10), daemon.logs()
    config.write_text(SHARED_3)
    assert kubelet.wait_for(lambda k: gpu_count(k) == 6, 2), daemon.logs()


def test_a_bad_config_is_reported_and_changes_nothing(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    config = write_config(sockdir, "version: v1\ngpus: [{devices: [0], mig-devices: {3g.20gb: 2}}]\n")
    daemon = run_fatia("sim:h100-80gb:2", config=config)
    # 3g.20gb does not exist on an H100: nothing is applied, the error names the rule.
    assert wait_until(lambda: daemon.status().get("phase") == "failed", 10)
    assert kubelet.resources() == {}
    message = str(daemon.status()["message"])
    assert "gpus[0] (GPU 0, NVIDIA H100 80GB HBM3)" in message
    assert "3g.20gb" in message and "3g.40gb" in message

    config.write_text("version: v1\ngpus: [{devices: [0], mig-devices: {3g.40gb: 2}}]\n")
    assert kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/mig-3g.40gb")) == 2, 10)
    before = kubelet.resources()
    updates = {name: kubelet.updates(name) for name in before}

    config.write_text("version: v1\ngpus: [{devices: [0], mig-devices: {3g.40gb: 2}}]\nbogus: 1\n")
    assert wait_until(lambda: daemon.status().get("phase") == "failed", 5)
    assert "bogus: unknown key" in str(daemon.status()["message"])
    time.sleep(0.5)  # give a wrong update the time it would need to show
    assert kubelet.resources() == before
    assert {name: kubelet.updates(name) for name in before} == updates
    out = fatia_cli("status", "--state-dir", str(daemon.state_dir))
    assert out.returncode == 1
    assert "bogus: unknown key" in out.stdout
    assert "3g.40gb@0, 3g.40gb@4" in out.stdout


def test_status_json_lists_gpus_and_resources(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    config = write_config(sockdir, SHARED_2)
    daemon = run_fatia("sim:a100-40gb:2", config=config)
    assert wait_until(lambda: daemon.status().get("phase") == "idle", 10), daemon.logs()
    out = fatia_cli("status", "--state-dir", str(daemon.state_dir), "--output", "json")
    assert out.returncode == 0
    parsed = json.loads(out.stdout)
    assert parsed["resources"] == {"nvidia.com/gpu": 4}
    assert [g["product"] for g in parsed["gpus"]] == ["NVIDIA A100-SXM4-40GB"] * 2
    assert parsed["state"] == "success"


def test_sigterm_stops_the_daemon_and_removes_its_sockets(
    sockdir: Path, kubelet: KubeletEmulator, run_fatia: RunFatia
) -> None:
    config = write_config(sockdir, SHARED_2)
    daemon = run_fatia("sim:a100-40gb:1", config=config)
    assert kubelet.wait_for(lambda k: gpu_count(k) == 2, 10), daemon.logs()
    assert list(kubelet.plugin_dir.glob("fatia-*.sock"))
    assert daemon.stop() == 0
    assert not list(kubelet.plugin_dir.glob("fatia-*.sock"))


def test_the_demo_runs_and_keeps_the_pods_slice() -> None:
    out = fatia_cli("demo", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "NVIDIA_VISIBLE_DEVICES=MIG-" in out.stdout
    assert "is still there" in out.stdout


def test_a_configmap_directory_without_the_key_is_an_invalid_config(
    kubelet: KubeletEmulator, on_a_configmap: tuple[FatiaProcess, Path]
) -> None:
    daemon, mounted = on_a_configmap
    (mounted / "config.yaml").unlink()
    assert wait_until(lambda: daemon.status().get("phase") == "failed", 5)
    assert "has no key config.yaml" in str(daemon.status()["message"])
    assert gpu_count(kubelet) == 4  # nothing changed
