"""``fatia sim``: the command tests, demos and people use to act on a simulated node.

Run as a subprocess, the way a shell script or a test of ``fatia run`` uses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest
import yaml

from mig.sim.nvml import SimControl, open_sim
from mig.sim.state import SimFault

REPO = Path(__file__).resolve().parents[1]


def sim(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deviceplugin.cli.main", "sim", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def node(tmp_path: Path) -> Path:
    open_sim(["a100-40gb"] * 2, state_dir=tmp_path, node="n")
    return tmp_path


def test_fault_injects_the_fault_it_is_given(node: Path) -> None:
    out = sim(node, "fault", "--call", "nvmlDeviceGetUUID", "--gpu", "1", "--error", "NOT_SUPPORTED")
    assert out.returncode == 0, out.stderr
    assert SimControl(node).node().faults == [
        SimFault(call="nvmlDeviceGetUUID", error=pynvml.NVML_ERROR_NOT_SUPPORTED, gpu=1)
    ]
    nvml = open_sim(["a100-40gb"] * 2, state_dir=node, node="n")
    nvml.nvmlInit()
    nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(0))  # GPU 0 is spared
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(1))


def test_fault_takes_every_option(node: Path) -> None:
    out = sim(
        node,
        "fault",
        "--call",
        "mutating",
        "--error",
        "23",
        "--count",
        "2",
        "--skip",
        "3",
        "--action",
        "kill",
        "--when",
        "after",
    )
    assert out.returncode == 0, out.stderr
    assert SimControl(node).node().faults == [
        SimFault(call="mutating", error=23, count=2, skip=3, action="kill", when="after")
    ]


def test_a_fault_that_stays_fails_every_call_until_cleared(node: Path) -> None:
    assert sim(node, "fault", "--call", "nvmlDeviceGetMigMode", "--gpu", "0", "--always").returncode == 0
    nvml = open_sim(["a100-40gb"] * 2, state_dir=node, node="n")
    nvml.nvmlInit()
    device = nvml.nvmlDeviceGetHandleByIndex(0)
    for _ in range(3):
        with pytest.raises(pynvml.NVMLError_Unknown):
            nvml.nvmlDeviceGetMigMode(device)
    assert sim(node, "clear-faults").returncode == 0
    assert nvml.nvmlDeviceGetMigMode(device) == [0, 0]


def test_an_unknown_error_name_is_a_clear_error(node: Path) -> None:
    out = sim(node, "fault", "--call", "nvmlDeviceGetUUID", "--error", "NO_SUCH_THING")
    assert out.returncode == 1
    assert "NO_SUCH_THING" in out.stderr and "Traceback" not in out.stderr
    assert SimControl(node).node().faults == []


def test_clients_and_passthrough_are_set(node: Path) -> None:
    assert sim(node, "clients", "--gpu", "1", "--count", "2").returncode == 0
    assert sim(node, "passthrough", "on").returncode == 0
    state = json.loads(sim(node, "show").stdout)
    assert [g["clients"] for g in state["gpus"]] == [0, 2]
    assert state["passthrough"] is True
    assert sim(node, "passthrough", "off").returncode == 0
    assert SimControl(node).node().passthrough is False


# --- fatia export with one GPU NVML cannot read ---------------------------------------------


def export(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "deviceplugin.cli.main", "export", "--nvml", "sim:a100-40gb:8"),
            *("--state-dir", str(state_dir), "--node-name", "n"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_export_prints_the_other_gpus_and_names_the_one_it_cannot_read(tmp_path: Path) -> None:
    nvml = open_sim(["a100-40gb"] * 8, state_dir=tmp_path, node="n")
    nvml.nvmlInit()
    for i in (3, 5):
        nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(i), pynvml.NVML_DEVICE_MIG_ENABLE)
    assert sim(tmp_path, "fault", "--call", "nvmlDeviceGetGpuInstances", "--gpu", "3", "--always",
               "--error", "NOT_SUPPORTED").returncode == 0  # fmt: skip

    out = export(tmp_path)

    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "GPU 3" in out.stderr and "nvmlDeviceGetGpuInstances" in out.stderr, out.stderr
    assert "NVML_ERROR_NOT_SUPPORTED" in out.stderr, out.stderr
    config = yaml.safe_load(out.stdout)
    rules = {
        tuple(r["devices"]) if isinstance(r["devices"], list) else r["devices"]: r for r in config["gpus"]
    }
    assert rules[(5,)]["mig-enabled"] is True
    assert rules[(0, 1, 2, 4, 6, 7)]["mig-enabled"] is False  # GPU 3 has no rule: left as it is
