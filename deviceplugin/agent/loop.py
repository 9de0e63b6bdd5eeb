"""The node agent: config in, MIG layout applied, devices advertised, status out.

One thread owns every decision. Config sources, the health monitor and retry
timers only post events to its queue; the agent takes the newest config and
runs one reconciliation at a time:

    parse -> read NVML -> plan -> (withhold, check PodResources, apply) -> advertise

A config that does not parse or cannot be planned changes nothing: the layout
and the advertised devices stay as they were, and the error is reported (log,
``fatia status``, and the Node in API mode). Before anything is destroyed the
devices concerned stop being advertised and the kubelet's PodResources is asked
who holds what; held devices are never destroyed, the agent says it is
waiting and tries again with backoff.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from deviceplugin.agent.status import AgentStatus, GpuStatus, write_status
from deviceplugin.config.schema import Config, ConfigError, parse_config
from deviceplugin.config.source import ConfigText
from deviceplugin.health.monitor import HealthMonitor
from deviceplugin.kubelet.manager import PluginManager
from deviceplugin.kubelet.podresources import PodResourcesClient, PodResourcesUnavailable
from deviceplugin.plan.node import errors, plan_node, targets
from deviceplugin.plan.resources import build_resources
from deviceplugin.telemetry.metrics import Metrics
from mig.apply import Reconciler, diff_gpu
from mig.devicenodes import read_mig_minors
from mig.errors import ApplyError, FatiaError
from mig.inventory import Gpu, Inventory, InventoryReader
from mig.layout import Placement
from mig.nvml import Nvml

log = structlog.get_logger("fatia.agent")

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0  # while waiting for held devices or a GPU reset
FAILED_RETRY_MAX_S = 300.0  # after an apply that failed and was rolled back


class Reporter(Protocol):
    """Where the agent tells the cluster what it did (the Node, in API mode)."""

    def status(self, status: AgentStatus) -> None: ...

    def event(self, kind: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class _Health:
    unhealthy: frozenset[str]


class Agent:
    def __init__(
        self,
        *,
        nvml: Nvml,
        manager: PluginManager,
        state_dir: Path,
        pod_resources: PodResourcesClient | None,
        metrics: Metrics,
        reporter: Reporter | None = None,
        health: HealthMonitor | None = None,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self._reader = InventoryReader(nvml)
        self._reconciler = Reconciler(
            nvml,
            state_dir=state_dir,
            reader=self._reader,
            on_nvml_error=lambda step, exc: metrics.nvml_errors.labels(step, type(exc).__name__).inc(),
        )
        self._manager = manager
        self._state_dir = state_dir
        self._pod_resources = pod_resources
        self._metrics = metrics
        self._reporter = reporter
        self._health = health
        self._proc_root = proc_root
        self._events: queue.Queue[ConfigText | _Health] = queue.Queue()
        self._config: Config | None = None  # the config in effect
        self._desired: ConfigText | None = None  # the latest config seen
        self._unhealthy: frozenset[str] = frozenset()
        self._withheld: frozenset[str] = frozenset()
        self._inventory: Inventory | None = None
        self._backoff = RETRY_MIN_S
        self._retry_at: float | None = None
        self.status = AgentStatus()
        self._last_event: tuple[str, str, str] | None = None
        self.applied = threading.Event()  # set once a config is in effect

    # -- inputs (any thread) ------------------------------------------------

    def config_changed(self, config: ConfigText) -> None:
        self._events.put(config)

    def health_changed(self, unhealthy: Collection[str]) -> None:
        self._events.put(_Health(frozenset(unhealthy)))

    def ready(self) -> tuple[bool, str]:
        if not self.applied.is_set():
            return False, f"config not applied yet: {self.status.message}"
        if not self._manager.registered():
            return False, "not registered with the kubelet"
        return True, "ready"

    # -- the loop -------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        recovered = self._reconciler.recover()
        if recovered:
            log.warning("mig_recovery", message=recovered)
            self._event("Warning", "Recovered", recovered)
        while not stop.is_set():
            wait = 0.5
            if self._retry_at is not None:
                wait = min(wait, max(0.0, self._retry_at - time.monotonic()))
            try:
                config, health = self._drain(self._events.get(timeout=wait))
            except queue.Empty:
                config, health = None, False
            try:
                if config is not None:
                    self._desired = config
                    self._backoff = RETRY_MIN_S
                    self._retry_at = None
                    self._reconcile()
                elif self._retry_at is not None and time.monotonic() >= self._retry_at:
                    self._retry_at = None
                    self._reconcile(retry=True)
                elif health and self._config is not None:
                    self._advertise(self._config)
                    write_status(self._state_dir, self.status)
            except Exception as exc:  # a bug must not stop the agent; report it and retry
                log.exception("reconcile_crashed")
                self._set_phase("failed", f"internal error: {type(exc).__name__}: {exc}")
                self._schedule_retry()

    def _drain(self, event: ConfigText | _Health) -> tuple[ConfigText | None, bool]:
        """Take everything queued: the newest config among it, and whether health changed."""
        newest, health = None, False
        while True:
            if isinstance(event, ConfigText):
                newest = event
            else:
                self._unhealthy, health = event.unhealthy, True
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return newest, health

    # -- one reconciliation -----------------------------------------------------

    def _reconcile(self, *, retry: bool = False) -> None:
        desired = self._desired
        if desired is None:
            return
        started = time.monotonic()
        self.status.config_source = desired.origin
        if not retry:  # a retry keeps saying what it waits for
            self._set_phase("planning", "planning")
        try:
            if desired.error:
                raise ConfigError(desired.error)
            if desired.text is None:
                config = Config(digest="defaults")
            else:
                config = parse_config(desired.text, source=desired.origin)
        except ConfigError as exc:
            self._fail("InvalidConfig", str(exc), started)
            return
        self.status.desired_config = config.digest
        try:
            outcome = self._apply(config)
        except FatiaError as exc:
            # Serve what the config in effect says about the GPUs as they are now
            # (an apply may have stopped offering devices); with none, serve nothing.
            self._withheld = frozenset()
            self._inventory = None
            if self._config is not None:
                self._advertise(self._config)
            else:
                self._manager.update({})
            if isinstance(exc, ApplyError):
                # Unlike mig-manager, try again (with a long backoff) without waiting for an
                # edit: an NVML failure may pass. Every attempt rolls back what it did.
                self._fail("ApplyFailed", str(exc), started)
                self._schedule_retry(limit=FAILED_RETRY_MAX_S)
            else:
                self._fail("InvalidConfig", str(exc), started)
            return
        self._config = config
        self.status.applied_config = config.digest
        if self._health is not None:
            self._health.set_policy(config.health)
        self.applied.set()
        if outcome:
            self._set_phase("waiting", "; ".join(outcome), waiting=outcome)
            self._event("Normal", "Waiting", self.status.message)
            self._schedule_retry()
        else:
            self._backoff = RETRY_MIN_S
            changed = self._advertised_summary()
            self._set_phase("idle", f"config {config.digest} applied: {changed}", waiting=[])
            self._event("Normal", "Applied", self.status.message)
        self._metrics.reconfigurations.labels("waiting" if outcome else "success").inc()
        self._metrics.reconfigure_seconds.labels("waiting" if outcome else "success").observe(
            time.monotonic() - started
        )

    def _apply(self, config: Config) -> list[str]:
        """Plan and apply ``config``; returns what still waits (empty when done)."""
        inventory = self._reader.read()
        plans = plan_node(inventory, config, held=self._held_placements(inventory))
        problems = errors(plans)
        if problems:
            raise ConfigError("; ".join(problems))
        wanted = targets(plans)
        changes = [diff_gpu(inventory.gpu(t.index), t) for t in wanted]
        changes = [c for c in changes if not c.empty and not c.gpu.lost]
        waiting: list[str] = []
        withheld: frozenset[str] = frozenset()
        if changes:
            leaving = {ci.uuid for c in changes for gi in c.destroy for ci in gi.compute_instances}
            leaving |= {c.gpu.uuid for c in changes if c.mode_change}
            self._set_phase("applying", f"applying config {config.digest}")
            self._inventory = inventory
            self._withheld = frozenset(leaving)
            self._advertise(config)  # stop offering what is about to go
            try:
                held = self._pod_resources.held_uuids() if leaving and self._pod_resources else set()
            except PodResourcesUnavailable as exc:
                # Without knowing what pods hold, nothing is destroyed; try again later.
                return [f"{exc}; nothing is changed until it answers"]
            result = self._reconciler.apply(wanted, held=held)
            self._metrics.gpu_instances.labels("created").inc(result.created)
            self._metrics.gpu_instances.labels("destroyed").inc(result.destroyed)
            inventory, waiting, withheld = result.inventory, list(result.waiting), result.withheld
        self._inventory = inventory
        self._withheld = withheld
        self._advertise(config)
        return waiting

    def _held_placements(self, inventory: Inventory) -> dict[int, set[Placement]]:
        """Per GPU, the instances pods hold now (so the planner keeps them in place)."""
        if self._pod_resources is None or not any(g.gpu_instances for g in inventory.gpus):
            return {}
        try:
            held = self._pod_resources.held_uuids()
        except PodResourcesUnavailable:
            return {}
        return {
            gpu.index: {
                gi.placement
                for gi in gpu.gpu_instances
                if any(ci.uuid in held for ci in gi.compute_instances)
            }
            for gpu in inventory.gpus
        }

    # -- advertising ----------------------------------------------------------

    def _advertise(self, config: Config) -> None:
        if self._inventory is None:
            self._inventory = self._reader.read()
        if self._health is not None:
            self._health.set_inventory(self._inventory)
            self._unhealthy = self._health.unhealthy()
        minors = read_mig_minors(self._proc_root) if config.plugin.pass_device_specs else {}
        resources = build_resources(
            self._inventory, config, unhealthy=self._unhealthy, withheld=self._withheld, mig_minors=minors
        )
        self._manager.update(resources)
        counts: dict[tuple[str, str], int] = {}
        for name, resource in resources.items():
            for device in resource.devices:
                counts[(name, device.health)] = counts.get((name, device.health), 0) + 1
        self._metrics.set_devices(counts)
        self.status.resources = {name: len(r.devices) for name, r in resources.items()}
        self.status.mig_strategy = config.mig_strategy
        self.status.replicas = max(
            (d.replica + 1 for r in resources.values() for d in r.devices if d.replica is not None), default=1
        )
        self.status.unhealthy = sorted(self._unhealthy)
        self.status.gpus = [_gpu_status(g) for g in self._inventory.gpus]

    def _advertised_summary(self) -> str:
        return (
            ", ".join(f"{n} x{c}" for n, c in sorted(self.status.resources.items())) or "nothing to advertise"
        )

    # -- reporting ------------------------------------------------------------

    def _set_phase(self, phase: str, message: str, *, waiting: list[str] | None = None) -> None:
        self.status.phase, self.status.message = phase, message
        if waiting is not None:
            self.status.waiting = waiting
        write_status(self._state_dir, self.status)
        self._metrics.set_config_state(self.status.node_state)
        if self._reporter is not None:
            self._reporter.status(self.status)
        log.info("phase", phase=phase, message=message)

    def _fail(self, reason: str, message: str, started: float) -> None:
        log.error("config_failed", reason=reason, error=message)
        self._set_phase("failed", message, waiting=[])
        self._event("Warning", reason, message)
        self._metrics.reconfigurations.labels("failed").inc()
        self._metrics.reconfigure_seconds.labels("failed").observe(time.monotonic() - started)

    def _event(self, kind: str, reason: str, message: str) -> None:
        """Record an Event, once: retries that end the same way do not repeat it."""
        if (kind, reason, message) == self._last_event:
            return
        self._last_event = (kind, reason, message)
        if self._reporter is not None:
            self._reporter.event(kind, reason, message)

    def _schedule_retry(self, *, limit: float = RETRY_MAX_S) -> None:
        self._retry_at = time.monotonic() + min(self._backoff, limit)
        log.info("retry_scheduled", seconds=min(self._backoff, limit))
        self._backoff = min(self._backoff * 2, limit)


def _gpu_status(gpu: Gpu) -> GpuStatus:
    if gpu.lost:
        mig = "lost"
    elif gpu.mig_enabled != gpu.mig_pending:
        mig = "pending " + ("enable" if gpu.mig_pending else "disable")
    else:
        mig = "enabled" if gpu.mig_enabled else ("disabled" if gpu.mig_capable else "n/a")
    return GpuStatus(gpu.index, gpu.uuid, gpu.product, mig, [str(p) for p in gpu.layout], gpu.memory_mib)
