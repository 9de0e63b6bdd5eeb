"""``fatia run --mode dra``: the DRA driver and the services around it, wired and run.

:func:`run_driver` builds what DRA mode needs and runs until asked to stop, each piece a
service of one :class:`~deviceplugin.cli.supervisor.Supervisor`, started in this order:
the Node reporter, the slice publisher (:mod:`deviceplugin.cluster.resourceslices`), the
metrics endpoint (its readiness is :meth:`.DraDriver.ready`), the
:class:`~.driver.DraDriver` (which serves the kubelet and keeps the published pool equal
to what the GPUs and the config say), the health monitor (its changes become the driver's
taints), and the config source (a ``--config`` file or the per-node ConfigMap, read as the
pool). Each runs on threads of its own; the caller's thread only waits for ``stop``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.driver import DraDriver, DriverPaths
from mig.errors import FatiaError

if TYPE_CHECKING:
    from deviceplugin.cli.daemon import DaemonOptions

log = structlog.get_logger("fatia.dra")


def run_driver(
    options: DaemonOptions, *, stop: threading.Event, on_started: Callable[[DraDriver], None] | None = None
) -> None:
    """``fatia run --mode dra`` until ``stop`` is set (the daemon's SIGTERM handler sets it)."""
    import os

    from deviceplugin.cli.daemon import log_started, serve_metrics
    from deviceplugin.cli.supervisor import Hooks, Supervisor
    from deviceplugin.cluster.claims import ResourceClaimReader
    from deviceplugin.cluster.configmap import ConfigMapSource
    from deviceplugin.cluster.credentials import api
    from deviceplugin.cluster.node import NodeReporter
    from deviceplugin.cluster.resourceslices import SlicePublisher
    from deviceplugin.config.source import FileConfigSource
    from deviceplugin.health.monitor import HealthMonitor
    from deviceplugin.telemetry.metrics import Metrics
    from mig.nvml import open_nvml

    o = options
    if not (o.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST")):
        raise FatiaError(
            "DRA mode needs the Kubernetes API: --kubeconfig, or run in a pod with a service account"
        )
    o.state_dir.mkdir(parents=True, exist_ok=True)
    nvml = open_nvml(o.nvml, state_dir=o.state_dir, node_name=o.node_name)
    client = api(o.kubeconfig)
    metrics = Metrics()
    services = Supervisor()
    try:
        reporter = NodeReporter(client, node_name=o.node_name)
        services.start("node-reporter", reporter)
        publisher = SlicePublisher(client, node_name=o.node_name, driver=DRIVER_NAME)
        services.start("slice-publisher", publisher)
        driver = DraDriver(
            nvml=nvml,
            node_name=o.node_name,
            paths=DriverPaths(
                state_dir=o.state_dir,
                kubelet_dir=o.kubelet_dir,
                cdi_dir=o.cdi_dir,
                proc_root=o.proc_root,
            ),
            claims=ResourceClaimReader(client),
            publisher=publisher,
            reporter=reporter,
            on_call=metrics.dra_call,
        )
        health = HealthMonitor(nvml, metrics=metrics, on_change=driver.health_changed, event=reporter.event)
        driver.health = health
        if stop.is_set():
            return
        serve_metrics(services, o, metrics, ready=driver.ready)
        services.start("dra", driver)
        log_started(o, mode="dra", kubelet_dir=str(o.kubelet_dir), cdi_dir=str(o.cdi_dir))
        services.start("health", health)
        source = (
            FileConfigSource(o.config)
            if o.config is not None
            else ConfigMapSource(client, namespace=o.namespace or "fatia-system", node_name=o.node_name)
        )
        services.start("config", Hooks(lambda: source.start(driver), source.stop))
        if on_started is not None:
            on_started(driver)
        while not stop.wait(3600):
            pass
    finally:
        log.info("stopping")
        services.stop()
