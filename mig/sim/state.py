"""The simulated GPU node's state, kept in one JSON file under the state directory.

The simulated NVML (:mod:`mig.sim.nvml`) is a view over this file, so the
state outlives the process: a daemon killed half-way through an apply finds the
GPUs exactly as it left them when it starts again, as on real hardware. Tests,
the demo and ``fatia sim`` change the same file from other processes: they put
processes on instances, inject NVML errors and XIDs, lose or reset GPUs.

Concurrency: writers take an exclusive ``flock`` on a side file and replace the
state file atomically (write to a temporary file, then ``rename``), so readers
never see a torn file. Every write stamps the file with a strictly increasing
mtime, so a reader can keep a parsed copy for as long as the file's inode and
mtime have not changed (inode numbers alone are reused, and clock ticks are
coarser than two quick writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path

import pynvml

from mig.catalog import MODELS
from mig.errors import FatiaError
from mig.files import atomic_write, exclusive_lock

STATE_FILE = "nvml-sim.json"
SIM_PROC_ROOT = "proc"  # the simulated /proc (driver files such as nvidia-caps/mig-minors)
_UUID_NAMESPACE = uuid.UUID("5d1f2a6e-2f6b-4a59-9a53-6661746961aa")

# Bus numbers of the eight GPUs of a DGX-class board, in NVML index order.
_BUSES = (0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD)


@dataclass
class SimComputeInstance:
    id: int
    profile_id: int  # compute-instance profile id (= NVML CI enum)
    slices: int
    uuid: str


@dataclass
class SimGpuInstance:
    id: int
    profile_id: int  # the model's info.id
    start: int
    size: int
    compute_instances: list[SimComputeInstance] = field(default_factory=list)


@dataclass
class SimProcess:
    pid: int
    used_mib: int
    gpu_instance: int | None = None  # None: runs on the whole GPU
    compute_instance: int | None = None


@dataclass
class SimGpu:
    index: int
    model: str
    uuid: str
    bus_id: str
    numa_node: int
    minor: int
    mig_current: int = 0
    mig_pending: int = 0
    lost: bool = False
    clients: int = 0  # other processes holding the GPU open (DCGM, nvsm, ...), no compute work
    mig_serial: int = 0  # bumped for every compute instance ever created (MIG UUIDs)
    timeslice: int = 0  # compute-policy time-slice interval (mig.timeslice.INTERVALS), not NVML's
    gpu_instances: list[SimGpuInstance] = field(default_factory=list)
    processes: list[SimProcess] = field(default_factory=list)


@dataclass
class SimFault:
    """Make matching NVML calls fail (or kill the caller).

    ``call`` is an NVML function name, or ``"mutating"`` for any call that changes the
    GPUs (mode change, create, destroy); ``gpu`` limits it to one GPU (a MIG device
    counts as its GPU). The first ``skip`` matching calls pass; then ``count`` of them
    fail (``None``: every one, until the fault is cleared). ``action`` is ``"raise"``
    (raise ``NVMLError(error)``; see :func:`nvml_error_code` for names) or ``"kill"``
    (SIGKILL the calling process); ``when`` is ``"before"`` or ``"after"`` the call
    takes effect.
    """

    call: str
    error: int = 999
    count: int | None = 1
    skip: int = 0
    gpu: int | None = None
    action: str = "raise"
    when: str = "before"


def nvml_error_code(error: str | int) -> int:
    """``3``, ``"3"``, ``"NOT_SUPPORTED"`` or ``"NVML_ERROR_NOT_SUPPORTED"`` -> 3."""
    if isinstance(error, int):
        return error
    text = error.strip().upper()
    if text.isdigit():
        return int(text)
    code = getattr(pynvml, text if text.startswith("NVML_ERROR_") else f"NVML_ERROR_{text}", None)
    if not isinstance(code, int):
        raise FatiaError(f"unknown NVML error {error!r} (a number or a name such as NOT_SUPPORTED)")
    return code


@dataclass
class SimEvent:
    seq: int
    gpu: int
    event_type: int
    data: int
    gpu_instance: int = 0xFFFFFFFF
    compute_instance: int = 0xFFFFFFFF


@dataclass
class SimNode:
    node: str
    driver_version: str
    cuda_version: int
    gpus: list[SimGpu]
    faults: list[SimFault] = field(default_factory=list)
    events: list[SimEvent] = field(default_factory=list)
    event_seq: int = 0
    next_pid: int = 4000
    passthrough: bool = False  # the node is a VM with its GPUs passed through: no GPU reset

    @property
    def models(self) -> list[str]:
        return [g.model for g in self.gpus]

    def to_json(self) -> str:
        # Written on every simulated NVML change: plain dicts straight from each instance's
        # __dict__ (dataclasses.asdict deep-copies every value) and no indentation.
        return json.dumps(_plain(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SimNode:
        raw = json.loads(text)
        gpus = []
        for g in raw.pop("gpus"):
            gis = [
                SimGpuInstance(
                    **{k: v for k, v in gi.items() if k != "compute_instances"},
                    compute_instances=[SimComputeInstance(**ci) for ci in gi["compute_instances"]],
                )
                for gi in g.pop("gpu_instances")
            ]
            procs = [SimProcess(**p) for p in g.pop("processes")]
            gpus.append(SimGpu(**g, gpu_instances=gis, processes=procs))
        return cls(
            gpus=gpus,
            faults=[SimFault(**f) for f in raw.pop("faults")],
            events=[SimEvent(**e) for e in raw.pop("events")],
            **raw,
        )


def parse_sim_spec(spec: str) -> list[str]:
    """``a100-40gb:2,h100-80gb`` -> one model key per GPU, in index order."""
    models: list[str] = []
    for part in spec.split(","):
        name, _, count = part.strip().partition(":")
        if name not in MODELS:
            raise FatiaError(
                f"unknown simulated GPU model {name!r} in 'sim:{spec}'; known models: {', '.join(MODELS)}"
            )
        try:
            n = int(count) if count else 1
        except ValueError:
            raise FatiaError(f"bad GPU count {count!r} for {name} in 'sim:{spec}'") from None
        if not 1 <= n <= 16:
            raise FatiaError(f"GPU count for {name} in 'sim:{spec}' must be 1..16, not {n}")
        models.extend([name] * n)
    if len(models) > 16:
        raise FatiaError(f"'sim:{spec}' describes {len(models)} GPUs; at most 16 are simulated")
    return models


def new_node(models: list[str], *, node: str) -> SimNode:
    """A freshly booted node: MIG disabled everywhere, no instances, no processes."""
    half = (len(models) + 1) // 2
    gpus = [
        SimGpu(
            index=i,
            model=model,
            uuid=f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node}/gpu/{i}')}",
            bus_id=f"00000000:{_BUSES[i] if i < len(_BUSES) else 0xC0 + i:02X}:00.0",
            numa_node=0 if i < half else 1,
            minor=i,
        )
        for i, model in enumerate(models)
    ]
    return SimNode(node=node, driver_version="580.95.05", cuda_version=13000, gpus=gpus)


def mig_uuid(gpu: SimGpu) -> str:
    """A fresh, deterministic MIG UUID for the next compute instance of ``gpu``."""
    gpu.mig_serial += 1
    return f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{gpu.uuid}/mig/{gpu.mig_serial}')}"


class SimStore:
    """The state file, read through a cache and changed under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._cached: SimNode | None = None
        self._cached_key: tuple[int, int, int] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def stamp(self) -> tuple[int, int] | None:
        """(inode, mtime) of the state file: it changes with every write."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def read(self) -> SimNode:
        """The current state. Callers must not change it; use :meth:`mutate`."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise FatiaError(f"no simulated GPU node at {self.path}") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cached is None or key != self._cached_key:
            self._cached = SimNode.from_json(self.path.read_text())
            self._cached_key = key
        return self._cached

    def write(self, node: SimNode) -> None:
        with self._locked():
            self._replace(node)

    @contextlib.contextmanager
    def mutate(self) -> Iterator[SimNode]:
        """Read the latest state under the lock, let the caller change it, write it back.

        If the body raises, nothing is written.
        """
        with self._locked():
            node = SimNode.from_json(self.path.read_text())
            yield node
            self._replace(node)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self._lock_path)

    def _replace(self, node: SimNode) -> None:
        try:
            previous = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            previous = 0
        # A strictly newer mtime on every write: readers detect changes by (inode, mtime).
        atomic_write(self.path, node.to_json(), mtime_ns=max(time.time_ns(), previous + 1000))
        self._cached, self._cached_key = None, None


def _plain(value: object) -> object:
    """Dataclasses and lists of them as JSON-ready dicts and lists."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if is_dataclass(value):
        return {key: _plain(item) for key, item in vars(value).items()}
    return value
