"""Resident memory and idle CPU of ``fatia run`` on an 8-GPU node, and which threads wake while it idles.

What it measures, on each NVML path:

- ``sim``: ``--nvml sim:a100-40gb:8``, fatia's simulator;
- ``real``: ``--nvml real``, the real ``pynvml`` over fatia's mock
  ``libnvidia-ml.so.1`` (``make nvml-mock``, ``tests/realnvml``) with eight
  A100-40GB. Skipped, saying so, when the library cannot be built here;
- ``api``: the simulator again, in API mode as the DaemonSet runs it: the config in
  the node's ConfigMap, the Node's labels and annotation written, through the fake
  API server (in this script's process, so its CPU and memory are not fatia's).

For each: the kubelet emulator is already serving; once it holds every device
(8 GPUs x ``--replicas``, as ``bench/startup.py``) the script waits
``--settle`` seconds for start-up work to end, then reads, over a window of
``--window`` seconds (30 by default):

1. idle CPU: user+system time of the process and its children over the
   window, divided by the wall time, as a percentage of one core (target
   <= 0.2 %);
2. per thread: CPU time and wake-ups over the window, grouped by thread name.
   A wake-up is one more run on a CPU (the third field of
   ``/proc/PID/task/TID/schedstat``), CPU time its first field (ns, exact;
   ``utime``/``stime`` tick only every 10 ms);
3. RSS of the process and its children at the end (target <= 60 MiB).

Thread names: the kernel names every thread of a Python process after the
process. So the daemon is started through a bootstrap that names each OS
thread after its Python thread (``prctl(PR_SET_NAME)``, first 15 bytes) as it
starts and then runs the same entry point as ``python -m
deviceplugin.cli.main``; it does nothing after a thread has started, so the
figures are the daemon's. gRPC's own threads name themselves.

On the real path the mock's ``nvmlEventSetWait`` sleeps in 250 ms steps where a
driver blocks in the kernel, so its wake-ups (in the health thread, with no
Python and no GIL) are the mock's, not fatia's; the table shows them apart.
The mock's fault and trace files are not set, so it reads no file per call.

The last lines are ``<path> idle CPU: X.XX % (target <= 0.2) PASS|FAIL`` and
``<path> RSS: X.X MiB (target <= 60) PASS|FAIL``; ``--check`` makes the
script exit 1 if any is FAIL.

Run: ``.venv/bin/python bench/idle.py [--window 30] [--settle 10] [--replicas 4]
[--path sim|real|api|all] [--check]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from common import Fatia, arguments, cpu_seconds, rss_mib, running_fatia, verdict

from deviceplugin.testing.apiserver import FakeKube
from deviceplugin.testing.daemon import REPO, socket_dir

RESOURCE = "nvidia.com/gpu"
GPUS = 8
TARGET_IDLE_CPU_PCT = 0.2
TARGET_RSS_MIB = 60.0
NODE = "bench"
NAMESPACE = "fatia-system"
MOCK_BUILD = REPO / "tests" / "realnvml" / "mocknvml" / "build.sh"
MOCK_LIBRARY = "libnvidia-ml.so.1"

# What the threads seen in fatia are (their names cut to the kernel's 15 bytes).
ABOUT = {
    "MainThread": "agent loop (config and health events)",
    "health": "health monitor: NVML event wait, liveness reads",
    "plugin-watcher": "plugin manager: inotify on the plugin dir, a look every 2 s",
    "config-watch": "config file source: inotify, a look every 5 s",
    "configmap-watch": "ConfigMap source (API mode): blocked in its watch",
    "node-reporter": "Node label/annotation reporter (API mode)",
    "metrics": "metrics and probes HTTP server",
    "allocation-log": "plugin server: the allocated log lines",
    "Thread-1 (_serv": "grpcio server loop (wakes every 200 ms for signals)",
    "event_engine": "gRPC C-core event engine",
    "grpc_global_tim": "gRPC C-core timer",
    "lifeguard": "gRPC C-core event-engine lifeguard",
    "resolver-execut": "gRPC C-core resolver",
}

# Names each OS thread after its Python thread, then runs `python -m deviceplugin.cli.main`.
BOOTSTRAP = """
import ctypes, runpy, sys, threading
_prctl = ctypes.CDLL(None, use_errno=True).prctl
def _name(name):
    _prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
