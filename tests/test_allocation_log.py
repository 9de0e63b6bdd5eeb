"""Specification of the ``allocated`` log line, which a plugin server writes off Allocate's thread.

Allocate queues the line; a writer thread of the server's own writes it a moment
later (in batches), and stopping the server writes whatever is still queued.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import grpc
from conftest import wait_until

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.kubelet.server import AllocationLog, PluginServer
from deviceplugin.plan.resources import Device, Resource

GPU = "nvidia.com/gpu"


def replicas(count: int) -> Resource:
    return Resource(
        name=GPU,
        devices=tuple(Device(id=f"GPU-0::{n}", uuid="GPU-0", gpu=0, replica=n) for n in range(count)),
    )


def allocate(server: PluginServer, *ids: str) -> api_pb2.AllocateResponse:
    with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))]
        )
        response: api_pb2.AllocateResponse = api_pb2_grpc.DevicePluginStub(channel).Allocate(
            request, timeout=5
        )
        return response


def allocated(captured: list[MutableMapping[str, Any]]) -> list[Any]:
    return [entry["devices"] for entry in captured if entry["event"] == "allocated"]


def request_for(*ids: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))]
    )


def test_each_allocate_gets_its_line_soon_after_in_order(
    sockdir: Path, _quiet_structlog: list[MutableMapping[str, Any]]
) -> None:
    server = PluginServer(replicas(4), plugin_dir=sockdir, socket_name="fatia-log.sock")
    server.serve()
    try:
        allocate(server, "GPU-0::0")
        allocate(server, "GPU-0::1", "GPU-0::2")

        assert wait_until(lambda: len(allocated(_quiet_structlog)) == 2)
        assert allocated(_quiet_structlog) == [[["GPU-0::0"]], [["GPU-0::1", "GPU-0::2"]]]
    finally:
        server.stop()


def test_stopping_the_server_writes_the_queued_lines(
    sockdir: Path, _quiet_structlog: list[MutableMapping[str, Any]]
) -> None:
    server = PluginServer(replicas(2), plugin_dir=sockdir, socket_name="fatia-log.sock")
    server.serve()
    allocate(server, "GPU-0::1")

    server.stop()

    assert allocated(_quiet_structlog) == [[["GPU-0::1"]]]


def test_a_closed_log_writes_at_once(_quiet_structlog: list[MutableMapping[str, Any]]) -> None:
    log = AllocationLog(batch_s=60)  # a writer thread would wait a minute
    log.record(GPU, request_for("GPU-0::0"))
    log.close()

    log.record(GPU, request_for("GPU-0::1"))

    assert allocated(_quiet_structlog) == [[["GPU-0::0"]], [["GPU-0::1"]]]
