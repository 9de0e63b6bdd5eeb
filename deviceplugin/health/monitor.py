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

This module is the loop (wait, read liveness, keep the event set open); the
:class:`~deviceplugin.health.ledger.HealthLedger` it hands each finding marks and heals.

Threads: the health thread owns the event set and the ledger's state, and publishes an
immutable snapshot after every change (through ``on_change``). The agent's thread only
replaces the policy and the inventory, as immutable values the health thread reads on
its next wake, and reads the snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.health.events import EventSetFailed, NvmlEvents
from deviceplugin.health.judge import Devices
from deviceplugin.health.ledger import EventSink, HealthLedger, no_event
from deviceplugin.health.state import clamp_seconds
from deviceplugin.telemetry.metrics import Metrics
from mig.inventory import Inventory
from mig.nvml import Nvml, NVMLError

log = structlog.get_logger("fatia.health")

WAIT_MS = 1000
MIN_WAIT_MS = 10
RESTART_BACKOFF_S = 5.0
STOP_JOIN_S = 0.1  # a thread still inside an NVML wait ends with the process


class HealthMonitor:
    def __init__(
        self,
        nvml: Nvml,
        *,
        on_change: Callable[[frozenset[str]], None],
        metrics: Metrics,
        event: EventSink = no_event,
        clock: Callable[[], float] = time.monotonic,
        liveness_seconds: float | None = None,
    ) -> None:
        self._nvml, self._metrics, self._event, self._clock = nvml, metrics, event, clock
        self._liveness_override = liveness_seconds  # tests; otherwise the policy's
        self._ledger = HealthLedger(nvml, on_change=on_change, metrics=metrics, event=event, clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watching = threading.Event()  # set while an event set is open (events are seen)

    # -- the agent's side -----------------------------------------------------

    def set_policy(self, policy: HealthPolicy) -> None:
        self._ledger.policy = policy

    def set_inventory(self, inventory: Inventory) -> None:
        self._ledger.devices = Devices.of(inventory)

    def unhealthy(self) -> frozenset[str]:
        """The unhealthy devices among those that exist now."""
        return self._ledger.unhealthy()

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
                self._ledger.watch_failed(str(exc))
            except Exception as exc:  # a bug: it says nothing about any GPU
                log.exception("health_loop_crashed")
                self._metrics.health_loop_failures.labels("crash").inc()
                self._event("Warning", "HealthCheckCrashed", f"the health loop crashed and restarts: {exc!r}")
            finally:
                self.watching.clear()
                events.close()
            self._stop.wait(RESTART_BACKOFF_S)

    def _watch(self, events: NvmlEvents) -> None:
        ledger = self._ledger
        ledger.record(events.open())
        self.watching.set()
        ledger.watching()
        last_liveness = self._clock()  # the period is the policy's now: it may change
        while not self._stop.is_set():
            ledger.record(events.wait(self._timeout_ms(last_liveness + self._liveness())))
            now = self._clock()
            if now >= last_liveness + self._liveness():  # every GPU, event-less ones included
                ledger.record(events.probe(sorted(ledger.devices.gpus)))
                last_liveness = now
            if events.stale:
                events.close()
                ledger.record(events.open())
            # After every wake, not only on a timeout: events that keep coming (on another
            # GPU, or ignored XIDs) must not hold a quiet device's recovery up. A healed GPU
            # left out of the set is added to this one: a new set would miss events meanwhile.
            for index in ledger.recover() - events.registered:
                ledger.record(events.register(index))
            ledger.forget_gone()

    def _liveness(self) -> float:
        seconds = self._liveness_override or self._ledger.policy.liveness_seconds
        return clamp_seconds(seconds, low=0.1)

    def _timeout_ms(self, next_liveness: float) -> int:
        """Until the next recovery or liveness read is due, within [MIN_WAIT_MS, WAIT_MS]."""
        now = self._clock()
        due = [next_liveness - now]
        recovery = self._ledger.next_recovery_in(now)
        if recovery is not None:
            due.append(recovery)
        seconds = clamp_seconds(min(due), low=MIN_WAIT_MS / 1000, high=WAIT_MS / 1000)
        return int(seconds * 1000)

    def _count_error(self, call: str, exc: BaseException) -> None:
        self._metrics.nvml_error(call, exc)
        if isinstance(exc, NVMLError):
            log.warning("nvml_error", call=call, error=str(exc))
