"""What one reconciliation's outcome tells the cluster: its Events and the agent's phase.

A GPU left unserved and a config that is valid but likely not what was meant are each
an Event (and a log line); then the result sets the phase: idle once applied, waiting
(with what it waits for), or failed (invalid config, or an apply NVML refused and that
was rolled back). The agent decides what happens next (keep the config, retry); this
module only says what happened, through the status board.
"""

from __future__ import annotations

import structlog

from deviceplugin.agent.board import StatusBoard
from deviceplugin.agent.reconcile import Outcome, Result
from deviceplugin.agent.status import Phase

log = structlog.get_logger("fatia.agent")


def report(outcome: Outcome, board: StatusBoard) -> None:
    for sentence in outcome.unavailable:
        log.warning("gpu_unavailable", reason=sentence)
        board.event("Warning", "GpuUnavailable", sentence)
    for sentence in outcome.warnings:
        log.warning("config_warning", warning=sentence)
        board.event("Warning", "ConfigWarning", sentence)
    if outcome.result is Result.INVALID:
        board.failed("InvalidConfig", outcome.message)
    elif outcome.result is Result.FAILED:
        board.failed("ApplyFailed", outcome.message)
    elif outcome.result is Result.WAITING:
        board.phase(Phase.WAITING, outcome.message, waiting=list(outcome.waiting))
        board.event("Normal", "Waiting", outcome.message)
    else:
        board.phase(Phase.IDLE, outcome.message, waiting=[])
        board.event("Normal", "Applied", outcome.message)
