"""Device health from NVML events, and recovery.

One thread waits on an NVML event set registered on every physical GPU (NVML
cannot deliver events per MIG handle). An event maps to the devices it hurts:

- a critical XID that the policy counts as fatal, or a double-bit ECC error,
  on a GPU: if NVML attributes it to a GPU instance and compute instance, the
  MIG device with those ids; otherwise the whole GPU, i.e. every device it
  yields, replicas included;
- a GPU that is lost (GPU_IS_LOST): the whole GPU.

Unlike NVIDIA's plugin, unhealthy is not forever: once the quiet time of the
policy has passed without a new event, the device is probed (NVML must answer
for it) and, if it does, it is healthy again. And if the health loop cannot
start at all, every device is reported unhealthy (and an Event says why),
never silently healthy.

The monitor reports the set of unhealthy UUIDs (GPU or MIG) through
``on_change``; the agent turns that into ListAndWatch updates.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pynvml
import structlog

from deviceplugin.config.schema import HealthPolicy
from deviceplugin.telemetry.metrics import Metrics
from mig.inventory import Inventory
from mig.nvml import Nvml

log = structlog.get_logger("fatia.health")

UNATTRIBUTED = 0xFFFFFFFF
EVENT_MASK = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
WAIT_MS = 1000
MIN_WAIT_MS = 10
RESTART_BACKOFF_S = 5.0


class HealthMonitor:
    def __init__(
        self,
        nvml: Nvml,
        *,
        on_change: Callable[[frozenset[str]], None],
        metrics: Metrics,
        event: Callable[[str, str, str], None] = lambda kind, reason, message: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._on_change = on_change
        self._metrics = metrics
        self._event = event
        self._clock = clock
        self._policy = HealthPolicy()
        self._gpus: dict[int, str] = {}  # index -> GPU UUID
        self._mig: dict[tuple[int, int, int], str] = {}  # (gpu, gi, ci) -> MIG UUID
        self._unhealthy: dict[str, float] = {}  # UUID -> time of the last bad event
        self._lock = threading.Lock()  # _unhealthy is written by this thread and the agent's
        self._failed = False  # the event loop is not running: nothing can be trusted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- inputs from the agent ----------------------------------------------

    def set_policy(self, policy: HealthPolicy) -> None:
        self._policy = policy

    def set_inventory(self, inventory: Inventory) -> None:
        self._gpus = {g.index: g.uuid for g in inventory.gpus if g.uuid}
        self._mig = {
            (g.index, d.gpu_instance, d.compute_instance): d.uuid
            for g in inventory.gpus
            for d in g.mig_devices
        }
        with self._lock:  # MIG devices that no longer exist cannot heal: forget them
            gone = [u for u in self._unhealthy if u.startswith("MIG-") and u not in self._mig.values()]
            for uuid in gone:
                del self._unhealthy[uuid]
        if self._failed:
            self._mark_all()

    def unhealthy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._unhealthy)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT_MS / 1000 + 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event_set, registered = self._register()
                self._failed = False
            except pynvml.NVMLError as exc:
                self._loop_failed(f"the NVML health loop cannot start: {exc}")
                if self._stop.wait(RESTART_BACKOFF_S):
                    return
                continue
            try:
                self._watch(event_set, registered)
            except Exception as exc:  # a bug here must not leave devices silently healthy
                log.exception("health_loop_crashed")
                self._loop_failed(f"the NVML health loop crashed: {exc!r}")
                self._stop.wait(RESTART_BACKOFF_S)
            finally:
                with contextlib.suppress(pynvml.NVMLError):
                    self._nvml.nvmlEventSetFree(event_set)

    def _register(self) -> tuple[Any, set[int]]:
        """A new event set, and the indices of the GPUs registered in it."""
        nvml = self._nvml
        event_set = nvml.nvmlEventSetCreate()
        registered = {
            index for index in range(nvml.nvmlDeviceGetCount()) if self._register_gpu(index, event_set)
        }
        return event_set, registered

    def _register_gpu(self, index: int, event_set: Any) -> bool:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mask = nvml.nvmlDeviceGetSupportedEventTypes(handle) & EVENT_MASK
            nvml.nvmlDeviceRegisterEvents(handle, mask, event_set)
            return True
        except pynvml.NVMLError_GpuIsLost:
            self._mark(self._gpus.get(index), f"GPU {index} is lost")
        except pynvml.NVMLError_NotSupported:
            # Some boards deliver no events at all; that is no reason to call them unhealthy.
            log.warning("health_events_not_supported", gpu=index)
        except pynvml.NVMLError as exc:
            self._count_error("nvmlDeviceRegisterEvents", exc)
            self._mark(self._gpus.get(index), f"GPU {index}: health events cannot be registered: {exc}")
        return False

    def _watch(self, event_set: Any, registered: set[int]) -> None:
        nvml = self._nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, self._wait_ms())
            except pynvml.NVMLError_Timeout:
                data = None
            except pynvml.NVMLError_GpuIsLost as exc:
                self._count_error("nvmlEventSetWait", exc)
                self._find_lost()
                return  # register again, without the lost GPU
            except pynvml.NVMLError as exc:
                self._count_error("nvmlEventSetWait", exc)
                self._loop_failed(f"waiting for NVML events failed: {exc}")
                self._stop.wait(RESTART_BACKOFF_S)
                return
            if data is not None:
                self._handle(data)
            # After every wake, not only on a timeout: events that keep coming (on
            # another GPU, or ignored XIDs) must not hold a quiet device's recovery up.
            for index in set(self._recover()) - registered:
                # A GPU left out of the set (lost, or its registration failed) is back: add
                # it to this set. A new set would miss the events sent until it exists.
                if self._register_gpu(index, event_set):
                    registered.add(index)

    def _wait_ms(self) -> int:
        """Until the next device's quiet time ends, so that it heals on time; at most WAIT_MS."""
        now, quiet = self._clock(), self._policy.recovery_seconds
        with self._lock:
            due = [last + quiet - now for last in self._unhealthy.values() if last + quiet > now]
        if not due:
            return WAIT_MS
        return max(MIN_WAIT_MS, min(WAIT_MS, int(min(due) * 1000) + 1))

    # -- events ---------------------------------------------------------------

    def _handle(self, data: Any) -> None:
        try:
            index = int(self._nvml.nvmlDeviceGetIndex(data.device))
        except pynvml.NVMLError:
            index = -1
        gpu_uuid = self._gpus.get(index)
        if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            xid = int(data.eventData)
            self._metrics.xids.labels(str(index), str(xid)).inc()
            if not self._policy.enabled or not self._policy.is_fatal(xid):
                log.info("xid_ignored", gpu=index, xid=xid)
                return
            what = f"XID {xid}"
        elif not self._policy.enabled:
            return
        elif data.eventType & pynvml.nvmlEventTypeDoubleBitEccError:
            what = "a double-bit ECC error"
        else:
            return
        target = gpu_uuid
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != UNATTRIBUTED and ci != UNATTRIBUTED:
            target = self._mig.get((index, gi, ci), gpu_uuid)
        self._mark(
            target, f"GPU {index}: {what}" + (f" on MIG device {gi}/{ci}" if target != gpu_uuid else "")
        )

    def _mark(self, uuid: str | None, why: str) -> None:
        targets = [uuid] if uuid else list(self._gpus.values())
        now = self._clock()
        with self._lock:
            new = [t for t in targets if t not in self._unhealthy]
            for target in targets:
                self._unhealthy[target] = now
        if new:
            log.warning("device_unhealthy", uuids=new, reason=why)
            self._event("Warning", "DeviceUnhealthy", f"{why}: {', '.join(new)} unhealthy")
            self._on_change(self.unhealthy())

    def _loop_failed(self, why: str) -> None:
        log.error("health_loop_failed", error=why)
        self._failed = True
        self._event("Warning", "HealthCheckFailed", f"{why}; every device is reported unhealthy")
        self._mark_all()

    def _mark_all(self) -> None:
        targets = set(self._gpus.values()) | set(self._mig.values())
        now = self._clock()
        with self._lock:
            new = targets - set(self._unhealthy)
            for target in targets:
                self._unhealthy[target] = now
        if new:
            self._on_change(self.unhealthy())

    def _find_lost(self) -> None:
        for index, uuid in list(self._gpus.items()):
            if not self._answers(uuid):
                self._mark(uuid, f"GPU {index} is lost")

    # -- recovery -------------------------------------------------------------

    def _recover(self) -> list[int]:
        """Heal what has been quiet long enough and answers; the indices of whole GPUs healed."""
        quiet = self._policy.recovery_seconds
        now = self._clock()
        if self._failed:
            return []
        with self._lock:
            due = [u for u, last in self._unhealthy.items() if now - last >= quiet]
        healed = [u for u in due if self._answers(u)]
        if not healed:
            return []
        with self._lock:
            # A new event may have come in (from set_inventory) while NVML was asked.
            healed = [u for u in healed if now - self._unhealthy.get(u, now) >= quiet]
            for uuid in healed:
                del self._unhealthy[uuid]
        if not healed:
            return []
        log.info("device_healthy", uuids=healed)
        self._event(
            "Normal", "DeviceHealthy", f"{', '.join(healed)} healthy again after {quiet:g}s without errors"
        )
        self._on_change(self.unhealthy())
        return [index for index, uuid in self._gpus.items() if uuid in healed]

    def _answers(self, uuid: str) -> bool:
        """The device is there and NVML answers for it."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            self._nvml.nvmlDeviceGetMemoryInfo(handle)
            return True
        except pynvml.NVMLError:
            return False

    def _count_error(self, call: str, exc: pynvml.NVMLError) -> None:
        self._metrics.nvml_errors.labels(call, type(exc).__name__).inc()
