"""The agent's status board: one place that says what the agent is doing.

Every change of phase goes to the status file (``fatia status``), the config-state
metric, the log and, in API mode, the Node (label and annotation); notable outcomes also
become Events. An Event that repeats the previous one is not sent again, so retries that
end the same way do not flood the Node's Events.

Owned by the agent's thread: nothing else writes the status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from deviceplugin.agent.status import AgentStatus, Phase, write_status
from deviceplugin.telemetry.metrics import Metrics

log = structlog.get_logger("fatia.agent")


class Reporter(Protocol):
    """Where the agent tells the cluster what it did (the Node, in API mode)."""

    def status(self, status: AgentStatus) -> None: ...

    def event(self, kind: str, reason: str, message: str) -> None: ...


class StatusBoard:
    def __init__(self, *, state_dir: Path, metrics: Metrics, reporter: Reporter | None) -> None:
        self._state_dir = state_dir
        self._metrics = metrics
        self._reporter = reporter
        self._last_event: tuple[str, str, str] | None = None
        self.status = AgentStatus()

    def phase(self, phase: Phase, message: str, *, waiting: list[str] | None = None) -> None:
        self.status.phase, self.status.message = phase, message
        if waiting is not None:
            self.status.waiting = waiting
        self.publish()
        log.info("phase", phase=phase, message=message)

    def publish(self) -> None:
        """Write the status where it is read: the file, the metric, the Node."""
        write_status(self._state_dir, self.status)
        self._metrics.set_config_state(self.status.node_state)
        if self._reporter is not None:
            self._reporter.status(self.status)

    def event(self, kind: str, reason: str, message: str) -> None:
        """Record an Event, once: a repeat of the previous one is not sent again."""
        if (kind, reason, message) == self._last_event:
            return
        self._last_event = (kind, reason, message)
        if self._reporter is not None:
            self._reporter.event(kind, reason, message)

    def failed(self, reason: str, message: str) -> None:
        log.error("config_failed", reason=reason, error=message)
        self.event("Warning", reason, message)  # first: whoever sees "failed" finds the Event
        self.phase(Phase.FAILED, message, waiting=[])
