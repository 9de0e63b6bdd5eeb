"""XID-to-Unhealthy latency: from an injected XID to the kubelet seeing the device Unhealthy.

What it measures: a real ``fatia run`` process on a simulated 8-GPU node
(``sim:a100-40gb:8``, whole GPUs, ``health: {recoverySeconds: 0.2}``) serves
the kubelet emulator, which runs in this process. Each of N rounds (50 by
default):

1. wait until the emulator holds all 8 GPUs Healthy (the previous round's GPU
   has recovered);
2. inject XID 79 ("GPU has fallen off the bus", fatal by default) on the next
   GPU in turn, through ``SimControl.inject_event`` (a write of the simulated
   node's state file, as the simulated driver sees it);
3. time, on this process's ``perf_counter``, from the moment
   ``inject_event`` returns (the event is in the state file: the simulated
   driver can see it) until the emulator's ListAndWatch stream reports that
   GPU's device Unhealthy.

The injection itself (a locked read-modify-replace of the state file's JSON)
is the simulator's cost, not the path under test, and on a busy machine it
alone has taken up to ~180 ms; it is reported separately and not counted.

The timer covers everything a real node would: the simulated driver noticing
the event (its ``nvmlEventSetWait`` polls the state file every 10 ms, so that
adds 5 ms on average), the health thread mapping it to a UUID, the agent
rebuilding the device list, the plugin server sending it, and the emulator
receiving it over the unix socket. ``kubelet.wait_for`` wakes on every
ListAndWatch message, so nothing here polls.

Acceptance (from the issue): p99 <= 100 ms. Prints p50, p99 and max and
``xid->unhealthy p99: X ms (target <= 100 ms) PASS|FAIL``; exits 0 unless
``--check`` is given and the target is missed.

Run: ``.venv/bin/python bench/health.py [--injections 50] [--check]``
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from common import arguments, percentile, running_fatia, verdict

from deviceplugin.testing.daemon import socket_dir
from deviceplugin.testing.kubelet import KubeletEmulator
from mig.sim.nvml import SimControl

RESOURCE = "nvidia.com/gpu"
GPUS = 8
XID = 79
CONFIG = "version: v1\nhealth: {recoverySeconds: 0.2}\n"
TARGET_P99_MS = 100.0


def unhealthy(uuid: str) -> Callable[[KubeletEmulator], bool]:
    return lambda k: k.devices(RESOURCE).get(uuid) == "Unhealthy"


def measure(workdir: Path, injections: int, injecting: list[float]) -> list[float]:
    """Latencies in ms; ``injecting`` gets how long each ``inject_event`` call itself took."""
    config = workdir / "config.yaml"
    config.write_text(CONFIG)
    with running_fatia(workdir, f"sim:a100-40gb:{GPUS}", config=config) as running:
        kubelet, state = running.kubelet, running.state_dir
        if not kubelet.wait_for(lambda k: len(k.healthy(RESOURCE)) == GPUS, 30):
            raise SystemExit(f"fatia did not advertise {GPUS} GPUs:\n{(workdir / 'fatia.log').read_text()}")
        sim = SimControl(state)
        uuids = [gpu.uuid for gpu in sim.node().gpus]
        latencies: list[float] = []
        for n in range(injections):
            if not kubelet.wait_for(lambda k: len(k.healthy(RESOURCE)) == GPUS, 10):
                raise SystemExit(f"round {n}: the devices did not recover")
            gpu = n % GPUS
            before = time.perf_counter()
            sim.inject_event(gpu, data=XID)
            started = time.perf_counter()
            injecting.append((started - before) * 1000)
            if not kubelet.wait_for(unhealthy(uuids[gpu]), 5):
                raise SystemExit(f"round {n}: GPU {gpu} was not reported Unhealthy within 5 s")
            latencies.append((time.perf_counter() - started) * 1000)
        return latencies


def main() -> int:
    args = arguments(__doc__, injections=50).parse_args()
    injecting: list[float] = []
    with socket_dir("fb") as workdir:
        latencies = measure(workdir, args.injections, injecting)
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    passed = p99 <= TARGET_P99_MS
    print(f"injections: {len(latencies)} (XID {XID}, rotating over {GPUS} GPUs)")
    print(f"p50: {p50:.1f} ms  p99: {p99:.1f} ms  max: {max(latencies):.1f} ms")
    print(
        f"(not counted: writing the event into the simulated node, p50 "
        f"{statistics.median(injecting):.1f} ms, max {max(injecting):.1f} ms)"
    )
    print(f"xid->unhealthy p99: {p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms) {verdict(passed)}")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
