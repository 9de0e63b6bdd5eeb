"""What the agent is doing, written where ``fatia status`` can read it.

The agent rewrites ``status.json`` in its state directory (atomically) on every
change of phase; ``fatia status`` prints it as a table or JSON. The same data
feeds the Node's label and annotation in API mode.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mig.files import atomic_write

STATUS_FILE = "status.json"


class Phase(StrEnum):
    """What the agent is doing (``fatia status``)."""

    PENDING = "pending"
    PLANNING = "planning"
    APPLYING = "applying"
    WAITING = "waiting"
    IDLE = "idle"
    FAILED = "failed"


class NodeState(StrEnum):
    """The Node label ``fatia.dev/config.state``."""

    PENDING = "pending"
    WAITING = "waiting"
    APPLYING = "applying"
    SUCCESS = "success"
    FAILED = "failed"


NODE_STATES = {
    Phase.PENDING: NodeState.PENDING,
    Phase.PLANNING: NodeState.PENDING,
    Phase.APPLYING: NodeState.APPLYING,
    Phase.WAITING: NodeState.WAITING,
    Phase.IDLE: NodeState.SUCCESS,
    Phase.FAILED: NodeState.FAILED,
}


@dataclass
class GpuStatus:
    index: int
    uuid: str
    product: str
    mig: str  # "enabled", "disabled", "pending enable", "pending disable", "lost", "unreadable", "n/a"
    layout: list[str] = field(default_factory=list)  # "3g.20gb@4"
    memory_mib: int = 0


@dataclass
class AgentStatus:
    phase: Phase = Phase.PENDING
    message: str = "starting"
    applied_config: str | None = None  # digest of the config now in effect
    desired_config: str | None = None  # digest of the latest config seen
    config_source: str | None = None
    updated: float = field(default_factory=time.time)
    gpus: list[GpuStatus] = field(default_factory=list)
    resources: dict[str, int] = field(default_factory=dict)  # name -> advertised devices
    unhealthy: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    mig_strategy: str = "mixed"
    replicas: int = 1  # the largest time-slicing replica count of any device
    mode: str = "device-plugin"  # or "dra" (fatia run --mode)

    @property
    def node_state(self) -> NodeState:
        return NODE_STATES[self.phase]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.node_state}


def write_status(state_dir: Path, status: AgentStatus) -> None:
    status.updated = time.time()
    atomic_write(state_dir / STATUS_FILE, json.dumps(status.to_dict(), indent=1))


def read_status(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / STATUS_FILE).read_text()))


def format_table(status: dict[str, Any]) -> str:
    """The human view of ``fatia status``."""
    age = time.time() - status.get("updated", time.time())
    lines = [
        f"mode:     {status.get('mode', 'device-plugin')}",
        f"phase:    {status['phase']} (node state {status.get('state', '?')}, {age:.0f}s ago)",
        f"message:  {status['message']}",
        f"config:   applied {status.get('applied_config') or '-'}"
        f"  latest {status.get('desired_config') or '-'}  from {status.get('config_source') or '-'}",
    ]
    for item in status.get("waiting", []):
        lines.append(f"waiting:  {item}")
    lines.append("")
    lines.append(f"{'GPU':<4} {'PRODUCT':<24} {'MIG':<16} LAYOUT")
    for gpu in status.get("gpus", []):
        layout = ", ".join(gpu["layout"]) or "-"
        lines.append(f"{gpu['index']:<4} {gpu['product'][:24]:<24} {gpu['mig']:<16} {layout}")
    lines.append("")
    lines.append(f"{'RESOURCE':<32} DEVICES")
    for name, count in sorted(status.get("resources", {}).items()):
        lines.append(f"{name:<32} {count}")
    for uuid in status.get("unhealthy", []):
        lines.append(f"unhealthy: {uuid}")
    return "\n".join(lines)
