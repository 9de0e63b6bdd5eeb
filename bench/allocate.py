"""Allocate and GetPreferredAllocation latency of fatia, against a bare gRPC echo server.

What it measures: a real ``fatia run`` process on a simulated 8-GPU node with
112 time-slicing replicas per GPU (896 devices of ``nvidia.com/gpu``) is
started against the kubelet emulator; once the emulator has the full device
list, this script dials the plugin's own socket (``fatia-gpu-*.sock``) with a
plain ``DevicePluginStub`` and times, per call, on the client:

- ``Allocate`` of one device (the ID changes on every call);
- ``GetPreferredAllocation`` offering all 896 IDs, for 1 and for 4 devices.

Why a baseline: on a shared box the absolute numbers say little, and most of
an RPC's cost is grpcio and protobuf, which fatia does not control. The
baseline is an echo server with the same process model as fatia's plugin
server: a separate process running a sync ``grpc.server`` with an 8-worker
``ThreadPoolExecutor`` on a unix socket, serving the same method names with
the same message types (it returns a fixed ``AllocateResponse``, and the first
``allocation_size`` offered IDs for a preference). The ratio fatia/echo is
then fatia's own overhead: its policy, its logging, its metrics.

Why interleaved: the calls run in rounds alternating echo, fatia, echo,
fatia ... so that noise from other work on the machine (which comes and goes
over seconds) falls on both sides alike instead of on whichever ran second.

Acceptance (from the issue): Allocate p50 <= 1.5x echo. The script prints a
table and ``allocate p50 ratio: X.XX (target <= 1.5) PASS|FAIL``; it exits 0
unless ``--check`` is given and the target is missed.

Run: ``.venv/bin/python bench/allocate.py [--calls 2000] [--warmup 200] [--check]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from common import running_fatia, stop

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc

RESOURCE = "nvidia.com/gpu"
GPUS = 8
REPLICAS = 112
DEVICES = GPUS * REPLICAS
CONFIG = f"version: v1\ngpus: [{{devices: all, replicas: {REPLICAS}}}]\n"
TARGET_RATIO = 1.5
ROUNDS = 10
SERVICE = "v1beta1.DevicePlugin"
ECHO_RESPONSE = api_pb2.AllocateResponse(
    container_responses=[
        api_pb2.ContainerAllocateResponse(
            envs={"NVIDIA_VISIBLE_DEVICES": "GPU-00000000-0000-0000-0000-000000000000"}
        )
    ]
)


# -- the echo server (runs in its own process) ------------------------------


def _echo_allocate(
    request: api_pb2.AllocateRequest, context: grpc.ServicerContext
) -> api_pb2.AllocateResponse:
    return ECHO_RESPONSE


def _echo_preferred(
    request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
) -> api_pb2.PreferredAllocationResponse:
    response = api_pb2.PreferredAllocationResponse()
    for req in request.container_requests:
        response.container_responses.add(deviceIDs=req.available_deviceIDs[: req.allocation_size])
    return response


def serve_echo(socket: Path) -> None:
    """Serve Allocate and GetPreferredAllocation as fatia's plugin server does, minus fatia."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="echo"),
        options=[("grpc.so_reuseport", 0)],
    )
    handlers = {
        "Allocate": grpc.unary_unary_rpc_method_handler(
            _echo_allocate,
            request_deserializer=api_pb2.AllocateRequest.FromString,
            response_serializer=api_pb2.AllocateResponse.SerializeToString,
        ),
        "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
            _echo_preferred,
            request_deserializer=api_pb2.PreferredAllocationRequest.FromString,
            response_serializer=api_pb2.PreferredAllocationResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    server.wait_for_termination()


# -- the two servers under test ---------------------------------------------


@contextmanager
def echo_server(workdir: Path) -> Iterator[Path]:
    """The echo server as a child process of this script; yields its socket."""
    socket = workdir / "echo.sock"
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", str(socket)], stdout=subprocess.DEVNULL
    )
    try:
        yield socket
    finally:
        stop(process)


@contextmanager
def fatia_server(workdir: Path) -> Iterator[tuple[Path, list[str]]]:
    """``fatia run`` on a simulated node with 896 devices; yields its plugin socket and IDs."""
    config = workdir / "config.yaml"
    config.write_text(CONFIG)
    with running_fatia(workdir, f"sim:a100-40gb:{GPUS}", config=config) as running:
        kubelet = running.kubelet
        if not kubelet.wait_for(lambda k: len(k.devices(RESOURCE)) == DEVICES, timeout=60):
            raise SystemExit(f"fatia did not advertise {DEVICES} devices; see {running.log}")
        sockets = sorted(kubelet.plugin_dir.glob("fatia-gpu-*.sock"))
        if len(sockets) != 1:
            raise SystemExit(f"expected one fatia-gpu-*.sock, found {sockets}")
        yield sockets[0], sorted(kubelet.devices(RESOURCE))


