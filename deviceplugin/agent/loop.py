"""The node agent: config and health events in, one reconciliation at a time.

Config sources, the health monitor and the daemon only post to the agent's
:class:`~deviceplugin.agent.inbox.Inbox`; the agent's thread takes the newest config
among what is queued and runs :func:`~deviceplugin.agent.reconcile.reconcile_once`. A
reconciliation that must wait (held devices, a GPU reset, PodResources not answering) or
that NVML refused is retried with backoff, with no edit needed; a new config starts over
at once. A health change only re-advertises. The outcome is told by
:func:`~deviceplugin.agent.report.report`.

Threads: the agent's thread owns every field here, the advertiser, the status board and
the inbox but its queue. Other threads call only :meth:`config_changed`,
:meth:`health_changed`, :meth:`stop` (all of which just post to the inbox) and
:meth:`ready` (which reads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import structlog

from deviceplugin.agent.advertiser import Advertiser, Offer
from deviceplugin.agent.board import Reporter, StatusBoard
from deviceplugin.agent.inbox import Event, Health, Inbox, Stop
from deviceplugin.agent.reconcile import Outcome, Parts, PodResources, Result, reconcile_once
from deviceplugin.agent.report import report
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
        reconciler = Reconciler(nvml, state_dir=state_dir, reader=reader, on_nvml_error=metrics.nvml_error)
        self._board = StatusBoard(state_dir=state_dir, metrics=metrics, reporter=reporter)
        advertiser = Advertiser(
            manager=manager, metrics=metrics, board=self._board, health=health, proc_root=proc_root
        )
        self._parts = Parts(reader, reconciler, pod_resources, advertiser, self._board, metrics)
        self._manager = manager
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._inbox = Inbox(Backoff(RETRY_MIN_S, FAILED_RETRY_MAX_S), clock=clock)
        self._config: Config | None = None  # the config in effect
        self._desired: ConfigText | None = None  # the latest config seen
        self.applied = threading.Event()  # set once a config is in effect

    @property
    def status(self) -> AgentStatus:
        return self._board.status

    # -- inputs (any thread) ----------------------------------------------------

    def config_changed(self, config: ConfigText) -> None:
        self._inbox.post(config)

    def health_changed(self, unhealthy: Collection[str]) -> None:
        self._inbox.post(Health())

    def stop(self) -> None:
        self._inbox.post(Stop())

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
            events = self._inbox.take()
            if any(isinstance(e, Stop) for e in events):
                return
            try:
                self._handle(events)
            except Exception as exc:  # a bug must not stop the agent; report it and retry
                log.exception("reconcile_crashed")
                self._board.phase(Phase.FAILED, f"internal error: {type(exc).__name__}: {exc}")
                self._inbox.retry_later(limit=RETRY_MAX_S)

    def _handle(self, events: list[Event]) -> None:
        configs = [e for e in events if isinstance(e, ConfigText)]
        if configs:
            self._desired = configs[-1]
            self._inbox.start_over()
            self._reconcile(retry=False)
        elif self._inbox.retry_due():
            self._reconcile(retry=True)
        elif any(isinstance(e, Health) for e in events) and self._config is not None:
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
        self._metrics.reconfigured(outcome.result.metric, self._clock() - started)

    def _conclude(self, outcome: Outcome) -> None:
        if outcome.config is not None:  # in effect, on every GPU or on all but refused ones
            self._take(outcome.config)
        report(outcome, self._board)
        if outcome.result is Result.FAILED:
            # Unlike mig-manager, try again (with a long backoff) without waiting for an
            # edit: an NVML failure may pass. Every attempt rolls back what it did.
            self._inbox.retry_later(limit=FAILED_RETRY_MAX_S)
        elif outcome.result is Result.WAITING:
            self._inbox.retry_later(limit=RETRY_MAX_S)
        elif outcome.result is Result.APPLIED:
            self._inbox.start_over()

    def _take(self, config: Config) -> None:
        """``config`` is now the one in effect."""
        self._config = config
        self.status.applied_config = config.digest
        if self._health is not None:
            self._health.set_policy(config.health)
        self.applied.set()
