"""``fatia run`` held to the DaemonSet's memory, fed the worst configs through a ConfigMap volume.

The daemon reads a mounted ConfigMap directory, which the test updates as the kubelet
does (a new timestamped directory, then the ``..data`` symlink swapped). The process
runs under ``RLIMIT_AS``: the address space the idle daemon needs (threads and gRPC
reserve far more than they touch) plus what the DaemonSet's 256 MiB memory limit leaves
over its idle resident size. Building a million devices, expanding an alias bomb or
reading 1 MiB through PyYAML's composer would not fit; refusing them does.

After each bad config the daemon is alive, the kubelet (the emulator) has seen no new
device list, and ``fatia status`` says failed with where the problem is. A good config
afterwards applies: nothing is stuck. In API mode the same inputs give a Warning Event.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, RunFatia, wait_until

from deviceplugin.testing.apiserver import FakeKube
from deviceplugin.testing.daemon import FATIA, FatiaProcess, fatia_cli
from deviceplugin.testing.kubelet import KubeletEmulator

DAEMONSET_MEMORY = 256 * 2**20
GOOD = b"version: v1\ngpus: [{devices: all, replicas: 2}]\n"
BETTER = b"version: v1\ngpus: [{devices: all, replicas: 3}]\n"
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

# (name, content of config.yaml or None for a directory, what fatia status must say)
WORST: list[tuple[str, bytes | None, str]] = [
    (
        "recoverySeconds .inf",
        b"version: v1\nhealth: {recoverySeconds: .inf}\n",
        "health.recoverySeconds: must be a finite",
    ),
    (
        "recoverySeconds .nan",
        b"version: v1\nhealth: {recoverySeconds: .nan}\n",
        "health.recoverySeconds: must be a finite",
    ),
    (
        "replicas 1000000",
        b"version: v1\ngpus: [{devices: all, replicas: 1000000}]\n",
        "gpus[0].replicas: must be at most",
    ),
    (
        "shared replicas 10**12",
        b"version: v1\nsharing:\n  timeSlicing:\n"
        b"    resources: [{name: nvidia.com/gpu, replicas: 1000000000000}]\n",
        "sharing.timeSlicing.resources[0].replicas: must be at most",
    ),
    (
        "more devices than the kubelet takes",
        b"version: v1\ngpus: [{devices: all, mig-devices: {1g.10gb: 7}, replicas: 10000}]\n",
        "gpus[0].replicas: 10000 replicas of 14 devices on 2 GPUs is 140000 devices of "
        "nvidia.com/mig-1g.10gb; the kubelet accepts at most",
    ),
    (
        "alias bomb under imex",
        ("flags: {}\nimex:\n  " + LAUGHS.replace("\n", "\n  ")).encode(),
        "values (aliases counted",
    ),
    (
        "1 MiB dense list under an unknown key",
        b"version: v1\njunk: [" + b"1," * 524_000 + b"1]\n",
        "values (aliases counted",
    ),
    ("not UTF-8", b"version: v1\ngpus: [{replicas: 2}]  # caf\xe9\n", ":2:29: not UTF-8 text: byte 0xe9"),
    ("config.yaml a directory", None, "config.yaml is a directory, not a file"),
    (
        "duplicate key",
        b"version: v1\ngpus:\n  - devices: all\n    replicas: 4\n    replicas: 1\n",
        ':5:5: duplicate key "replicas"',
    ),
    ("3000-deep nesting", b"version: v1\ngpus: " + b"[" * 3000 + b"]" * 3000 + b"\n", ":2:"),
    (
        "10**400",
        b"version: v1\nhealth: {recoverySeconds: 1" + b"0" * 400 + b"}\n",
        "a number of 401 characters",
    ),
    ("2 MiB", b"version: v1\n" + b"#" * (2 * 2**20) + b"\n", "bytes is larger than 1048576"),
]


_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_AS, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def _swap(directory: Path, data: bytes | None) -> None:
    """Update a ConfigMap volume as the kubelet does: a new directory, then ``..data`` swapped."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    if data is None:
        (version / "config.yaml").mkdir()
    else:
        (version / "config.yaml").write_bytes(data)
    old = (directory / "..data").resolve() if (directory / "..data").exists() else None
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    link.replace(directory / "..data")
    if not (directory / "config.yaml").is_symlink():
        (directory / "config.yaml").symlink_to("..data/config.yaml")
    if old is not None:
        subprocess.run(["rm", "-rf", str(old)], check=True)


