"""``fatia run``: wires NVML, the plugin manager, the agent and the config source.

The daemon owns no logic of its own; it builds the pieces, passes each its
collaborators, starts them in the right order (serve the kubelet first, then
read the config) and stops them in reverse on SIGTERM (:mod:`.supervisor`). The agent
runs on the main thread; :meth:`Daemon.stop` ends it at once, whatever it waits for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from deviceplugin.agent.loop import Agent
from deviceplugin.cli.supervisor import Hooks, Supervisor
from deviceplugin.config.source import ConfigSink, ConfigText, FileConfigSource
from deviceplugin.health.ledger import no_event
from deviceplugin.health.monitor import HealthMonitor
from deviceplugin.kubelet.allocation import host_control_devices
from deviceplugin.kubelet.manager import PluginManager
from deviceplugin.kubelet.podresources import PodResourcesClient
from deviceplugin.telemetry.metrics import Metrics, MetricsServer
from mig.nvml import open_nvml
from mig.sim.state import SIM_PROC_ROOT

if TYPE_CHECKING:
    from deviceplugin.cluster.node import NodeReporter

log = structlog.get_logger("fatia.daemon")

DEFAULT_NAMESPACE = "fatia-system"


@dataclass(frozen=True)
class DaemonOptions:
    node_name: str
    plugin_dir: Path
    pod_resources_socket: Path
    config: Path | None
    kubeconfig: str | None
    namespace: str | None
    nvml: str
    state_dir: Path
    metrics_addr: str | None
    mode: str = "device-plugin"  # or "dra" (deviceplugin.dra.run)
    kubelet_dir: Path = Path("/var/lib/kubelet")  # DRA mode: plugins_registry/ and plugins/
    cdi_dir: Path = Path("/var/run/cdi")  # DRA mode: CDI specs of prepared claims

    @property
    def proc_root(self) -> Path:
        """Where pids are looked up: the simulator's fake /proc under ``sim:``, else /proc."""
        return self.state_dir / SIM_PROC_ROOT if self.nvml.startswith("sim:") else Path("/proc")


def serve_metrics(
    services: Supervisor, o: DaemonOptions, metrics: Metrics, *, ready: Callable[[], tuple[bool, str]]
) -> None:
    """Start the metrics (and readiness) server when ``--metrics-addr`` asks for one."""
    if o.metrics_addr:
        services.start("metrics", MetricsServer(o.metrics_addr, metrics, ready=ready))


def log_started(o: DaemonOptions, **fields: object) -> None:
    """The one "started" line, with the fields every mode logs and the mode's own."""
    log.info(
        "started",
        node=o.node_name,
        nvml=o.nvml,
        config=str(o.config) if o.config else None,
        **fields,
    )


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self._stop = threading.Event()
        self._agent: Agent | None = None

    def api_mode(self) -> bool:
        """No ``--config``, and a kubeconfig or an in-cluster service account to talk with."""
        o = self.options
        return o.config is None and bool(o.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"))

    def stop(self) -> None:
        """Ask :meth:`run` to return (from a signal handler or another thread)."""
        self._stop.set()
        if self._agent is not None:
            self._agent.stop()

    def run(self) -> None:
        if self.options.mode == "dra":  # a DRA driver instead of device plugins (deviceplugin.dra)
            from deviceplugin.dra.run import run_driver

            run_driver(self.options, stop=self._stop)
            return
        o = self.options
        o.state_dir.mkdir(parents=True, exist_ok=True)
        nvml = open_nvml(o.nvml, state_dir=o.state_dir, node_name=o.node_name)
        metrics = Metrics()
        manager = PluginManager(
            plugin_dir=o.plugin_dir,
            host_device_nodes=host_control_devices() if o.nvml == "real" else (),
            on_allocate=metrics.allocated,
            on_register=lambda resource: metrics.registrations.labels(resource).inc(),
        )
        services = Supervisor()
        try:
            reporter, source = self._cluster(services)
            sink = _Forward()
            health = HealthMonitor(
                nvml,
                metrics=metrics,
                on_change=sink.health_changed,
                event=reporter.event if reporter is not None else no_event,
            )
            agent = Agent(
                nvml=nvml,
                manager=manager,
                state_dir=o.state_dir,
                pod_resources=PodResourcesClient(o.pod_resources_socket),
                metrics=metrics,
                reporter=reporter,
                health=health,
                proc_root=o.proc_root,
            )
            sink.agent = self._agent = agent
            if self._stop.is_set():
                return
            serve_metrics(services, o, metrics, ready=agent.ready)
            services.start("plugins", manager)
            log_started(
                o, plugin_dir=str(o.plugin_dir), api_mode=reporter is not None, instance=manager.instance
            )
            services.start("health", health)
            if source is not None:
                services.start("config", Hooks(lambda: source.start(agent), source.stop))
            else:
                agent.config_changed(ConfigText(None, "defaults (no --config, no Kubernetes API)"))
            agent.run()
        finally:
            log.info("stopping")
            services.stop()

    def _cluster(self, services: Supervisor) -> tuple[NodeReporter | None, ConfigSource | None]:
        """The config source, and in API mode the Node reporter (started)."""
        o = self.options
        if o.config is not None:
            return None, FileConfigSource(o.config)
        if not self.api_mode():
            return None, None
        from deviceplugin.cluster.configmap import ConfigMapSource
        from deviceplugin.cluster.credentials import api
        from deviceplugin.cluster.node import NodeReporter

        client = api(o.kubeconfig)
        source = ConfigMapSource(client, namespace=o.namespace or DEFAULT_NAMESPACE, node_name=o.node_name)
        reporter = NodeReporter(client, node_name=o.node_name)
        services.start("node-reporter", reporter)
        return reporter, source


class ConfigSource(Protocol):
    def start(self, sink: ConfigSink) -> None: ...

    def stop(self) -> None: ...


class _Forward:
    """Lets the health monitor, built before the agent, report to it."""

    agent: Agent | None = None

    def health_changed(self, unhealthy: frozenset[str]) -> None:
        if self.agent is not None:
            self.agent.health_changed(unhealthy)
