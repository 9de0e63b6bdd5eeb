"""The node agent: config and health events in, one reconciliation at a time.

Config sources, the health monitor and the daemon only post to the agent's queue; the
agent's thread takes the newest config among what is queued and runs
:func:`~deviceplugin.agent.reconcile.reconcile_once`. A reconciliation that must wait
(held devices, a GPU reset, PodResources not answering) or that NVML refused is retried
with backoff, with no edit needed; a new config starts over at once. A health change
only re-advertises.

Threads: the agent's thread owns every field here, the advertiser and the status board.
Other threads call only :meth:`config_changed`, :meth:`health_changed`, :meth:`stop` (all
of which just enqueue) and :meth:`ready` (which reads).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import structlog

from deviceplugin.agent.advertiser import Advertiser, Offer
from deviceplugin.agent.board import Reporter, StatusBoard
from deviceplugin.agent.reconcile import Outcome, Parts, PodResources, Result, reconcile_once
from deviceplugin.agent.status import AgentStatus, Phase
from deviceplugin.config.schema import Config
from deviceplugin.config.source import ConfigText
from deviceplugin.health.monitor import HealthMonitor
from deviceplugin.retry import Backoff
from deviceplugin.telemetry.metrics import Metrics
from mig.apply import Reconciler
from mig.inventory import InventoryReader
from mig.nvml import Nvml

log = structlog.get_logger("fatia.agent")

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0  # while waiting for held devices or a GPU reset
FAILED_RETRY_MAX_S = 300.0  # after an apply that failed and was rolled back


class _Health:
    """Health changed: the advertiser asks the monitor for the unhealthy set itself."""


class _Stop:
    pass


_Event = ConfigText | _Health | _Stop


class Agent:
    def __init__(
        self,
        *,
        nvml: Nvml,
        manager: Offer,
        state_dir: Path,
        pod_resources: PodResources | None,
        metrics: Metrics,
        reporter: Reporter | None = None,
        health: HealthMonitor | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        reader = InventoryReader(nvml)
        reconciler = Reconciler(
            nvml,
            state_dir=state_dir,
            reader=reader,
            on_nvml_error=lambda step, exc: metrics.nvml_errors.labels(step, type(exc).__name__).inc(),
        )
        self._board = StatusBoard(state_dir=state_dir, metrics=metrics, reporter=reporter)
        advertiser = Advertiser(
            manager=manager, metrics=metrics, board=self._board, health=health, proc_root=proc_root
        )
        self._parts = Parts(reader, reconciler, pod_resources, advertiser, self._board, metrics)
        self._manager = manager
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._events: queue.Queue[_Event] = queue.Queue()
        self._config: Config | None = None  # the config in effect
        self._desired: ConfigText | None = None  # the latest config seen
        self._backoff = Backoff(RETRY_MIN_S, FAILED_RETRY_MAX_S)
        self._retry_at: float | None = None
        self.applied = threading.Event()  # set once a config is in effect

    @property
    def status(self) -> AgentStatus:
        return self._board.status

    # -- inputs (any thread) ----------------------------------------------------

    def config_changed(self, config: ConfigText) -> None:
        self._events.put(config)

    def health_changed(self, unhealthy: Collection[str]) -> None:
        self._events.put(_Health())

    def stop(self) -> None:
        self._events.put(_Stop())

    def ready(self) -> tuple[bool, str]:
        if not self.applied.is_set():
            return False, f"config not applied yet: {self.status.message}"
        return self._manager.ready()

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Until :meth:`stop`: recover an interrupted apply, then serve events."""
        recovered = self._parts.reconciler.recover()
        if recovered:
            log.warning("mig_recovery", message=recovered)
            self._board.event("Warning", "Recovered", recovered)
        while True:
            timeout = None if self._retry_at is None else max(0.0, self._retry_at - self._clock())
            try:
                events = self._drain(self._events.get(timeout=timeout))
            except queue.Empty:
                events = []
            if any(isinstance(e, _Stop) for e in events):
                return
            try:
                self._handle(events)
            except Exception as exc:  # a bug must not stop the agent; report it and retry
                log.exception("reconcile_crashed")
                self._board.phase(Phase.FAILED, f"internal error: {type(exc).__name__}: {exc}")
                self._schedule_retry(RETRY_MAX_S)

    def _drain(self, first: _Event) -> list[_Event]:
        events = [first]
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _handle(self, events: list[_Event]) -> None:
        configs = [e for e in events if isinstance(e, ConfigText)]
        if configs:
            self._desired = configs[-1]
            self._backoff.reset()
            self._retry_at = None
            self._reconcile(retry=False)
        elif self._retry_at is not None and self._clock() >= self._retry_at:
            self._retry_at = None
            self._reconcile(retry=True)
        elif any(isinstance(e, _Health) for e in events) and self._config is not None:
            self._parts.advertiser.refresh()
            self._board.publish()

    def _reconcile(self, *, retry: bool) -> None:
        desired = self._desired
        if desired is None:
            return
        started = self._clock()
        self.status.config_source = desired.origin
        if not retry:  # a retry keeps saying what it waits for
            self._board.phase(Phase.PLANNING, "planning")
        outcome = reconcile_once(desired, self._config, self._parts, retry=retry)
        self._conclude(outcome)
        self._metrics.reconfigurations.labels(outcome.result.metric).inc()
        self._metrics.reconfigure_seconds.labels(outcome.result.metric).observe(self._clock() - started)

    def _conclude(self, outcome: Outcome) -> None:
        board = self._board
        for sentence in outcome.unavailable:
            log.warning("gpu_unavailable", reason=sentence)
            board.event("Warning", "GpuUnavailable", sentence)
        for sentence in outcome.warnings:
            log.warning("config_warning", warning=sentence)
            board.event("Warning", "ConfigWarning", sentence)
        if outcome.config is not None:  # in effect, on every GPU or on all but refused ones
            self._take(outcome.config)
        if outcome.result is Result.INVALID:
            board.failed("InvalidConfig", outcome.message)
        elif outcome.result is Result.FAILED:
            board.failed("ApplyFailed", outcome.message)
            # Unlike mig-manager, try again (with a long backoff) without waiting for an
            # edit: an NVML failure may pass. Every attempt rolls back what it did.
            self._schedule_retry(FAILED_RETRY_MAX_S)
        elif outcome.result is Result.WAITING:
            board.phase(Phase.WAITING, outcome.message, waiting=list(outcome.waiting))
            board.event("Normal", "Waiting", outcome.message)
            self._schedule_retry(RETRY_MAX_S)
        else:
            self._backoff.reset()
            board.phase(Phase.IDLE, outcome.message, waiting=[])
            board.event("Normal", "Applied", outcome.message)

    def _take(self, config: Config) -> None:
        """``config`` is now the one in effect."""
        self._config = config
        self.status.applied_config = config.digest
        if self._health is not None:
            self._health.set_policy(config.health)
        self.applied.set()

    def _schedule_retry(self, limit: float) -> None:
        delay = self._backoff.next(limit=limit)
        self._retry_at = self._clock() + delay
        log.info("retry_scheduled", seconds=delay)
