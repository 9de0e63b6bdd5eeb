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