_start = threading.Thread._bootstrap_inner
def _named(self):
    _name(self.name)
    _start(self)
threading.Thread._bootstrap_inner = _named
_name("MainThread")
sys.argv[0] = "fatia"
runpy.run_module("deviceplugin.cli.main", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class ThreadSample:
    name: str
    cpu_ns: int
    runs: int


def threads(pid: int) -> dict[int, ThreadSample]:
    """Every thread of ``pid`` now: name, CPU time and times it was scheduled."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            cpu_ns, _wait_ns, runs = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        found[int(task.name)] = ThreadSample(name, cpu_ns, runs)
    return found


@dataclass(frozen=True)
class Idle:
    path: str
    window_s: float
    cpu_pct: float
    rss_mib: float
    by_name: dict[str, tuple[int, float, int]]  # name -> (threads, CPU ms, wake-ups) over the window


def breakdown(
    before: Mapping[int, ThreadSample], after: Mapping[int, ThreadSample]
) -> dict[str, tuple[int, float, int]]:
    """Per thread name: how many threads, CPU ms and wake-ups between two samples."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for tid, end in after.items():
        start = before.get(tid, ThreadSample(end.name, 0, 0))
        row = totals[end.name]
        row[0] += 1
        row[1] += (end.cpu_ns - start.cpu_ns) / 1e6
        row[2] += end.runs - start.runs
    return {name: (int(n), ms, int(runs)) for name, (n, ms, runs) in totals.items()}


@contextmanager
def daemon(workdir: Path, nvml: str, replicas: int, env: Mapping[str, str], *, api: bool) -> Iterator[Fatia]:
    """``fatia run`` (through the naming bootstrap) against a started kubelet emulator; with
    ``api``, its config from a ConfigMap of a fake API server, else from a file."""
    text = f"version: v1\ngpus: [{{devices: all, replicas: {replicas}}}]\n"
    program = (sys.executable, "-c", BOOTSTRAP)
    if not api:
        config = workdir / "config.yaml"
        config.write_text(text)
        with running_fatia(workdir, nvml, config=config, env=env, program=program) as running:
            yield running
        return
    with FakeKube() as kube:
        kube.add_node(NODE)
        kube.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": text})
        extra = ["--kubeconfig", str(kube.write_kubeconfig(workdir / "kubeconfig")), "--namespace", NAMESPACE]
        with running_fatia(workdir, nvml, extra=extra, env=env, program=program, node_name=NODE) as running:
            yield running


def measure(
    path: str,
    nvml: str,
    env: Mapping[str, str],
    *,
    replicas: int,
    settle_s: float,
    window_s: float,
    api: bool = False,
) -> Idle:
    expected = GPUS * replicas
    with socket_dir("fi") as workdir, daemon(workdir, nvml, replicas, env, api=api) as running:
        process, kubelet = running.process, running.kubelet
        if not kubelet.wait_for(lambda k: len(k.healthy(RESOURCE)) == expected, timeout=60):
            log = (workdir / "fatia.log").read_text()[-2000:]
            raise SystemExit(f"{path}: fatia did not advertise {expected} devices within 60 s:\n{log}")
        time.sleep(settle_s)
        before, cpu_before, began = threads(process.pid), cpu_seconds(process.pid), time.perf_counter()
        time.sleep(window_s)
        after, cpu_after = threads(process.pid), cpu_seconds(process.pid)
        elapsed = time.perf_counter() - began
        rss = rss_mib(process.pid)
        if process.poll() is not None:
            raise SystemExit(f"{path}: fatia exited early with {process.returncode}")
    return Idle(path, elapsed, 100 * (cpu_after - cpu_before) / elapsed, rss, breakdown(before, after))


def mock_library() -> tuple[Path | None, str]:
    """The mock NVML's directory as ``make nvml-mock`` builds it, or None and why not."""
    try:
        out = subprocess.run([str(MOCK_BUILD)], capture_output=True, text=True, timeout=300, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return None, detail.strip().splitlines()[-1] if detail.strip() else "build failed"
    directory = Path(out.stdout.strip().splitlines()[-1])
    if not (directory / MOCK_LIBRARY).is_file():
        return None, f"{MOCK_BUILD} reported {directory}, which has no {MOCK_LIBRARY}"
    return directory, ""


def mock_env(library: Path, root: Path) -> dict[str, str]:
    """Eight A100-40GB in the mock's node file; no fault or trace file (nothing read per call)."""
    sys.path.insert(0, str(REPO / "tests"))
    from realnvml.mock import MockNode

    node = MockNode(library, root)
    node.configure(["model=a100-40gb numa=0"] * 4 + ["model=a100-40gb numa=1"] * 4)
    env = node.env
    for unused in ("FATIA_MOCK_NVML_FAULTS", "FATIA_MOCK_NVML_TRACE"):
        env.pop(unused)
    return env


def report(idle: Idle) -> list[bool]:
    print(f"\n{idle.path}: idle window {idle.window_s:.1f} s")
    print(f"  {'thread':<16} {'n':>3} {'CPU ms':>8} {'% core':>7} {'wake-ups':>8} {'per s':>6}  what")
    rows = sorted(idle.by_name.items(), key=lambda item: (-item[1][2], -item[1][1]))
    for name, (count, ms, runs) in rows:
        if runs == 0 and ms == 0:
            continue
        what = ABOUT.get(name, "plugin server workers" if name.startswith("dp-") else "?")
        print(
            f"  {name:<16} {count:>3} {ms:>8.2f} {100 * ms / 1000 / idle.window_s:>7.3f} "
            f"{runs:>8} {runs / idle.window_s:>6.1f}  {what}"
        )
    quiet = sorted(name for name, (_, ms, runs) in idle.by_name.items() if runs == 0 and ms == 0)
    if quiet:
        print(f"  never woke: {', '.join(quiet)}")
    cpu_ok, rss_ok = idle.cpu_pct <= TARGET_IDLE_CPU_PCT, idle.rss_mib <= TARGET_RSS_MIB
    print(f"{idle.path} idle CPU: {idle.cpu_pct:.2f} % (target <= {TARGET_IDLE_CPU_PCT}) {verdict(cpu_ok)}")
    print(f"{idle.path} RSS: {idle.rss_mib:.1f} MiB (target <= {TARGET_RSS_MIB:.0f}) {verdict(rss_ok)}")
    return [cpu_ok, rss_ok]


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--window", type=float, default=30.0, help="idle window in seconds")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after the full device list before the window"
    )
    parser.add_argument("--replicas", type=int, default=4, help="time-slicing replicas per GPU")
    parser.add_argument("--path", choices=("sim", "real", "api", "all"), default="all")
    args = parser.parse_args()
    common = {"replicas": args.replicas, "settle_s": args.settle, "window_s": args.window}
    print(
        f"fatia run, {GPUS}x A100-40GB, {args.replicas} replicas/GPU; "
        f"settle {args.settle:.0f} s, window {args.window:.0f} s"
    )

    verdicts: list[bool] = []
    if args.path in ("sim", "all"):
        verdicts += report(measure("sim", f"sim:a100-40gb:{GPUS}", {}, **common))
    if args.path in ("real", "all"):
        library, why = mock_library()
        if library is not None and not (REPO / "tests" / "realnvml" / "mock.py").is_file():
            library, why = None, "tests/realnvml/mock.py is missing"
        if library is None:
            print(f"\nreal-NVML path: mock library not built, skipped ({why})")
        else:
            with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as root:
                env = mock_env(library, Path(root))
                verdicts += report(measure("real", "real", env, **common))
    if args.path in ("api", "all"):
        verdicts += report(measure("api", f"sim:a100-40gb:{GPUS}", {}, api=True, **common))
    return 1 if args.check and not all(verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
