"""``fatia run --mode dra``: the DRA driver's pieces, wired as services.

:func:`run_driver` builds what DRA mode needs and runs until asked to stop: the Node
reporter, the slice publisher (:mod:`deviceplugin.cluster.resourceslices`), the DRA gRPC
service and the plugin-watcher registration, the health monitor, the config source (a
``--config`` file or the per-node ConfigMap, read as the pool), and :class:`DraDriver`,
which keeps the published pool equal to what the GPUs and the config say.

:class:`DraDriver` reconciles on every change (config, health, a prepare or unprepare)
and every :data:`REFRESH_S` seconds (a GPU lost without an event):

1. read the GPUs; destroy the kept instances (:mod:`.reuse`) the pool no longer offers, or
   all of them under ``dra: {reuse: never}``; switch MIG on for GPUs the pool offers as
   partitions (and off for GPUs offered whole that hold no instance), through the apply
   engine, leaving a GPU whose switch waits (a reset on A100) unoffered until it is done;
2. build the pool's devices (instances named by the checkpoint, claimed or kept, are
   fatia's own, any other is left alone and never overlapped) and their taints from health
   (an unhealthy GPU taints all its devices, an unhealthy MIG device its own) with the
   effect ``dra.taintEffect`` says: ``NoSchedule``, or ``NoExecute``, on which the
   cluster's device-taint eviction controller also evicts the pods using them;
3. hand the slices to the publisher (once the kubelet has registered the driver: devices
   published earlier would draw pods the kubelet cannot prepare yet, and they would wait
   out the kubelet's retry backoff), the health to the DRAResourceHealth stream, and the
   state to ``fatia status`` and the Node's annotation (``mode: dra``; the message
   names the kept instances, and each one destroyed is an Event).

A config that cannot be used keeps the pool it had and says so (status failed, Event).
Prepares are served from the start (an unknown device is refused until it is published);
at start an interrupted MIG apply is recovered first (:meth:`Reconciler.recover`), and the
time-slice intervals of prepared claims are set again (a reboot forgets them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from deviceplugin.agent.status import AgentStatus, GpuStatus, Phase, write_status
from deviceplugin.config.schema import Config, ReusePolicy, parse_config
from deviceplugin.config.source import ConfigText
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.cdi import CdiWriter
from deviceplugin.dra.checkpoint import Checkpoint
from deviceplugin.dra.plan import cuda_version
from deviceplugin.dra.pool import PoolPlan, plan_pool
from deviceplugin.dra.prepare import ClaimReader, Preparer
from deviceplugin.dra.registration import DRA_SERVICE, HEALTH_SERVICE, RegistrationServer
from deviceplugin.dra.reuse import unwanted
from deviceplugin.dra.service import DraServer, HealthBoard, OnCall
from deviceplugin.dra.slices import PoolModel, pool_model, resource_slices, unhealthy_taints
from mig.apply import GpuTarget, Reconciler
from mig.errors import ConfigError, FatiaError
from mig.inventory import Gpu, Inventory, InventoryReader
from mig.nvml import NVML_FAILURES, Nvml
from mig.timeslice import timeslicer_for

if TYPE_CHECKING:
    from deviceplugin.cli.daemon import DaemonOptions
    from deviceplugin.health.monitor import HealthMonitor

log = structlog.get_logger("fatia.dra")

REFRESH_S = 5.0
RESOURCE = DRIVER_NAME  # what `fatia status` lists the published devices under


class Publisher(Protocol):
    def publish(self, slices: list[dict[str, object]]) -> None: ...


class Reporter(Protocol):
    def status(self, status: AgentStatus) -> None: ...

    def event(self, kind: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class DriverPaths:
    state_dir: Path
    kubelet_dir: Path
    cdi_dir: Path
    proc_root: Path = Path("/proc")

    @property
    def plugin_socket(self) -> Path:
        return self.kubelet_dir / "plugins" / DRIVER_NAME / "dra.sock"

    @property
    def registry_dir(self) -> Path:
        return self.kubelet_dir / "plugins_registry"


class DraDriver:
    """Keeps the node's pool published and serves the kubelet. Its own thread reconciles."""

    def __init__(
        self,
        *,
        nvml: Nvml,
        node_name: str,
        paths: DriverPaths,
        claims: ClaimReader,
        publisher: Publisher,
        reporter: Reporter | None = None,
        refresh_s: float = REFRESH_S,
        on_call: OnCall | None = None,
    ) -> None:
        self.node_name = node_name
        self.paths = paths
        self._nvml = nvml
        self._publisher = publisher
        self._reporter = reporter
        self._refresh_s = refresh_s
        self._reader = InventoryReader(nvml)
        self.reconciler = Reconciler(nvml, state_dir=paths.state_dir, reader=InventoryReader(nvml))
        self.checkpoint = Checkpoint(paths.state_dir)
        self.board = HealthBoard(node_name)
        self.preparer = Preparer(
            reconciler=self.reconciler,
            reader=InventoryReader(nvml),
            checkpoint=self.checkpoint,
            cdi=CdiWriter(paths.cdi_dir),
            claims=claims,
            node_name=node_name,
            pool=lambda: self._model,
            timeslicer=timeslicer_for(nvml),
            reuse=lambda: self._config.dra.reuse if self._config is not None else ReusePolicy.NEVER,
            proc_root=paths.proc_root,
            on_change=self.refresh,
        )
        self.server = DraServer(
            socket_path=paths.plugin_socket, handler=self.preparer, health=self.board, on_call=on_call
        )
        self.registration = RegistrationServer(
            registry_dir=paths.registry_dir,
            driver=DRIVER_NAME,
            endpoint=paths.plugin_socket,
            versions=(DRA_SERVICE, HEALTH_SERVICE),
            on_status=lambda registered: self.refresh(),
        )
        self.health: HealthMonitor | None = None
        self._model = PoolModel()
        self._config: Config | None = None
        self._config_source: str | None = None
        self._config_error: str | None = None
        self._unhealthy: frozenset[str] = frozenset()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dra-driver", daemon=True)
        self.reconciled = threading.Event()  # set after each reconcile (tests)
        self.status = AgentStatus(mode="dra", message="starting")

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        try:
            message = self.reconciler.recover()
        except FatiaError as exc:
            message = str(exc)
        if message:
            log.warning("mig_recovery", message=message)
        self.preparer.restore_intervals()
        self.server.start()
        self.registration.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.registration.stop()
        self.server.stop()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def ready(self) -> tuple[bool, str]:
        if not self.registration.registered.is_set():
            return False, "not registered with the kubelet yet"
        synced = getattr(self._publisher, "synced", None)
        if synced is not None and not synced.is_set():
            return False, "ResourceSlices not published yet"
        return True, "registered and published"

    # -- inputs (any thread) ---------------------------------------------------------

    def config_changed(self, config: ConfigText) -> None:
        try:
            if config.error is not None:
                raise ConfigError(f"{config.origin}: {config.error}")
            parsed = parse_config(config.text or "", source=config.origin)
        except ConfigError as exc:
            self._config_error = str(exc)
            log.error("config_failed", source=config.origin, error=str(exc))
            self._event("Warning", "InvalidConfig", str(exc))
        else:
            self._config, self._config_source, self._config_error = parsed, config.origin, None
        self.refresh()

    def health_changed(self, unhealthy: frozenset[str]) -> None:
        self._unhealthy = unhealthy
        self.refresh()

    def refresh(self) -> None:
        self._wake.set()

    @property
    def model(self) -> PoolModel:
        return self._model

    # -- the driver's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._refresh_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception as exc:  # a bug or an NVML outage: report, keep serving, try again
                log.exception("dra_reconcile_failed")
                self._report(Phase.FAILED, f"reconciling the pool failed: {exc}", None, ())
            self.reconciled.set()

    def _reconcile(self) -> None:
        try:
            inventory = self._reader.read()
        except NVML_FAILURES as exc:
            self._report(Phase.FAILED, f"reading the GPUs failed: {exc}", None, ())
            return
        if self.health is not None:
            self.health.set_inventory(inventory)
        config = self._config
        if config is None:
            self._report(Phase.PENDING, "waiting for the pool config", inventory, ())
            return
        if self.health is not None:
            self.health.set_policy(config.health)
        plan = plan_pool(inventory, config)
        destroyed, held_back = self.preparer.release_kept(lambda kept: unwanted(kept, plan, config.dra.reuse))
        for line in destroyed:
            self._event("Normal", "KeptInstanceDestroyed", line)
        inventory, waiting = self._switch_modes(inventory, plan)
        waiting = (*held_back, *waiting)
        ready = PoolPlan(tuple(o for o in plan.offers if _ready(inventory, o.index, o.whole)), plan.errors)
        model = pool_model(
            inventory, ready, owned=self.checkpoint.owned(), cuda_version=cuda_version(self._nvml)
        )
        self._model = model
        taints = unhealthy_taints(model, inventory, self._unhealthy, effect=config.dra.taint_effect)
        self.board.update({d.name: ("unhealthy" if d.name in taints else None) for d in model.devices})
        if not self.registration.registered.is_set():
            # Published devices would draw pods the kubelet cannot prepare yet.
            self._report(Phase.PENDING, "waiting for the kubelet to register the DRA driver", inventory, ())
            return
        self._publisher.publish(resource_slices(model, node_name=self.node_name, generation=0, taints=taints))
        problems = [*plan.errors, *waiting]
        if self._config_error is not None:
            problems.insert(0, f"the latest config is not used: {self._config_error}")
        gpus = len({d.gpu_index for d in model.devices})
        summary = f"{len(model.devices)} devices on {gpus} GPUs published to the scheduler"
        if kept := self.checkpoint.kept():
            summary += f"; kept for reuse: {', '.join(f'{k.device} ({k.mig_uuid})' for k in kept)}"
        phase = (
            Phase.FAILED if self._config_error or plan.errors else Phase.WAITING if waiting else Phase.IDLE
        )
        self._report(phase, "; ".join([summary, *problems]), inventory, waiting, devices=len(model.devices))

    def _switch_modes(self, inventory: Inventory, plan: PoolPlan) -> tuple[Inventory, tuple[str, ...]]:
        """MIG on for GPUs offered as partitions, off for GPUs offered whole (if empty)."""
        targets, waiting = [], []
        for offer in plan.offers:
            gpu = inventory.gpu(offer.index)
            if not offer.whole and not gpu.mig_enabled:
                targets.append(GpuTarget(gpu.index, gpu.uuid, True, gpu.layout))
            elif offer.whole and gpu.mig_enabled:
                if gpu.gpu_instances:
                    waiting.append(
                        f"GPU {gpu.index}: offered whole once its MIG instances are gone "
                        f"({', '.join(str(gi.placement) for gi in gpu.gpu_instances)})"
                    )
                else:
                    targets.append(GpuTarget(gpu.index, gpu.uuid, False))
        if not targets:
            return inventory, tuple(waiting)
        try:
            result = self.reconciler.apply(targets)
        except FatiaError as exc:
            return inventory, (*waiting, f"switching MIG mode failed: {exc}")
        waiting += list(result.waiting)
        waiting += [f"GPU {i}: the MIG mode change waits for a GPU reset" for i in result.reset_required]
        return result.inventory, tuple(waiting)

    # -- reporting ----------------------------------------------------------------------

    def _report(
        self,
        phase: Phase,
        message: str,
        inventory: Inventory | None,
        waiting: tuple[str, ...],
        *,
        devices: int = 0,
    ) -> None:
        previous = self.status
        status = replace(
            previous,
            phase=phase,
            message=message,
            applied_config=self._config.digest if self._config else None,
            desired_config=self._config.digest if self._config else None,
            config_source=self._config_source,
            gpus=[_gpu_status(g) for g in inventory.gpus] if inventory is not None else previous.gpus,
            resources={RESOURCE: devices},
            unhealthy=sorted(self._unhealthy),
            waiting=list(waiting),
        )
        self.status = status
        same = (previous.phase, previous.message, previous.gpus, previous.unhealthy) == (
            status.phase,
            status.message,
            status.gpus,
            status.unhealthy,
        )
        if same and previous.resources == status.resources:
            return
        write_status(self.paths.state_dir, status)
        if self._reporter is not None:
            self._reporter.status(status)
        if phase != previous.phase:
            log.info("phase", phase=str(phase), message=message)

    def _event(self, kind: str, reason: str, message: str) -> None:
        if self._reporter is not None:
            self._reporter.event(kind, reason, message)


