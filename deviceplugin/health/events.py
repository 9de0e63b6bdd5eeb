"""NVML's health evidence, read from one event set and from cheap liveness reads.

:class:`NvmlEvents` owns an NVML event set registered on every physical GPU (NVML cannot
deliver events per MIG handle) and turns what NVML says into :class:`Finding` values:
which GPU, which MIG device if NVML attributes the event, and what happened. It never
decides health; the monitor does.

The GPU an event is about is found from the handle NVML puts in the event, matched
against the handles registered here, not by asking NVML for the index: a GPU that has
fallen off the bus answers ``nvmlDeviceGetIndex`` with GPU_IS_LOST, and guessing would
mark every GPU of the node.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from mig.nvml import (
    NVML_FAILURES,
    Handle,
    Nvml,
    NVMLError_GpuIsLost,
    NVMLError_NotSupported,
    NVMLError_Timeout,
    nvmlEventTypeDoubleBitEccError,
    nvmlEventTypeXidCriticalError,
)

log = structlog.get_logger("fatia.health")

UNATTRIBUTED = 0xFFFFFFFF
EVENT_MASK = nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError


class What(StrEnum):
    XID = "xid"
    ECC = "double-bit ECC error"
    LOST = "lost"


@dataclass(frozen=True)
class Finding:
    """Evidence about one GPU (or one of its MIG devices, by GPU/compute instance id)."""

    gpu: int
    what: What
    xid: int = 0
    gpu_instance: int = UNATTRIBUTED
    compute_instance: int = UNATTRIBUTED

    @property
    def attributed(self) -> bool:
        return self.gpu_instance != UNATTRIBUTED and self.compute_instance != UNATTRIBUTED


class EventSetFailed(Exception):
    """NVML refused the event set itself (create or wait): no GPU's health is known."""


def _key(handle: Handle) -> int | None:
    value = ctypes.cast(handle, ctypes.c_void_p).value
    return int(value) if value is not None else None


class NvmlEvents:
    """One event set and the GPUs registered in it. Owned by the health thread."""

    def __init__(self, nvml: Nvml, *, on_error: Callable[[str, BaseException], None]) -> None:
        self._nvml = nvml
        self._on_error = on_error
        self._set: Handle | None = None
        self._handles: dict[int, Handle] = {}  # registered GPU index -> device handle
        self._index_of: dict[int, int] = {}  # handle address -> GPU index
        self.stale = False  # a registered GPU is lost: the owner should open a new set

    @property
    def registered(self) -> frozenset[int]:
        return frozenset(self._handles)

    def open(self) -> list[Finding]:
        """A new event set with every GPU that can be registered; findings about the rest."""
        try:
            self._set = self._nvml.nvmlEventSetCreate()
            count = self._nvml.nvmlDeviceGetCount()
        except NVML_FAILURES as exc:
            self._on_error("nvmlEventSetCreate", exc)
            raise EventSetFailed(f"the NVML health loop cannot start: {exc}") from exc
        return [f for index in range(count) for f in self.register(index)]

    def close(self) -> None:
        if self._set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._set)
            except NVML_FAILURES as exc:
                self._on_error("nvmlEventSetFree", exc)
        self._set, self._handles, self._index_of, self.stale = None, {}, {}, False

    def register(self, index: int) -> list[Finding]:
        """Add GPU ``index`` to the set; a lost GPU is a finding, other failures are errors."""
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mask = nvml.nvmlDeviceGetSupportedEventTypes(handle) & EVENT_MASK
            nvml.nvmlDeviceRegisterEvents(handle, mask, self._set)
        except NVMLError_GpuIsLost:
            return [Finding(index, What.LOST)]
        except NVMLError_NotSupported:
            # Some boards deliver no events at all; that is no reason to call them unhealthy.
            # The liveness read still covers them.
            log.warning("health_events_not_supported", gpu=index)
            return []
        except NVML_FAILURES as exc:
            self._on_error("nvmlDeviceRegisterEvents", exc)
            return []
        self._handles[index] = handle
        key = _key(handle)
        if key is not None:
            self._index_of[key] = index
        return []

    def wait(self, timeout_ms: int) -> list[Finding]:
        """The next event (or nothing by the timeout), as findings."""
        try:
            data = self._nvml.nvmlEventSetWait_v2(self._set, timeout_ms)
        except NVMLError_Timeout:
            return []
        except NVMLError_GpuIsLost as exc:
            # NVML ends the wait when a registered GPU is lost, without saying which one.
            self._on_error("nvmlEventSetWait", exc)
            return self.probe(self._handles)
        except NVML_FAILURES as exc:
            self._on_error("nvmlEventSetWait", exc)
            raise EventSetFailed(f"waiting for NVML events failed: {exc}") from exc
        index = self._gpu_of(data.device)
        if index is None:
            return self.probe(self._handles)  # an event from a GPU we cannot name
        if data.eventType & nvmlEventTypeXidCriticalError:
            what, xid = What.XID, int(data.eventData)
        elif data.eventType & nvmlEventTypeDoubleBitEccError:
            what, xid = What.ECC, 0
        else:
            return []
        return [Finding(index, what, xid, int(data.gpuInstanceId), int(data.computeInstanceId))]

    def probe(self, indices: Iterable[int]) -> list[Finding]:
        """A cheap read of each GPU in ``indices``: a finding for each that is lost."""
        found = []
        for index in indices:
            try:
                handle = self._handles.get(index) or self._nvml.nvmlDeviceGetHandleByIndex(index)
                self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except NVMLError_GpuIsLost:
                found.append(Finding(index, What.LOST))
            except NVML_FAILURES as exc:
                self._on_error("nvmlDeviceGetMemoryInfo", exc)
        if any(f.gpu in self._handles for f in found):
            self.stale = True  # NVML would end every wait on this set with GPU_IS_LOST
        return found

    def _gpu_of(self, device: Handle) -> int | None:
        key = _key(device)
        if key is not None and key in self._index_of:
            return self._index_of[key]
        try:
            index = int(self._nvml.nvmlDeviceGetIndex(device))
        except NVML_FAILURES as exc:
            self._on_error("nvmlDeviceGetIndex", exc)
            return None
        return index if index in self._handles else None
