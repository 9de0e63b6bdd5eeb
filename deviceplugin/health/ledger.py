"""The health thread's ledger: findings in, the published set of unhealthy devices out.

:class:`HealthLedger` is the half of the health monitor that decides and tells; the loop
in :mod:`deviceplugin.health.monitor` only waits for NVML and hands over what it found.
A finding the policy counts marks its device (log, ``DeviceUnhealthy`` Event, a new
snapshot); a device quiet for the policy's recovery time that NVML answers for heals
(log, ``DeviceHealthy`` Event, a new snapshot); an event set NVML refuses marks every
device until the loop watches again. Every new snapshot is reported through
``on_change``.

Threads: the health thread owns the :class:`HealthState`, the failed flag and the
snapshot, and makes every call but :meth:`HealthLedger.unhealthy`. The agent's thread
only replaces ``policy`` and ``devices``, as immutable values, and calls
:meth:`HealthLedger.unhealthy`, which reads only immutable values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.health.events import Finding, What
from deviceplugin.health.judge import Devices, judge
from deviceplugin.health.state import HealthState, clamp_seconds
from deviceplugin.telemetry.metrics import Metrics
from mig.nvml import NVML_FAILURES, Nvml

log = structlog.get_logger("fatia.health")

EventSink = Callable[[str, str, str], None]


def no_event(kind: str, reason: str, message: str) -> None:
    pass


class HealthLedger:
    def __init__(
        self,
        nvml: Nvml,
        *,
        on_change: Callable[[frozenset[str]], None],
        metrics: Metrics,
        event: EventSink,
        clock: Callable[[], float],
    ) -> None:
        self._nvml, self._on_change, self._metrics = nvml, on_change, metrics
        self._event, self._clock = event, clock
        # Written by the agent's thread, read by the health thread (immutable values).
        self.policy = HealthPolicy()
        self.devices = Devices()
        # Owned by the health thread.
        self._state = HealthState()
        self._failed = False
        self._published: frozenset[str] = frozenset()

    def unhealthy(self) -> frozenset[str]:
        """The unhealthy devices among those that exist now."""
        devices = self.devices.all()
        return devices if self._failed else self._published & devices

    def record(self, findings: Iterable[Finding]) -> None:
        """Mark what the findings hurt, as the policy judges them."""
        for finding in findings:
            if finding.what is What.XID:
                self._metrics.xids.labels(str(finding.gpu), str(finding.xid)).inc()
            verdict = judge(finding, self.policy, self.devices)
            if verdict.uuid is None:
                if finding.what is What.XID:
                    log.info("xid_ignored", gpu=finding.gpu, xid=finding.xid, reason=verdict.why)
                else:
                    log.info("health_evidence_ignored", gpu=finding.gpu, reason=verdict.why)
                continue
            new = self._state.mark([verdict.uuid], self._clock())
            if new:
                log.warning("device_unhealthy", uuids=new, reason=verdict.why)
                self._event("Warning", "DeviceUnhealthy", f"{verdict.why}: {', '.join(new)} unhealthy")
                self._publish()

    def watch_failed(self, why: str) -> None:
        """NVML refused the event set: nothing is known, every device is unhealthy."""
        log.error("health_loop_failed", error=why)
        self._metrics.health_loop_failures.labels("nvml").inc()
        self._event("Warning", "HealthCheckFailed", f"{why}; every device is reported unhealthy")
        if not self._failed:
            self._failed = True
            self._on_change(self.unhealthy())

    def watching(self) -> None:
        """An event set is open again: only evidence marks devices."""
        if self._failed:
            self._failed = False
            self._publish()

    def forget_gone(self) -> None:
        """Drop what is known about devices that no longer exist."""
        if self._state.keep_only(self.devices.all()):
            self._publish()

    def next_recovery_in(self, now: float) -> float | None:
        return self._state.next_recovery_in(now, self.policy.recovery_seconds)

    def recover(self) -> set[int]:
        """Heal what has been quiet long enough and answers; the indices of whole GPUs healed."""
        quiet = clamp_seconds(self.policy.recovery_seconds)
        healed = self._state.heal(u for u in self._state.due(self._clock(), quiet) if self._answers(u))
        if not healed:
            return set()
        log.info("device_healthy", uuids=healed)
        message = f"{', '.join(healed)} healthy again after {quiet:g}s without errors"
        self._event("Normal", "DeviceHealthy", message)
        self._publish()
        return {index for index, uuid in self.devices.gpus.items() if uuid in healed}

    def _answers(self, uuid: str) -> bool:
        """The device is there and NVML answers for it."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            self._nvml.nvmlDeviceGetMemoryInfo(handle)
            return True
        except NVML_FAILURES:
            return False

    def _publish(self) -> None:
        self._published = self._state.unhealthy()
        self._on_change(self.unhealthy())
