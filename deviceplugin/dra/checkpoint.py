"""What DRA mode has prepared, and is preparing, kept across restarts.

The kubelet unprepares a claim by UID only, possibly after fatia restarted, so every
prepared claim is recorded with the devices it got: the pool device, the GPU, the
placement, the MIG device fatia cut, the sharing its parameters chose (so that a repeated
prepare, after a restart too, answers the same, and unprepare knows what to put back) and
the CDI ids it returned. A claim is written *before* its instance is created (state
``preparing``, the placement it will take) and again once it is ready (``prepared``), so
an instance found after a crash at a placement some claim was preparing is known to be
fatia's: the retried prepare completes or adopts it, an unprepare destroys it, and
nothing is left behind. Under ``dra: {reuse: identical}`` an unprepare may instead leave
the instance in place: the claim's record goes and the instance is recorded as *kept* in
the same write, so that at every moment it is either a claim's or kept, never neither (see
:mod:`.reuse`). Every instance a record or a kept entry names is fatia's own
(:meth:`Checkpoint.owned`); any other instance is never touched.

The file is replaced whole and fsynced on every change (:func:`mig.files.atomic_write`).
One that cannot be read is set aside (renamed ``.corrupt``) and fatia starts with none,
which is safe: the instances it named then count as someone else's and are left alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from deviceplugin.dra.sharing import Sharing
from mig.files import atomic_write
from mig.layout import Placement
from mig.timeslice import INTERVALS

log = structlog.get_logger("fatia.dra")

CHECKPOINT_FILE = "dra-checkpoint.json"
PREPARING = "preparing"
PREPARED = "prepared"


@dataclass(frozen=True)
class PreparedDevice:
    """One allocated device of a claim and what fatia made of it."""

    device: str  # the pool's device name
    request_names: tuple[str, ...]
    pool: str
    gpu_uuid: str
    gpu_index: int
    placement: Placement | None = None  # None: a whole GPU
    mig_uuid: str | None = None  # the MIG device cut, once it exists
    cdi_ids: tuple[str, ...] = ()
    share_id: str | None = None
    sharing: Sharing | None = None  # from the claim's gpu.fatia.dev parameters

    @property
    def uuid(self) -> str | None:
        """The device the container gets: the MIG device, or the whole GPU."""
        return self.mig_uuid if self.placement is not None else self.gpu_uuid


@dataclass(frozen=True)
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: str  # PREPARING or PREPARED
    devices: tuple[PreparedDevice, ...] = field(default=())

    def prepared(self, devices: tuple[PreparedDevice, ...]) -> ClaimRecord:
        return replace(self, state=PREPARED, devices=devices)


class Checkpoint:
    """The records, by claim UID, and the kept instances. Thread-safe; every change is
    durable before it returns."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CHECKPOINT_FILE
        self._lock = threading.Lock()
        self._claims, self._kept = self._load()

    def get(self, uid: str) -> ClaimRecord | None:
        with self._lock:
            return self._claims.get(uid)

    def records(self) -> tuple[ClaimRecord, ...]:
        with self._lock:
            return tuple(self._claims.values())

    def kept(self) -> tuple[PreparedDevice, ...]:
        """Instances fatia cut that no claim holds, left in place for reuse."""
        with self._lock:
            return tuple(self._kept)

    def put(self, record: ClaimRecord, *, adopted: Collection[PreparedDevice] = ()) -> None:
        """Record a claim; the kept instances it ``adopted`` are no longer kept (one write)."""
        with self._lock:
            self._claims[record.uid] = record
            self._kept = [k for k in self._kept if k not in adopted]
            self._save()

    def remove(self, uid: str, *, keep: Sequence[PreparedDevice] = ()) -> None:
        """Forget a claim; its instances in ``keep`` stay as kept ones (one write)."""
        with self._lock:
            if self._claims.pop(uid, None) is not None or keep:
                self._kept += [replace(d, request_names=(), cdi_ids=(), share_id=None) for d in keep]
                self._save()

    def unkeep(self, devices: Collection[PreparedDevice]) -> None:
        with self._lock:
            if any(k in devices for k in self._kept):
                self._kept = [k for k in self._kept if k not in devices]
                self._save()

    def owned(self) -> dict[str, set[Placement]]:
        """GPU UUID -> the placements of instances fatia cut (or is cutting) for a claim, or kept."""
        found: dict[str, set[Placement]] = {}
        for device in (*(d for r in self.records() for d in r.devices), *self.kept()):
            if device.placement is not None:
                found.setdefault(device.gpu_uuid, set()).add(device.placement)
        return found

    def holder(self, gpu_uuid: str, placement: Placement) -> ClaimRecord | None:
        """The claim whose device is (or will be) the instance at ``placement``."""
        return next(
            (
                r
                for r in self.records()
                if any(d.gpu_uuid == gpu_uuid and d.placement == placement for d in r.devices)
            ),
            None,
        )

    def _save(self) -> None:
        data = {
            "version": 1,
            "claims": [_dump(r) for r in self._claims.values()],
            "kept": [_dump_device(d) for d in self._kept],
        }
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True), durable=True)

    def _load(self) -> tuple[dict[str, ClaimRecord], list[PreparedDevice]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}, []
        try:
            data = json.loads(text)
            claims = {r.uid: r for r in (_load(item) for item in data["claims"])}
            return claims, [_load_device(d) for d in data.get("kept", [])]
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            log.error("dra_checkpoint_unreadable", path=str(self.path), moved_to=str(aside), error=str(exc))
            return {}, []


