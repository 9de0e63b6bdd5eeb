"""MIG through the real pynvml: apply, MIG devices, faults of one GPU, restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO, wait_until

from deviceplugin.testing.kubelet import KubeletEmulator
from realnvml.conftest import StartFatia
from realnvml.mock import MockNode, status

TWO_3G = "version: v1\ngpus: [{devices: [0], mig-devices: {3g.20gb: 2}}, {devices: all}]\n"
MIXED = (
    "version: v1\ngpus: [{devices: [0], mig-devices: {3g.20gb: 1, 2g.10gb: 1, 1g.5gb: 1}}, {devices: all}]\n"
)

MIG_READ = r"""
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    for m in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, m)
        except pynvml.NVMLError:
            continue
        gi_id = pynvml.nvmlDeviceGetGpuInstanceId(mig)
        info = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(h, gi_id))
        out.append({"gpu": i, "uuid": str(pynvml.nvmlDeviceGetUUID(mig)), "gi": gi_id,
                    "ci": pynvml.nvmlDeviceGetComputeInstanceId(mig),
                    "name": str(pynvml.nvmlDeviceGetName(mig)),
                    "start": info.placement.start, "size": info.placement.size})
print(json.dumps(out))
"""


def mig_devices(mock_node: MockNode) -> list[dict[str, Any]]:
    return list(json.loads(mock_node.python(MIG_READ)))


def served(kubelet: KubeletEmulator) -> dict[str, list[str]]:
    return {
        name: sorted(i for i, h in devices.items() if h == "Healthy")
        for name, devices in kubelet.resources().items()
    }


def test_a_mig_layout_is_applied_through_nvml(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(["model=a100-40gb", "model=a100-40gb"])
    daemon = start_fatia(MIXED)
    names = ("nvidia.com/mig-3g.20gb", "nvidia.com/mig-2g.10gb", "nvidia.com/mig-1g.5gb")
    assert kubelet.wait_for(lambda k: all(len(k.healthy(n)) == 1 for n in names), 15), daemon.logs()
    assert kubelet.healthy("nvidia.com/gpu") == [mock_node.gpus[1]]
    truth = mig_devices(mock_node)
    assert sorted(d["uuid"] for d in truth) == sorted(kubelet.healthy(n)[0] for n in names)
    # What NVML reports is what fatia says it made, at the placements it planned.
    assert wait_until(lambda: status(daemon.state_dir).get("phase") == "idle", 10), daemon.logs()
    layout = status(daemon.state_dir)["gpus"][0]["layout"]
    profile = {"3g": "3g.20gb", "2g": "2g.10gb", "1g": "1g.5gb"}
    assert sorted(layout) == sorted(f"{profile[d['name'].split('MIG ')[1][:2]]}@{d['start']}" for d in truth)
    # GPU-instance ids follow the placement as on real drivers (binary tree of slices).
    tree = {8: 0, 4: 1, 2: 3, 1: 7}
    assert all(d["gi"] == tree[d["size"]] + d["start"] // d["size"] for d in truth), truth


def test_an_xid_attributed_to_a_mig_device_marks_only_it(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(["model=a100-40gb", "model=a100-40gb"])
    daemon = start_fatia(TWO_3G.replace("\n", "\nhealth: {recoverySeconds: 30}\n", 1))
    resource = "nvidia.com/mig-3g.20gb"
    assert kubelet.wait_for(lambda k: len(k.healthy(resource)) == 2, 15), daemon.logs()
    assert wait_until(lambda: mock_node.registered_events() >= {0, 1}, 10), daemon.logs()
    hit, spared = mig_devices(mock_node)
    mock_node.inject(f"xid 0 48 {hit['gi']} {hit['ci']}")
    assert kubelet.wait_for(lambda k: k.healthy(resource) == [spared["uuid"]], 5), daemon.logs()
    assert kubelet.healthy("nvidia.com/gpu") == [mock_node.gpus[1]]


def test_a_gpu_in_mig_mode_whose_instances_cannot_be_listed_costs_only_itself(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    """Defect 2: nvmlDeviceGetGpuInstances raising NOT_SUPPORTED for one GPU in MIG mode."""
    mock_node.configure(["model=a100-40gb", "model=a100-40gb mig=1", "model=a100-40gb"])
    mock_node.inject("fail 1 nvmlDeviceGetGpuInstances NOT_SUPPORTED")
    daemon = start_fatia("version: v1\n")
    others = sorted([mock_node.gpus[0], mock_node.gpus[2]])
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == others, 15), daemon.logs()
    # ... and it is said: which GPU, which call, which error.
    assert wait_until(lambda: "GPU 1" in str(status(daemon.state_dir).get("message")), 5), status(
        daemon.state_dir
    )
    message = str(status(daemon.state_dir)["message"])
    assert "nvmlDeviceGetGpuInstances" in message and "Not Supported" in message, message


def test_fatia_export_survives_a_gpu_whose_instances_cannot_be_listed(mock_node: MockNode) -> None:
    """Defect 2, the CLI side: `fatia export --nvml real` must not die with a traceback."""
    mock_node.configure(["model=a100-40gb", "model=a100-40gb mig=1"])
    mock_node.inject("fail 1 nvmlDeviceGetGpuInstances NOT_SUPPORTED")
    out = subprocess.run(
        [sys.executable, "-m", "deviceplugin.cli.main", "export", "--nvml", "real"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**__import__("os").environ, **mock_node.env},
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    assert "devices" in out.stdout


def test_a_mig_config_nvml_refuses_neither_flaps_nor_hides_where(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    """Defects 3 and 4: creating the GPU instance fails on every try."""
    mock_node.configure(["model=a100-40gb", "model=a100-40gb", "model=a100-40gb"])
    mock_node.inject("fail 0 nvmlDeviceCreateGpuInstanceWithPlacement NOT_SUPPORTED")
    daemon = start_fatia(TWO_3G)
    others = sorted(mock_node.gpus[1:])
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == others, 15), daemon.logs()
    # Watch through the first retries (1 s, 2 s, ... backoff): the other GPUs stay served.
    seen, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        seen.append(kubelet.healthy("nvidia.com/gpu"))
        time.sleep(0.05)
    assert all(s == others for s in seen), f"withdrawn {sum(s != others for s in seen)} times"
    assert [r for r, _ in kubelet.registrations].count("nvidia.com/gpu") == 1
    state = status(daemon.state_dir)
    assert state["resources"].get("nvidia.com/gpu") == len(others), state
    message = str(state["message"])
    assert "GPU 0" in message and mock_node.gpus[0] in message, message
    assert "3g.20gb" in message, message  # the step: create GPU instance 3g.20gb at ...
    assert "Not Supported" in message or "NOT_SUPPORTED" in message, message


def test_sigterm_and_restart_keep_the_mig_devices(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator, sockdir: Path
) -> None:
    mock_node.configure(["model=a100-40gb", "model=a100-40gb"])
    daemon = start_fatia(TWO_3G)
    resource = "nvidia.com/mig-3g.20gb"
    assert kubelet.wait_for(lambda k: len(k.healthy(resource)) == 2, 15), daemon.logs()
    before = kubelet.healthy(resource)
    assert daemon.stop() == 0, daemon.logs()
    assert not [p for p in (sockdir / "dp").iterdir() if p.name.startswith("fatia-")]

    calls = len(mock_node.calls())
    again = start_fatia(TWO_3G)
    assert kubelet.wait_for(lambda k: k.healthy(resource) == before, 15), again.logs()
    assert wait_until(lambda: status(again.state_dir).get("phase") == "idle", 10), again.logs()
    changed = [
        c
        for c in mock_node.calls()[calls:]
        if c[0].startswith(("nvmlDeviceCreate", "nvmlGpuInstanceCreate", "nvmlDeviceSetMig"))
        or c[0].endswith("Destroy")
    ]
    assert changed == [], changed  # the layout was already there: no NVML step
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == [mock_node.gpus[1]], 15), again.logs()


def test_an_edit_changes_only_what_differs_and_mig_off_gives_the_gpu_back(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    mock_node.configure(["model=a100-40gb", "model=a100-40gb"])
    daemon = start_fatia(TWO_3G)
    big = "nvidia.com/mig-3g.20gb"
    assert kubelet.wait_for(lambda k: len(k.healthy(big)) == 2, 15), daemon.logs()
    before = {d["start"]: d["uuid"] for d in mig_devices(mock_node)}

    (mock_node.root / "config.yaml").write_text(MIXED)
    small = ("nvidia.com/mig-2g.10gb", "nvidia.com/mig-1g.5gb")
    assert kubelet.wait_for(
        lambda k: len(k.healthy(big)) == 1 and all(len(k.healthy(n)) == 1 for n in small), 15
    ), daemon.logs()
    kept = kubelet.healthy(big)[0]
    assert kept in before.values()  # the 3g.20gb that stays was never touched
    assert {d["uuid"] for d in mig_devices(mock_node)} >= {kept}

    (mock_node.root / "config.yaml").write_text("version: v1\ngpus: [{devices: all}]\n")
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == sorted(mock_node.gpus), 15), (
        daemon.logs()
    )
    assert mig_devices(mock_node) == []
    assert (
        mock_node.python(
            "import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceGetMigMode(n.nvmlDeviceGetHandleByIndex(0)))"
        ).strip()
        == "[0, 0]"
    )
    names = {c[0] for c in mock_node.calls()}
    assert {"nvmlComputeInstanceDestroy", "nvmlGpuInstanceDestroy"} <= names


def test_a_mode_change_that_needs_a_reset_is_said_and_the_other_gpus_are_served(
    mock_node: MockNode, start_fatia: StartFatia, kubelet: KubeletEmulator
) -> None:
    # mig_reset=1: nvmlDeviceSetMigMode only sets the pending mode (A100 on bare metal).
    mock_node.configure(["model=a100-40gb mig_reset=1", "model=a100-40gb"])
    daemon = start_fatia(TWO_3G)
    assert wait_until(lambda: status(daemon.state_dir).get("phase") == "waiting", 15), daemon.logs()
    message = str(status(daemon.state_dir)["message"])
    assert "GPU 0" in message and "pending" in message and "reset" in message, message
    assert kubelet.wait_for(lambda k: k.healthy("nvidia.com/gpu") == [mock_node.gpus[1]], 5)
    assert "nvidia.com/mig-3g.20gb" not in kubelet.resources()
