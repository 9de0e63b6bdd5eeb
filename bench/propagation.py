"""ConfigMap-edit propagation: from an edit in the API server to the kubelet's new device list.

What it measures: a fake Kubernetes API server (``tests/deviceplugin.testing.apiserver.py``, real
HTTP on 127.0.0.1, watched by the official ``kubernetes`` client), the kubelet
emulator, both in this process, and a real ``fatia run --kubeconfig ...
--namespace fatia-system --node-name node-a`` process on a simulated 8-GPU node
(``sim:a100-40gb:8``) in API mode. The node's ConfigMap ``fatia-node-a``
starts with 4 time-slicing replicas per GPU; then 20 edits set the replicas
to 2, 3, 4, 2, 3, 4, ... (each edit changes the device list). Per edit, the
timer starts just before ``FakeKube.set_configmap`` (which stores the object
and emits the watch event, as an API write does) and stops when the emulator's
ListAndWatch stream holds exactly ``8 x replicas`` Healthy devices of
``nvidia.com/gpu``.

The timer covers the whole path a real edit takes on the node: the watch
event over HTTP, the client decoding it, fatia parsing and planning the new
config, rebuilding the device list, the plugin server's ListAndWatch send and
the emulator receiving it. ``kubelet.wait_for`` wakes on every ListAndWatch
message, so nothing here polls. Time-slicing edits touch no MIG state, so
this is the propagation path alone.

Acceptance (issue 4): median <= 1 s. Prints median, p90 and max and
``configmap->listandwatch median: X ms (target <= 1000 ms) PASS|FAIL``; exits 0
unless ``--check`` is given and the target is missed.

Run: ``.venv/bin/python bench/propagation.py [--edits 20] [--check]``
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

REPO = Path(__file__).resolve().parents[1]

from common import arguments, percentile, running_fatia, verdict  # noqa: E402

from deviceplugin.testing.apiserver import FakeKube  # noqa: E402
from deviceplugin.testing.daemon import socket_dir  # noqa: E402
from deviceplugin.testing.kubelet import KubeletEmulator  # noqa: E402

RESOURCE = "nvidia.com/gpu"
GPUS = 8
NAMESPACE = "fatia-system"
NODE = "node-a"
CONFIGMAP = f"fatia-{NODE}"
CYCLE = (2, 3, 4)
TARGET_MEDIAN_MS = 1000.0


def config(replicas: int) -> dict[str, str]:
    return {"config.yaml": f"version: v1\ngpus: [{{devices: all, replicas: {replicas}}}]\n"}


def advertised(replicas: int) -> Callable[[KubeletEmulator], bool]:
    expected = GPUS * replicas
    return lambda k: len(k.devices(RESOURCE)) == expected and len(k.healthy(RESOURCE)) == expected


def measure(workdir: Path, edits: int) -> list[float]:
    with FakeKube() as fake:
        fake.add_node(NODE, labels={"kubernetes.io/hostname": NODE})
        fake.set_configmap(NAMESPACE, CONFIGMAP, config(4))
        kubeconfig = fake.write_kubeconfig(workdir / "kubeconfig")
        extra = ("--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE)
        with running_fatia(workdir, f"sim:a100-40gb:{GPUS}", extra=extra, node_name=NODE) as running:
            kubelet = running.kubelet
            if not kubelet.wait_for(advertised(4), 30):
                raise SystemExit(
                    f"fatia did not advertise {GPUS * 4} devices:\n{(workdir / 'fatia.log').read_text()}"
                )
            if not fake.wait_for_watches(1, timeout=10):
                raise SystemExit("fatia did not watch its ConfigMap")
            latencies: list[float] = []
            for n in range(edits):
                replicas = CYCLE[n % len(CYCLE)]
                started = time.perf_counter()
                fake.set_configmap(NAMESPACE, CONFIGMAP, config(replicas))
                if not kubelet.wait_for(advertised(replicas), 10):
                    raise SystemExit(f"edit {n}: {GPUS * replicas} devices not seen within 10 s")
                latencies.append((time.perf_counter() - started) * 1000)
            return latencies


def main() -> int:
    args = arguments(__doc__, edits=20).parse_args()
    with socket_dir("fb") as workdir:
        latencies = measure(workdir, args.edits)
    median = statistics.median(latencies)
    p90 = percentile(latencies, 90)
    passed = median <= TARGET_MEDIAN_MS
    print(f"edits: {len(latencies)} (replicas cycling {'/'.join(map(str, CYCLE))} on {GPUS} GPUs)")
    print(f"median: {median:.1f} ms  p90: {p90:.1f} ms  max: {max(latencies):.1f} ms")
    print(
        f"configmap->listandwatch median: {median:.1f} ms (target <= {TARGET_MEDIAN_MS:.0f} ms) "
        f"{verdict(passed)}"
    )
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
