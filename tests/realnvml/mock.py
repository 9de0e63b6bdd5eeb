"""fatia's mock NVML seen from a test: its files, its environment, what it was asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIBRARY = "libnvidia-ml.so.1"


@dataclass
class MockNode:
    """The mock's files for one test, and the environment that points NVML at them."""

    library: Path
    root: Path
    gpus: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file = self.root / "node.conf"
        self.faults_file = self.root / "faults"
        self.state_file = self.root / "state"
        self.trace_file = self.root / "trace"
        self.faults_file.write_text("")

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_LIBRARY_PATH": str(self.library),
            "FATIA_MOCK_NVML_CONFIG": str(self.config_file),
            "FATIA_MOCK_NVML_FAULTS": str(self.faults_file),
            "FATIA_MOCK_NVML_STATE": str(self.state_file),
            "FATIA_MOCK_NVML_TRACE": str(self.trace_file),
        }

    def configure(self, gpus: list[str], *, driver: str = "550.54.15") -> None:
        """One ``gpu`` line per entry, e.g. ``"model=a100-40gb numa=0 mig=1"``.

        UUIDs and bus ids are given here unless the entry names them, so that a
        test knows them without asking NVML.
        """
        lines = [f"driver {driver}", "cuda 12040"]
        self.gpus = []
        for index, spec in enumerate(gpus):
            words = dict(w.split("=", 1) for w in spec.split())
            words.setdefault("uuid", f"GPU-{index:08x}-fa71-4e00-8000-{0xA100 + index:012x}")
            words.setdefault("bus", f"00000000:{0x10 + index:02X}:00.0")
            self.gpus.append(words["uuid"])
            lines.append("gpu " + " ".join(f"{k}={v}" for k, v in words.items()))
        self.config_file.write_text("\n".join(lines) + "\n")

    def inject(self, *lines: str) -> None:
        """Append fault or event lines (``lost 3``, ``fail 2 nvmlDeviceGetUUID UNKNOWN``,
        ``xid 1 48``); the library sees them on its next call."""
        with open(self.faults_file, "a") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())

    def clear_faults(self) -> None:
        """Drop the lost and fail lines but keep the events, whose numbering must not shrink."""
        kept = [
            line
            for line in self.faults_file.read_text().splitlines()
            if line.split()[:1] in (["xid"], ["ecc"])
        ]
        self.faults_file.write_text("".join(line + "\n" for line in kept))

    def calls(self) -> list[tuple[str, int, int]]:
        """Every NVML call the library answered so far: (name, GPU or -1, return code)."""
        try:
            text = self.trace_file.read_text()
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            name, gpu, rc = line.split()
            rows.append((name, int(gpu), int(rc)))
        return rows

    def registered_events(self) -> set[int]:
        """The GPUs some process registered NVML events for."""
        return {gpu for name, gpu, rc in self.calls() if name == "nvmlDeviceRegisterEvents" and rc == 0}

    def python(self, code: str, timeout: float = 30) -> str:
        """Run ``code`` in a child Python over this node's NVML; its stdout."""
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if out.returncode != 0:
            raise AssertionError(f"child python failed:\n{out.stderr}")
        return out.stdout

    def read(self) -> list[dict[str, Any]]:
        """What pynvml itself reads of every GPU from this library, in a child process."""
        return list(json.loads(self.python(READ)))


READ = r"""
import json, pynvml
pynvml.nvmlInit()
gpus = []
for i in range(pynvml.nvmlDeviceGetCount()):
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        gpus.append({"index": i, "uuid": str(pynvml.nvmlDeviceGetUUID(h)),
                     "name": str(pynvml.nvmlDeviceGetName(h)),
                     "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total >> 20,
                     "bus": str(pynvml.nvmlDeviceGetPciInfo(h).busId)})
    except pynvml.NVMLError as exc:
        gpus.append({"index": i, "error": type(exc).__name__})
print(json.dumps(gpus))
"""


def mapped_library(pid: int) -> list[str]:
    """The libnvidia-ml files a process has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps if "libnvidia-ml" in line})


def log_events(text: str) -> list[dict[str, Any]]:
    """fatia's JSON log lines (stderr also carries gRPC's own lines: skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def status(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / "status.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}
