"""The crash-safe record of a MIG apply: ``mig-journal.json`` in the state directory.

Write before acting: each NVML step is appended (``state: started``) and the file is
replaced atomically (write a temporary file, fsync, rename) *before* the step is taken,
and marked ``done`` after it. So a process killed at any point leaves a journal that says
what it was doing, the layouts before the apply (the last layout known to be whole) and
the targets. The next start reads it: a rollback that a crash interrupted is finished,
an interrupted apply is reported and reconciled again.

One MIG writer per node: :meth:`Journal.locked` takes an exclusive ``flock`` on
``mig.lock`` beside the journal, so an old and a new fatia that overlap during a rolling
update never interleave their steps.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from mig.files import atomic_write, exclusive_lock
from mig.layout import Layout, Placement, normalize
from mig.nvml import error_name

log = structlog.get_logger("fatia.mig")

JOURNAL_FILE = "mig-journal.json"
LOCK_FILE = "mig.lock"


class Journal:
    """The journal file of one state directory, and the apply being recorded in it."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._record: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self._state_dir / JOURNAL_FILE

    def read(self) -> dict[str, Any] | None:
        """The journal an apply left behind (it did not finish), if any."""
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("journal_unreadable", path=str(self.path), error=str(exc))
            return None

    @property
    def before(self) -> dict[str, Any]:
        """Per GPU UUID: ``{"index", "mig", "layout"}`` as it was before the apply."""
        assert self._record is not None
        return dict(self._record["before"])

    def begin(self, before: dict[str, dict[str, Any]], target: dict[str, dict[str, Any]]) -> None:
        """Start recording an apply. An interrupted apply's "before" wins: it is the last
        layout known to be whole."""
        previous = self.read()
        if previous is not None:
            before = {**before, **previous.get("before", {})}
        self._record = {
            "id": uuid.uuid4().hex[:12],
            "started": time.time(),
            "phase": "applying",
            "before": before,
            "target": target,
            "steps": [],
        }
        self._write()

    def resume(self, record: dict[str, Any]) -> None:
        """Go on recording into a journal found at start (to finish its rollback)."""
        self._record = record

    @contextlib.contextmanager
    def step(self, op: str, gpu: int, **details: Any) -> Iterator[None]:
        """Record ``op`` as started before the body runs and as done after it succeeds."""
        assert self._record is not None
        entry = {"op": op, "gpu": gpu, **details, "state": "started"}
        self._record["steps"].append(entry)
        self._write()
        log.info("mig_step", op=op, gpu=gpu, **details)
        try:
            yield
        except Exception as exc:
            entry["state"], entry["error"] = "failed", error_name(exc)
            self._write()
            raise
        entry["state"] = "done"
        self._write()

    def rolling_back(self, error: str) -> None:
        assert self._record is not None
        self._record["phase"] = "rolling-back"
        self._record["error"] = error
        self._write()

    def end(self) -> None:
        """The apply is over (done or rolled back): nothing to recover any more."""
        self._record = None
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One MIG writer per node, even while an old and a new fatia overlap."""
        with exclusive_lock(self._state_dir / LOCK_FILE):
            yield

    def _write(self) -> None:
        atomic_write(self.path, json.dumps(self._record), durable=True)


def dump_layout(layout: Sequence[Placement]) -> list[list[Any]]:
    return [[p.start, p.size, p.profile] for p in layout]


def load_layout(raw: list[list[Any]]) -> Layout:
    return normalize(Placement(int(s), int(n), str(p)) for s, n, p in raw)
