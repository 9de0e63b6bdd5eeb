"""Device health: NVML's evidence in, the set of unhealthy devices out, with recovery.

An event or a liveness read (:mod:`deviceplugin.health.events`) is mapped to the devices
it hurts:

- a critical XID that the policy counts as fatal, or a double-bit ECC error: the MIG
  device NVML attributes it to (GPU and compute instance ids), else the whole GPU, i.e.
  every device it yields, replicas included;
- a GPU that is lost (GPU_IS_LOST, from an event wait or the periodic liveness read):
  the whole GPU. A GPU that delivers no events at all is still covered by the liveness
  read, every ``health.livenessSeconds``.

Only evidence about a GPU marks that GPU. An event whose GPU cannot be named is answered
by probing every GPU, and only those that do not answer are marked. If NVML refuses the
event set itself, nothing about any device is known and every device is reported
unhealthy (with an Event) until the loop runs again. A bug in the loop marks nothing: it
is logged, reported and the loop starts again.

Unlike NVIDIA's plugin, unhealthy is not forever: once the policy's quiet time has passed
without new evidence, the device is probed (NVML must answer for it) and, if it does, it
is healthy again.

Threads: the health thread owns the event set, the :class:`HealthState` and the failed
flag, and publishes an immutable snapshot after every change (reported through
``on_change``). The agent's thread only replaces the policy and the inventory, as
immutable values the health thread reads on its next wake, and reads the snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import structlog

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.health.events import EventSetFailed, Finding, NvmlEvents, What
from deviceplugin.health.judge import Devices, judge
from deviceplugin.health.state import HealthState, clamp_seconds
from deviceplugin.telemetry.metrics import Metrics
from mig.inventory import Inventory
from mig.nvml import NVML_FAILURES, Nvml, NVMLError

log = structlog.get_logger("fatia.health")

WAIT_MS = 1000
MIN_WAIT_MS = 10
RESTART_BACKOFF_S = 5.0
STOP_JOIN_S = 0.1  # a thread still inside an NVML wait ends with the process

EventSink = Callable[[str, str, str], None]


def _no_event(kind: str, reason: str, message: str) -> None:
    pass


class HealthMonitor:
    def __init__(
        self,
        nvml: Nvml,
        *,
        on_change: Callable[[frozenset[str]], None],
        metrics: Metrics,
        event: EventSink = _no_event,
        clock: Callable[[], float] = time.monotonic,
        liveness_seconds: float | None = None,
    ) -> None:
        self._nvml = nvml
        self._on_change = on_change
        self._metrics = metrics
        self._event = event
        self._clock = clock
        self._liveness_override = liveness_seconds  # tests; otherwise the policy's
        # Written by the agent's thread, read by the health thread (immutable values).
        self._policy = HealthPolicy()
        self._devices = Devices()
        # Owned by the health thread.
        self._state = HealthState()
        self._failed = False
        self._published: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watching = threading.Event()  # set while an event set is open (events are seen)

    # -- the agent's side -----------------------------------------------------

    def set_policy(self, policy: HealthPolicy) -> None:
        self._policy = policy

    def set_inventory(self, inventory: Inventory) -> None:
        self._devices = Devices.of(inventory)

    def unhealthy(self) -> frozenset[str]:
        """The unhealthy devices among those that exist now."""
        devices = self._devices.all()
        return devices if self._failed else self._published & devices

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            events = NvmlEvents(self._nvml, on_error=self._count_error)
            try:
                self._watch(events)
            except EventSetFailed as exc:
                self._loop_failed(str(exc))
            except Exception as exc:  # a bug: it says nothing about any GPU
                log.exception("health_loop_crashed")
                self._metrics.health_loop_failures.labels("crash").inc()
                self._event("Warning", "HealthCheckCrashed", f"the health loop crashed and restarts: {exc!r}")
            finally:
                self.watching.clear()
                events.close()
            self._stop.wait(RESTART_BACKOFF_S)

    def _watch(self, events: NvmlEvents) -> None:
        self._apply(events.open())
        self.watching.set()
        if self._failed:
            self._failed = False
            self._publish()
        last_liveness = self._clock()  # the period is the policy's now: it may change
        while not self._stop.is_set():
            findings = events.wait(self._timeout_ms(last_liveness + self._liveness()))
            self._apply(findings)
            now = self._clock()
            if now >= last_liveness + self._liveness():  # every GPU, event-less ones included
                self._apply(events.probe(sorted(self._devices.gpus)))
                last_liveness = now
            if events.stale:
                events.close()
                self._apply(events.open())
            # After every wake, not only on a timeout: events that keep coming (on another
            # GPU, or ignored XIDs) must not hold a quiet device's recovery up. A healed GPU
            # left out of the set is added to this one: a new set would miss events meanwhile.
            for index in self._recover() - events.registered:
                self._apply(events.register(index))
            if self._state.keep_only(self._devices.all()):
                self._publish()

    def _liveness(self) -> float:
        seconds = self._liveness_override or self._policy.liveness_seconds
        return clamp_seconds(seconds, low=0.1)

    def _timeout_ms(self, next_liveness: float) -> int:
        """Until the next recovery or liveness read is due, within [MIN_WAIT_MS, WAIT_MS]."""
        now = self._clock()
        due = [next_liveness - now]
        recovery = self._state.next_recovery_in(now, self._policy.recovery_seconds)
        if recovery is not None:
            due.append(recovery)
        seconds = clamp_seconds(min(due), low=MIN_WAIT_MS / 1000, high=WAIT_MS / 1000)
        return int(seconds * 1000)

    # -- evidence -------------------------------------------------------------

    def _apply(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            if finding.what is What.XID:
                self._metrics.xids.labels(str(finding.gpu), str(finding.xid)).inc()
            verdict = judge(finding, self._policy, self._devices)
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

    def _loop_failed(self, why: str) -> None:
        log.error("health_loop_failed", error=why)
        self._metrics.health_loop_failures.labels("nvml").inc()
        self._event("Warning", "HealthCheckFailed", f"{why}; every device is reported unhealthy")
        if not self._failed:
            self._failed = True
            self._on_change(self.unhealthy())

    def _publish(self) -> None:
        self._published = self._state.unhealthy()
        self._on_change(self.unhealthy())

    # -- recovery -------------------------------------------------------------

    def _recover(self) -> set[int]:
        """Heal what has been quiet long enough and answers; the indices of whole GPUs healed."""
        quiet = clamp_seconds(self._policy.recovery_seconds)
        healed = self._state.heal(u for u in self._state.due(self._clock(), quiet) if self._answers(u))
        if not healed:
            return set()
        log.info("device_healthy", uuids=healed)
        message = f"{', '.join(healed)} healthy again after {quiet:g}s without errors"
        self._event("Normal", "DeviceHealthy", message)
        self._publish()
        return {index for index, uuid in self._devices.gpus.items() if uuid in healed}

    def _answers(self, uuid: str) -> bool:
        """The device is there and NVML answers for it."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            self._nvml.nvmlDeviceGetMemoryInfo(handle)
            return True
        except NVML_FAILURES:
            return False

    def _count_error(self, call: str, exc: BaseException) -> None:
        name = type(exc).__name__
        self._metrics.nvml_errors.labels(call, name).inc()
        if isinstance(exc, NVMLError):
            log.warning("nvml_error", call=call, error=str(exc))
