"""The DRA driver: the node's pool kept published, the kubelet served.

:class:`DraDriver` holds DRA mode's pieces (the DRA gRPC service and the plugin-watcher
registration, the :class:`~.prepare.Preparer` behind them, the checkpoint, the health
board) and reconciles the published pool (:mod:`.reconcile`), on its own thread, on every
change (config, health, the kubelet's registration, a prepare or unprepare) and every
:data:`REFRESH_S` seconds (a GPU lost without an event). Each pass's pool is stored before
its slices go to the publisher, its health to the DRAResourceHealth stream (the
:class:`~.service.HealthBoard`) and its status to ``fatia status`` and the Node's
annotation (:mod:`.report`), so that a published device is always one a prepare finds.

The inputs (:meth:`DraDriver.config_changed` from the config source's thread,
:meth:`DraDriver.health_changed` from the health monitor's) only store a value and wake the
driver's thread, which alone builds the pool; the gRPC threads read the pool it last built
(:attr:`DraDriver.model`, replaced whole). A config that cannot be used keeps the pool it
had and says so (status failed, Event). Prepares are served from the start (an unknown
device is refused until it is published); at start an interrupted MIG apply is recovered
first (:meth:`Reconciler.recover`), and the time-slice intervals of prepared claims are set
again (a reboot forgets them). :mod:`.run` wires the driver into ``fatia run --mode dra``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from deviceplugin.agent.status import AgentStatus, Phase
from deviceplugin.config.schema import Config, ReusePolicy, parse_config
from deviceplugin.config.source import ConfigText
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.allocation import ClaimReader
from deviceplugin.dra.cdi import CdiWriter
from deviceplugin.dra.checkpoint import Checkpoint
from deviceplugin.dra.devices import PoolModel
from deviceplugin.dra.prepare import Preparer
from deviceplugin.dra.reconcile import Parts, PoolPass, reconcile_pool
from deviceplugin.dra.registration import DRA_SERVICE, HEALTH_SERVICE, RegistrationServer
from deviceplugin.dra.report import DriverReport, Reporter
from deviceplugin.dra.service import DraServer, HealthBoard, OnCall
from mig.apply import Reconciler
from mig.errors import ConfigError, FatiaError
from mig.inventory import InventoryReader
from mig.nvml import Nvml
from mig.timeslice import timeslicer_for

if TYPE_CHECKING:
    from deviceplugin.health.monitor import HealthMonitor

log = structlog.get_logger("fatia.dra")

REFRESH_S = 5.0


class Publisher(Protocol):
    def publish(self, slices: list[dict[str, object]]) -> None: ...


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
        on_call: OnCall | None = None,
    ) -> None:
        self._report = DriverReport(state_dir=paths.state_dir, reporter=reporter)
        self.node_name = node_name
        self.paths = paths
        self._publisher = publisher
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
        self._parts = Parts(
            nvml=nvml,
            reader=InventoryReader(nvml),
            reconciler=self.reconciler,
            checkpoint=self.checkpoint,
            preparer=self.preparer,
            node_name=node_name,
            registered=self.registration.registered.is_set,
            event=self._report.event,
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
            self._report.event("Warning", "InvalidConfig", str(exc))
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

    @property
    def status(self) -> AgentStatus:
        return self._report.status

    # -- the driver's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(REFRESH_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception as exc:  # a bug or an NVML outage: report, keep serving, try again
                log.exception("dra_reconcile_failed")
                self._status(PoolPass(Phase.FAILED, f"reconciling the pool failed: {exc}", None))
            self.reconciled.set()

    def _reconcile(self) -> None:
        found = reconcile_pool(
            self._parts,
            config=self._config,
            config_error=self._config_error,
            unhealthy=self._unhealthy,
            health=self.health,
        )
        if found.model is not None:
            self._model = found.model
        if found.health is not None:
            self.board.update(found.health)
        if found.slices is not None:
            self._publisher.publish(found.slices)
        self._status(found)

    def _status(self, found: PoolPass) -> None:
        """Report a pass, with the config in effect and the health as they are now."""
        self._report.update(
            found.phase,
            found.message,
            found.inventory,
            found.waiting,
            config=self._config,
            config_source=self._config_source,
            unhealthy=self._unhealthy,
            devices=found.devices,
        )
