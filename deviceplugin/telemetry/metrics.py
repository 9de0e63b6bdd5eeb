"""Prometheus metrics and the health endpoints, on ``--metrics-addr``.

All metrics live in one :class:`Metrics` object with its own registry (passed
to whoever records, never global). :func:`serve` exposes ``/metrics``,
``/healthz`` (the process answers) and ``/readyz`` (registered with the kubelet
and the config applied) on one port, for Prometheus and the DaemonSet's probes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONFIG_STATES = ("pending", "waiting", "applying", "success", "failed")
ALLOCATE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)
RECONFIGURE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)
DRA_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        # What is offered, and Allocate (the plugin servers).
        self.devices = gauge(
            "fatia_devices", "Advertised devices by resource and health", ["resource", "health"]
        )
        self.registrations = counter(
            "fatia_kubelet_registrations_total", "Registrations with the kubelet", ["resource"]
        )
        self.allocate_seconds = histogram(
            "fatia_allocate_duration_seconds",
            "Allocate handling time",
            ["resource"],
            buckets=ALLOCATE_BUCKETS,
        )
        self.allocations = counter(
            "fatia_allocations_total", "Allocate calls by resource and outcome", ["resource", "outcome"]
        )
        self.allocated_devices = counter(
            "fatia_allocated_devices_total", "Devices handed out by Allocate", ["resource"]
        )
        self._allocate_series: dict[tuple[str, bool], tuple[Counter, Counter, Histogram]] = {}
        # Configs applied (the agent) and what their MIG steps did (the reconciler).
        self.config_state = gauge("fatia_config_state", "1 for the current config state", ["state"])
        self.reconfigurations = counter(
            "fatia_reconfigurations_total", "Config applications by outcome", ["outcome"]
        )
        self.reconfigure_seconds = histogram(
            "fatia_reconfigure_duration_seconds",
            "Time to apply a config",
            ["outcome"],
            buckets=RECONFIGURE_BUCKETS,
        )
        self.gpu_instances = counter(
            "fatia_gpu_instances_total", "GPU instances created and destroyed", ["action"]
        )
        # NVML and health (the health loop, and every NVML caller).
        self.nvml_errors = counter("fatia_nvml_errors_total", "NVML errors by call", ["call", "error"])
        self.xids = counter("fatia_xid_events_total", "XID events by GPU and code", ["gpu", "xid"])
        self.health_loop_failures = counter(
            "fatia_health_loop_failures_total",
            "Health loop failures: NVML refused the event set (nvml) or a bug (crash)",
            ["reason"],
        )
        # DRA mode (the kubelet plugin).
        self.dra_claims = counter(
            "fatia_dra_claims_total", "DRA claims prepared and unprepared, by outcome", ["action", "outcome"]
        )
        self.dra_call_seconds = histogram(
            "fatia_dra_call_duration_seconds",
            "NodePrepareResources and NodeUnprepareResources handling time",
            ["action"],
            buckets=DRA_CALL_BUCKETS,
        )

    def dra_call(self, action: str, succeeded: int, failed: int, seconds: float) -> None:
        self.dra_claims.labels(action, "success").inc(succeeded)
        self.dra_claims.labels(action, "error").inc(failed)
        self.dra_call_seconds.labels(action).observe(seconds)

    def allocated(self, resource: str, count: int, seconds: float, ok: bool) -> None:
        """One Allocate call: on the kubelet's path, so its labelled series are looked up once."""
        series = self._allocate_series.get((resource, ok))
        if series is None:  # threads may race here; labels() gives them the same series
            series = (
                self.allocations.labels(resource, "success" if ok else "rejected"),
                self.allocated_devices.labels(resource),
                self.allocate_seconds.labels(resource),
            )
            self._allocate_series[(resource, ok)] = series
        calls, devices, duration = series
        calls.inc()
        devices.inc(count)
        duration.observe(seconds)

    def reconfigured(self, outcome: str, seconds: float) -> None:
        self.reconfigurations.labels(outcome).inc()
        self.reconfigure_seconds.labels(outcome).observe(seconds)

    def nvml_error(self, call: str, error: BaseException) -> None:
        self.nvml_errors.labels(call, type(error).__name__).inc()

    def set_devices(self, counts: dict[tuple[str, str], int]) -> None:
        self.devices.clear()
        for (resource, health), n in counts.items():
            self.devices.labels(resource, health).set(n)

    def set_config_state(self, state: str) -> None:
        for name in CONFIG_STATES:
            self.config_state.labels(name).set(1 if name == state else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """/metrics, /healthz and /readyz on ``HOST:PORT``, served by a daemon thread."""

    def __init__(self, address: str, metrics: Metrics, *, ready: Callable[[], tuple[bool, str]]) -> None:
        self._address, self._metrics, self._ready = address, metrics, ready
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self._server = serve(self._address, self._metrics, ready=self._ready)

    def stop(self) -> None:
        # shutdown() waits for serve_forever's next poll (up to 0.5 s): let a daemon thread
        # wait for it, so that stopping does not.
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, name="metrics-stop", daemon=True).start()


def serve(address: str, metrics: Metrics, *, ready: Callable[[], tuple[bool, str]]) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on ``HOST:PORT`` in a daemon thread."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._send(200, b"ok\n")
            elif self.path == "/readyz":
                ok, why = ready()
                self._send(200 if ok else 503, f"{why}\n".encode())
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
