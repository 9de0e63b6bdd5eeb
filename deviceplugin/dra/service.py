"""The DRA gRPC service the kubelet calls, on ``<kubelet-dir>/plugins/<driver>/dra.sock``.

A thin shell over :class:`~deviceplugin.dra.prepare.Preparer`: requests become
:class:`~deviceplugin.dra.allocation.ClaimRef` lists, outcomes become the kubelet's messages
(per claim UID: the devices with their CDI ids, or an error). Nothing here fails a whole
call: a claim that cannot be prepared carries its error and the others are served.

Each call is reported to an optional ``on_call(action, succeeded, failed, seconds)``
(the daemon's metrics): per call its duration, per claim its outcome.

The same socket serves the optional ``v1.DRAResourceHealth`` stream from a
:class:`HealthBoard`: every device of the pool with its health, sent when it changes and
at least every :data:`HEALTH_RESEND_S` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Protocol

import grpc
import structlog

from deviceplugin.api.dra.v1 import api_pb2, api_pb2_grpc
from deviceplugin.api.drahealth.v1 import api_pb2 as health_pb2
from deviceplugin.api.drahealth.v1 import api_pb2_grpc as health_grpc
from deviceplugin.dra.allocation import ClaimRef
from deviceplugin.dra.prepare import Outcome
from deviceplugin.kubelet.sockets import serve_at

log = structlog.get_logger("fatia.dra")

HEALTH_RESEND_S = 10.0
HEALTH_TIMEOUT_S = 60  # what the kubelet may assume a report stays true for


OnCall = Callable[[str, int, int, float], None]  # action, claims succeeded, failed, seconds


class ClaimHandler(Protocol):
    def prepare(self, claims: list[ClaimRef]) -> dict[str, Outcome]: ...

    def unprepare(self, claims: list[ClaimRef]) -> dict[str, str | None]: ...


class HealthBoard:
    """The pool's devices and whether each is healthy; written by the driver, read by streams."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._changed = threading.Condition()
        self._devices: dict[str, str | None] = {}  # name -> None (healthy) or why not
        self._version = 0
        self._closed = False

    def update(self, devices: Mapping[str, str | None]) -> None:
        with self._changed:
            if dict(devices) != self._devices:
                self._devices = dict(devices)
                self._version += 1
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def snapshot(self) -> tuple[int, dict[str, str | None]]:
        with self._changed:
            return self._version, dict(self._devices)

    def wait(self, version: int, timeout: float) -> bool:
        """Until the version differs from ``version`` (True) or the time is up (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._version != version or self._closed, timeout)

    @property
    def closed(self) -> bool:
        return self._closed


def _claim_refs(claims: Iterable[api_pb2.Claim]) -> list[ClaimRef]:
    """The request's claims as the handler takes them."""
    return [ClaimRef(c.namespace, c.uid, c.name) for c in claims]


class _DraServicer(api_pb2_grpc.DRAPluginServicer):
    def __init__(self, handler: ClaimHandler, on_call: OnCall | None) -> None:
        self._handler = handler
        self._on_call = on_call

    def _report(self, action: str, errors: list[str | None], started: float) -> None:
        if self._on_call is not None:
            failed = sum(e is not None for e in errors)
            self._on_call(action, len(errors) - failed, failed, time.perf_counter() - started)

    def NodePrepareResources(
        self, request: api_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.NodePrepareResourcesResponse:
        started = time.perf_counter()
        outcomes = self._handler.prepare(_claim_refs(request.claims))
        self._report("prepare", [o.error for o in outcomes.values()], started)
        response = api_pb2.NodePrepareResourcesResponse()
        for uid, outcome in outcomes.items():
            answer = response.claims[uid]
            if outcome.error is not None:
                answer.error = outcome.error
                continue
            for device in outcome.devices:
                out = answer.devices.add(
                    request_names=list(device.request_names),
                    pool_name=device.pool,
                    device_name=device.device,
                    cdi_device_ids=list(device.cdi_ids),
                )
                if device.share_id is not None:
                    out.share_id = device.share_id
        return response

    def NodeUnprepareResources(
        self, request: api_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.NodeUnprepareResourcesResponse:
        started = time.perf_counter()
        errors = self._handler.unprepare(_claim_refs(request.claims))
        self._report("unprepare", list(errors.values()), started)
        response = api_pb2.NodeUnprepareResourcesResponse()
        for uid, error in errors.items():
            response.claims[uid].error = error or ""
        return response


class _HealthServicer(health_grpc.DRAResourceHealthServicer):
    def __init__(self, board: HealthBoard, resend_s: float) -> None:
        self._board = board
        self._resend_s = resend_s

    def NodeWatchResources(
        self, request: health_pb2.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.NodeWatchResourcesResponse]:
        while context.is_active() and not self._board.closed:
            version, devices = self._board.snapshot()
            now = int(time.time())
            yield health_pb2.NodeWatchResourcesResponse(
                devices=[
                    health_pb2.DeviceHealth(
                        device=health_pb2.DeviceIdentifier(pool_name=self._board.pool, device_name=name),
                        health=health_pb2.HEALTHY if why is None else health_pb2.UNHEALTHY,
                        last_updated_time=now,
                        health_check_timeout_seconds=HEALTH_TIMEOUT_S,
                        message=why or "",
                    )
                    for name, why in sorted(devices.items())
                ]
            )
            self._board.wait(version, self._resend_s)


class DraServer:
    """Serves the DRA plugin (and health) services on ``socket_path``."""

    def __init__(
        self,
        *,
        socket_path: Path,
        handler: ClaimHandler,
        health: HealthBoard | None = None,
        health_resend_s: float = HEALTH_RESEND_S,
        on_call: OnCall | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._handler = handler
        self._on_call = on_call
        self._health = health
        self._resend_s = health_resend_s
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="dra"),
            options=[("grpc.so_reuseport", 0)],
        )
        api_pb2_grpc.add_DRAPluginServicer_to_server(_DraServicer(self._handler, self._on_call), server)
        if self._health is not None:
            health_grpc.add_DRAResourceHealthServicer_to_server(
                _HealthServicer(self._health, self._resend_s), server
            )
        serve_at(server, self.socket_path)
        self._server = server
        log.info("dra_serving", socket=str(self.socket_path))

    def stop(self) -> None:
        if self._health is not None:
            self._health.close()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        self.socket_path.unlink(missing_ok=True)
