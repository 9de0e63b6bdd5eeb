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

Why interleaved: the calls run in short rounds (``--round`` calls, 25 by
default) alternating echo, fatia, fatia, echo ... so that noise from other
work on the machine (which comes and goes over seconds) falls on both sides
alike instead of on whichever ran second. The ratio is that of the pooled
p50s; the spread column gives the 10th-90th percentile of the per-round p50
ratios (each round pair sees the same machine), so a reader can tell a real
difference from noise.

Acceptance (issue 8): Allocate p50 <= 1.3x echo and GetPreferredAllocation
(896 offered) p50 <= 1.5x echo, both sizes. The script prints a table, then
``allocate p50 ratio: X.XX (target <= 1.3) PASS|FAIL`` and
``preferred p50 ratio: X.XX (target <= 1.5) PASS|FAIL`` (the worse of the two
sizes); it exits 0 unless ``--check`` is given and a target is missed.

Run: ``.venv/bin/python bench/allocate.py [--calls 2000] [--warmup 200] [--round 25] [--check]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from common import arguments, running_fatia

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.testing.daemon import socket_dir, stop_process

RESOURCE = "nvidia.com/gpu"
GPUS = 8
REPLICAS = 112
DEVICES = GPUS * REPLICAS
CONFIG = f"version: v1\ngpus: [{{devices: all, replicas: {REPLICAS}}}]\n"
ALLOCATE_TARGET = 1.3
PREFERRED_TARGET = 1.5
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
        stop_process(process)


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
    workload: Workload,
    stubs: dict[str, api_pb2_grpc.DevicePluginStub],
    *,
    calls: int,
    warmup: int,
    per_round: int,
) -> dict[str, list[list[int]]]:
    """Warm up each server, then alternate short rounds between them; samples per server and round.

    Rounds go echo, fatia, fatia, echo, echo, fatia, ...: each server goes first
    in half of the round pairs, so neither pays for (or profits from) its place.
    """
    for stub in stubs.values():
        timed(workload.call, stub, 0, warmup)
    samples: dict[str, list[list[int]]] = {name: [] for name in stubs}
    for r in range(max(1, calls // per_round)):
        order = list(stubs.items()) if r % 2 == 0 else list(reversed(stubs.items()))
        for name, stub in order:
            samples[name].append(timed(workload.call, stub, warmup + r * per_round, per_round))
    return samples


def percentile(samples: list[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank] / 1000


@dataclass(frozen=True)
class Cell:
    """One RPC's figures: pooled percentiles of both servers and the spread of the per-round ratio."""

    name: str
    echo_p50: float
    echo_p99: float
    fatia_p50: float
    fatia_p99: float
    round_ratio_p10: float
    round_ratio_p90: float

    @property
    def ratio(self) -> float:
        return self.fatia_p50 / self.echo_p50

    @classmethod
    def of(cls, name: str, samples: dict[str, list[list[int]]]) -> Cell:
        echo = [x for r in samples["echo"] for x in r]
        fatia = [x for r in samples["fatia"] for x in r]
        per_round = sorted(
            percentile(f, 50) / percentile(e, 50)
            for e, f in zip(samples["echo"], samples["fatia"], strict=True)
        )
        return cls(
            name,
            percentile(echo, 50),
            percentile(echo, 99),
            percentile(fatia, 50),
            percentile(fatia, 99),
            per_round[int(0.1 * (len(per_round) - 1))],
            per_round[int(0.9 * (len(per_round) - 1))],
        )


def verdict(label: str, ratio: float, target: float) -> tuple[str, bool]:
    passed = ratio <= target
    return f"{label} p50 ratio: {ratio:.2f} (target <= {target}) {'PASS' if passed else 'FAIL'}", passed


# -- main ---------------------------------------------------------------------


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per server and RPC")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--round", type=int, default=25, help="calls per server before switching")
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0

    with (
        socket_dir("fb") as workdir,
        echo_server(workdir) as echo_socket,
        fatia_server(workdir) as (fatia_socket, ids),
    ):
        stubs = {"echo": stub_for(echo_socket), "fatia": stub_for(fatia_socket)}
        cells = []
        for workload in workloads(ids):
            samples = interleaved(workload, stubs, calls=args.calls, warmup=args.warmup, per_round=args.round)
            cells.append(Cell.of(workload.name, samples))

    rounds = max(1, args.calls // args.round)
    print(
        f"fatia run, sim:a100-40gb:{GPUS}, {REPLICAS} replicas/GPU = {len(ids)} devices; "
        f"{rounds * args.round} calls per cell after {args.warmup} warm-up, "
        f"{rounds} interleaved rounds of {args.round}"
    )
    print(
        f"{'RPC':<42} {'echo p50':>9} {'echo p99':>9} {'fatia p50':>10} {'fatia p99':>10} "
        f"{'p50 x':>6} {'p99 x':>6} {'rounds p10-p90':>15}"
    )
    for c in cells:
        print(
            f"{c.name:<42} {c.echo_p50:>7.0f}us {c.echo_p99:>7.0f}us {c.fatia_p50:>8.0f}us "
            f"{c.fatia_p99:>8.0f}us {c.ratio:>6.2f} {c.fatia_p99 / c.echo_p99:>6.2f} "
            f"{c.round_ratio_p10:>8.2f}-{c.round_ratio_p90:.2f}"
        )
    allocate_line, allocate_ok = verdict("allocate", cells[0].ratio, ALLOCATE_TARGET)
    preferred_line, preferred_ok = verdict("preferred", max(c.ratio for c in cells[1:]), PREFERRED_TARGET)
    print(allocate_line)
    print(preferred_line)
    return 1 if args.check and not (allocate_ok and preferred_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