def _memory(pid: int) -> dict[str, int]:
    """VmPeak, VmSize, VmHWM, VmRSS of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmPeak", "VmSize", "VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture
def launch(run_fatia: RunFatia, sockdir: Path) -> Callable[..., FatiaProcess]:
    """fatia on two simulated H100s, each start with a state of its own; optionally under RLIMIT_AS."""
    starts = itertools.count()

    def start(
        *, config: Path | None = None, extra: tuple[str, ...] = (), address_space: int | None = None
    ) -> FatiaProcess:
        program = FATIA
        if address_space is not None:
            # Set in the child by a tiny launcher that then execs the daemon: a preexec_fn
            # would run Python between fork and exec in this multi-threaded (gRPC) process.
            program = (sys.executable, "-c", _LIMITED, str(address_space), *FATIA[1:])
        state = sockdir / f"state-{next(starts)}"
        return run_fatia("sim:h100-80gb:2", config=config, extra=extra, state_dir=state, program=program)

    return start


def _applied(daemon: FatiaProcess, kubelet: KubeletEmulator, count: int) -> bool:
    assert daemon.process.poll() is None, f"the daemon exited\n{daemon.logs()[-3000:]}"
    return (
        len(kubelet.healthy("nvidia.com/gpu")) == count
        and daemon.status().get("phase") == "idle"
        and "applied" in str(daemon.status().get("message"))
    )


def test_the_daemonset_limit_is_256_mib() -> None:
    manifest = (REPO / "daemonset" / "daemonset.yaml").read_text()
    assert re.search(r"limits:\s*\n\s*memory: 256Mi", manifest)


def test_the_worst_configs_cost_a_memory_limited_daemon_nothing(
    launch: Callable[..., FatiaProcess], kubelet: KubeletEmulator, sockdir: Path
) -> None:
    volume = sockdir / "cm"
    _swap(volume, GOOD)
    # The idle daemon, unlimited: how much address space and memory it takes.
    probe = launch(config=volume)
    assert wait_until(lambda: _applied(probe, kubelet, 4), 30), probe.logs()
    idle = _memory(probe.process.pid)
    probe.stop()
    assert kubelet.wait_for(lambda k: not k.connected("nvidia.com/gpu"), 10)
    limit = idle["VmPeak"] + (DAEMONSET_MEMORY - idle["VmRSS"])

    daemon = launch(config=volume, address_space=limit)
    assert wait_until(lambda: _applied(daemon, kubelet, 4), 30), daemon.logs()
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
    assert re.search(rf"Max address space\s+{limit}\s+{limit}\s+bytes", limits), limits
    assert kubelet.wait_for(lambda k: k.connected("nvidia.com/gpu"), 10)
    devices, updates = kubelet.devices("nvidia.com/gpu"), kubelet.updates("nvidia.com/gpu")

    for name, content, expected in WORST:
        _swap(volume, content)

        def said(expected: str = expected) -> bool:
            status = daemon.status()
            return status.get("phase") == "failed" and expected in str(status.get("message"))

        assert wait_until(said, 20), f"{name}: {daemon.status()}\n{daemon.logs()[-3000:]}"
        assert daemon.process.poll() is None, f"{name}: the daemon died\n{daemon.logs()[-3000:]}"
        assert kubelet.devices("nvidia.com/gpu") == devices, name
        assert kubelet.updates("nvidia.com/gpu") == updates, name
        assert "Traceback" not in daemon.logs(), name

    shown = fatia_cli("status", "--state-dir", str(daemon.state_dir), "--output", "json", timeout=30)
    assert shown.returncode == 1  # failed
    assert json.loads(shown.stdout)["phase"] == "failed"

    # Nothing is stuck: a good config applies, and the daemon stayed within its limit.
    _swap(volume, BETTER)
    assert wait_until(lambda: _applied(daemon, kubelet, 6), 20), daemon.logs()[-3000:]
    used = _memory(daemon.process.pid)
    print(
        f"\nidle daemon: VmPeak {idle['VmPeak'] >> 20} MiB, VmRSS {idle['VmRSS'] >> 20} MiB; "
        f"RLIMIT_AS {limit >> 20} MiB; after {len(WORST)} bad configs: VmPeak {used['VmPeak'] >> 20} MiB, "
        f"VmHWM {used['VmHWM'] >> 20} MiB"
    )
    assert used["VmHWM"] < DAEMONSET_MEMORY


STATE = "fatia.dev/config.state"
API_WORST = [
    item
    for item in WORST
    if item[0] in ("duplicate key", "alias bomb under imex", "more devices than the kubelet takes")
]


def test_in_api_mode_the_worst_configs_give_a_warning_and_change_nothing(
    launch: Callable[..., FatiaProcess], kubelet: KubeletEmulator, fake_kube: FakeKube, sockdir: Path
) -> None:
    fake_kube.add_node("node-a", labels={"kubernetes.io/hostname": "node-a"})
    kubeconfig = fake_kube.write_kubeconfig(sockdir / "kubeconfig")
    fake_kube.set_configmap("fatia-system", "fatia-node-a", {"config.yaml": GOOD.decode()})
    daemon = launch(extra=("--kubeconfig", str(kubeconfig), "--namespace", "fatia-system"))
    assert wait_until(lambda: _applied(daemon, kubelet, 4), 30), daemon.logs()
    devices, updates = kubelet.devices("nvidia.com/gpu"), kubelet.updates("nvidia.com/gpu")

    for name, content, expected in API_WORST:
        assert content is not None
        fake_kube.set_configmap("fatia-system", "fatia-node-a", {"config.yaml": content.decode()})

        def warned(expected: str = expected) -> bool:
            return any(
                e["type"] == "Warning" and e["reason"] == "InvalidConfig" and expected in e["message"]
                for e in fake_kube.events("default")
            )

        def state() -> object:
            return (fake_kube.node("node-a") or {}).get("metadata", {}).get("labels", {}).get(STATE)

        assert wait_until(warned, 20), f"{name}: {fake_kube.events('default')}"
        assert wait_until(lambda: state() == "failed", 10), f"{name}: {state()}"  # the Event comes first
        assert daemon.process.poll() is None, name
        assert kubelet.devices("nvidia.com/gpu") == devices, name
        assert kubelet.updates("nvidia.com/gpu") == updates, name