def _ready(inventory: Inventory, index: int, whole: bool) -> bool:
    gpu = inventory.gpu(index)
    return gpu.usable and gpu.mig_enabled != whole


def _gpu_status(gpu: Gpu) -> GpuStatus:
    if gpu.lost:
        mig = "lost"
    elif not gpu.mig_capable:
        mig = "n/a"
    elif gpu.mig_enabled != gpu.mig_pending:
        mig = "pending enable" if gpu.mig_pending else "pending disable"
    else:
        mig = "enabled" if gpu.mig_enabled else "disabled"
    return GpuStatus(
        index=gpu.index,
        uuid=gpu.uuid,
        product=gpu.product,
        mig=mig,
        layout=[str(gi.placement) for gi in gpu.gpu_instances],
        memory_mib=gpu.memory_mib,
    )


def run_driver(
    options: DaemonOptions, *, stop: threading.Event, on_started: Callable[[DraDriver], None] | None = None
) -> None:
    """``fatia run --mode dra`` until ``stop`` is set (the daemon's SIGTERM handler sets it)."""
    import os

    from deviceplugin.cli.daemon import log_started, serve_metrics
    from deviceplugin.cli.supervisor import Hooks, Supervisor
    from deviceplugin.cluster.claims import ResourceClaimReader
    from deviceplugin.cluster.client import api_client
    from deviceplugin.cluster.configmap import ConfigMapSource
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
    api = api_client(o.kubeconfig)
    metrics = Metrics()
    services = Supervisor()
    try:
        reporter = NodeReporter(api, node_name=o.node_name)
        services.start("node-reporter", reporter)
        publisher = SlicePublisher(api, node_name=o.node_name, driver=DRIVER_NAME)
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
            claims=ResourceClaimReader(api),
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
            else ConfigMapSource(api, namespace=o.namespace or "fatia-system", node_name=o.node_name)
        )
        services.start("config", Hooks(lambda: source.start(driver), source.stop))
        if on_started is not None:
            on_started(driver)
        while not stop.wait(3600):
            pass
    finally:
        log.info("stopping")
        services.stop()
