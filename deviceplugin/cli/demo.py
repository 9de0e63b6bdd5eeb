"""``fatia demo``: the whole product on a simulated node, in a minute.

Runs a real ``fatia run`` process on a simulated node with two A100-40GB GPUs,
against the built-in kubelet emulator, and narrates: a MIG layout and
time-slicing applied from a config file, the resources a kubelet would see, a
pod allocated a MIG slice, then a config edit that repartitions the GPU
without touching the slice the pod holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from deviceplugin.agent.status import format_table, read_status
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl, open_sim

FIRST = """\
version: v1
gpus:
  - devices: [0]                 # GPU 0: MIG, NVIDIA's all-balanced layout
    mig-devices: {1g.5gb: 2, 2g.10gb: 1, 3g.20gb: 1}
  - devices: all                 # every other GPU: whole, time-sliced 4 ways
    replicas: 4
"""

SECOND = """\
version: v1
gpus:
  - devices: [0]                 # the 3g.20gb becomes three more 1g.5gb slices
    mig-devices: {1g.5gb: 5, 2g.10gb: 1}
  - devices: all
    replicas: 2
"""


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def _show_resources(kubelet: KubeletEmulator) -> None:
    for name, devices in sorted(kubelet.resources().items()):
        healthy = sum(1 for h in devices.values() if h == "Healthy")
        sample = sorted(devices)[0]
        print(f"  {name:<28} {healthy:>3} healthy   e.g. {sample}")


def _wait_status(state_dir: Path, phase: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = read_status(state_dir)
            if status["phase"] == phase:
                return status
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"fatia did not reach phase {phase!r} in {timeout:.0f}s")


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="fatia-demo-", dir="/tmp"))
    plugin_dir, state_dir = root / "device-plugins", root / "state"
    config = root / "config.yaml"
    config.write_text(FIRST)
    # A monitoring agent (DCGM, say) holds GPU 0 open: its MIG mode change cannot take effect.
    open_sim(["a100-40gb"] * 2, state_dir=state_dir, node="demo-node")
    SimControl(state_dir).set_clients(0, 1)
    kubelet = KubeletEmulator(plugin_dir, pod_resources_socket=root / "pod-resources.sock")
    kubelet.start()
    log = (root / "fatia.log").open("wb")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deviceplugin.cli.main",
            "run",
            "--nvml",
            "sim:a100-40gb:2",
            "--node-name",
            "demo-node",
            "--state-dir",
            str(state_dir),
            "--device-plugin-dir",
            str(plugin_dir),
            "--pod-resources-socket",
            str(root / "pod-resources.sock"),
            "--config",
            str(config),
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    try:
        _say("A simulated node with two NVIDIA A100-SXM4-40GB GPUs; fatia runs with this config:")
        print(textwrap.indent(FIRST, "  "))
        status = _wait_status(state_dir, "waiting", 15)
        _say("fatia is waiting, and says why:")
        print(f"  {status['message']}")
        print(
            "  (an A100 changes MIG mode by a GPU reset, which another client blocks; fatia never stops it)"
        )
        _say("The operator stops the monitoring agent on GPU 0; fatia retries and finishes")
        SimControl(state_dir).set_clients(0, 0)
        _wait_status(state_dir, "idle", 30)
        kubelet.wait_for(lambda k: "nvidia.com/mig-3g.20gb" in k.resources(), 5)
        _say("What the kubelet sees (one gRPC server per resource, registered over unix sockets):")
        _show_resources(kubelet)

        _say("A pod asks for nvidia.com/mig-1g.5gb: 1; the kubelet calls Allocate; the container gets:")
        allocation = kubelet.allocate("demo-pod", "nvidia.com/mig-1g.5gb", 1)
        held = allocation.device_ids[0]
        for key, value in sorted(allocation.response.envs.items()):
            print(f"  {key}={value}")

        _say("The config is edited: the 3g.20gb becomes three 1g.5gb, GPU 1 goes from 4 to 2 replicas")
        print(textwrap.indent(SECOND, "  "))
        config.write_text(SECOND)
        kubelet.wait_for(
            lambda k: len(k.devices("nvidia.com/mig-1g.5gb")) == 5 and len(k.devices("nvidia.com/gpu")) == 2,
            15,
        )
        _wait_status(state_dir, "idle", 15)
        _say("After the repartition (no restart, no full teardown):")
        _show_resources(kubelet)
        still = held in kubelet.devices("nvidia.com/mig-1g.5gb")
        print(f"\n  the pod's slice {held} is {'still there' if still else 'GONE'}")

        _say("fatia status")
        print(textwrap.indent(format_table(read_status(state_dir)), "  "))
        print(f"\nThe daemon's log is in {root / 'fatia.log'}" if keep else "")
        return 0 if still else 1
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        kubelet.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