def stub_for(socket: Path) -> api_pb2_grpc.DevicePluginStub:
    channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.default_authority", "localhost")])
    grpc.channel_ready_future(channel).result(timeout=30)
    return api_pb2_grpc.DevicePluginStub(channel)


# -- measurement --------------------------------------------------------------


Call = Callable[[api_pb2_grpc.DevicePluginStub, int], object]


@dataclass(frozen=True)
class Workload:
    name: str
    call: Call


def workloads(ids: list[str]) -> list[Workload]:
    """The three calls measured; requests are built here, outside the timed region."""
    allocate = [
        api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[i])])
        for i in ids
    ]

    def preferred(size: int) -> api_pb2.PreferredAllocationRequest:
        return api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=ids, allocation_size=size)
            ]
        )

    preferred_1, preferred_4 = preferred(1), preferred(4)
    return [
        Workload(
            "Allocate (1 device)", lambda stub, n: stub.Allocate(allocate[n % len(allocate)], timeout=10)
        ),
        Workload(
            f"GetPreferredAllocation ({len(ids)} avail, size 1)",
            lambda stub, n: stub.GetPreferredAllocation(preferred_1, timeout=10),
        ),
        Workload(
            f"GetPreferredAllocation ({len(ids)} avail, size 4)",
            lambda stub, n: stub.GetPreferredAllocation(preferred_4, timeout=10),
        ),
    ]


def timed(call: Call, stub: api_pb2_grpc.DevicePluginStub, start: int, count: int) -> list[int]:
    """Latencies in nanoseconds of ``count`` calls, measured on the client."""
    samples = []
    for n in range(start, start + count):
        began = time.perf_counter_ns()
        call(stub, n)
        samples.append(time.perf_counter_ns() - began)
    return samples


def interleaved(
    workload: Workload, stubs: dict[str, api_pb2_grpc.DevicePluginStub], *, calls: int, warmup: int
) -> dict[str, list[int]]:
    """Warm up each server, then alternate rounds between them; samples per server."""
    for stub in stubs.values():
        timed(workload.call, stub, 0, warmup)
    samples: dict[str, list[int]] = {name: [] for name in stubs}
    per_round = max(1, calls // ROUNDS)
    for r in range(ROUNDS):
        for name, stub in stubs.items():
            samples[name] += timed(workload.call, stub, warmup + r * per_round, per_round)
    return samples


def percentile(samples: list[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank] / 1000


# -- main ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per server and RPC")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0

    # Unix socket paths are limited to 107 bytes: keep the directory short.
    workdir = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    try:
        with echo_server(workdir) as echo_socket, fatia_server(workdir) as (fatia_socket, ids):
            stubs = {"echo": stub_for(echo_socket), "fatia": stub_for(fatia_socket)}
            results = []
            for workload in workloads(ids):
                samples = interleaved(workload, stubs, calls=args.calls, warmup=args.warmup)
                results.append((workload.name, samples))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"fatia run, sim:a100-40gb:{GPUS}, {REPLICAS} replicas/GPU = {len(ids)} devices; "
        f"{args.calls} calls per cell after {args.warmup} warm-up, {ROUNDS} interleaved rounds"
    )
    print(
        f"{'RPC':<42} {'echo p50':>9} {'echo p99':>9} {'fatia p50':>10} {'fatia p99':>10} "
        f"{'p50 x':>6} {'p99 x':>6}"
    )
    allocate_ratio = 0.0
    for name, samples in results:
        e50, e99 = percentile(samples["echo"], 50), percentile(samples["echo"], 99)
        f50, f99 = percentile(samples["fatia"], 50), percentile(samples["fatia"], 99)
        print(
            f"{name:<42} {e50:>7.0f}us {e99:>7.0f}us {f50:>8.0f}us {f99:>8.0f}us "
            f"{f50 / e50:>6.2f} {f99 / e99:>6.2f}"
        )
        if name.startswith("Allocate"):
            allocate_ratio = f50 / e50
    passed = allocate_ratio <= TARGET_RATIO
    print(
        f"allocate p50 ratio: {allocate_ratio:.2f} (target <= {TARGET_RATIO}) {'PASS' if passed else 'FAIL'}"
    )
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