def _dump(record: ClaimRecord) -> dict[str, Any]:
    return {
        "uid": record.uid,
        "namespace": record.namespace,
        "name": record.name,
        "state": record.state,
        "devices": [_dump_device(d) for d in record.devices],
    }


def _dump_device(d: PreparedDevice) -> dict[str, Any]:
    p = d.placement
    s = d.sharing
    return {
        "device": d.device,
        "requestNames": list(d.request_names),
        "pool": d.pool,
        "gpuUUID": d.gpu_uuid,
        "gpuIndex": d.gpu_index,
        "placement": None if p is None else {"start": p.start, "size": p.size, "profile": p.profile},
        "migUUID": d.mig_uuid,
        "cdiIDs": list(d.cdi_ids),
        "shareID": d.share_id,
        "sharing": None if s is None else {"strategy": s.strategy, "interval": s.interval},
    }


def _load(item: dict[str, Any]) -> ClaimRecord:
    devices = tuple(_load_device(d) for d in item["devices"])
    state = str(item["state"])
    if state not in (PREPARING, PREPARED):
        raise ValueError(f"unknown state {state!r}")
    return ClaimRecord(str(item["uid"]), str(item["namespace"]), str(item["name"]), state, devices)


def _load_device(d: dict[str, Any]) -> PreparedDevice:
    p = d["placement"]
    return PreparedDevice(
        device=str(d["device"]),
        request_names=tuple(str(n) for n in d["requestNames"]),
        pool=str(d["pool"]),
        gpu_uuid=str(d["gpuUUID"]),
        gpu_index=int(d["gpuIndex"]),
        placement=None if p is None else Placement(int(p["start"]), int(p["size"]), str(p["profile"])),
        mig_uuid=d.get("migUUID"),
        cdi_ids=tuple(str(i) for i in d.get("cdiIDs", ())),
        share_id=d.get("shareID"),
        sharing=_load_sharing(d.get("sharing")),
    )


def _load_sharing(raw: dict[str, Any] | None) -> Sharing | None:
    if raw is None:
        return None
    interval = str(raw["interval"])
    if interval not in INTERVALS:
        raise ValueError(f"unknown time-slice interval {interval!r}")
    return Sharing(str(raw["strategy"]), interval)
