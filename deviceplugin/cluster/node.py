"""The agent's state on its own Node: labels, the status annotation, and Events.

:class:`NodeReporter` publishes the agent's state on its Node: the label
``fatia.dev/config.state``, the annotation ``fatia.dev/config.status`` (JSON),
informational ``fatia.dev/`` labels, and Events. It works from its own thread with the
newest status only, retrying on conflicts and outages with backoff, so the agent never
waits for the API server.

Threads: the agent's thread only replaces ``_latest`` (a copy) and appends to the event
queue; everything else belongs to the reporter's thread.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from deviceplugin.agent.status import AgentStatus
from deviceplugin.cluster.kubeapi import KubeApi, path
from deviceplugin.retry import Backoff
from mig.errors import ApiError

log = structlog.get_logger("fatia.kube")

LABEL_PREFIX = "fatia.dev/"
STATE_LABEL = "fatia.dev/config.state"
STATUS_ANNOTATION = "fatia.dev/config.status"
EVENT_NAMESPACE = "default"  # where the kubelet, too, records Events about Nodes
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0
STOP_JOIN_S = 0.2
MAX_PENDING_EVENTS = 100  # kept while the API server is away; newer ones are dropped


def _label_value(value: str) -> str:
    """A valid label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return cleaned.strip("-_.")


def node_labels(status: AgentStatus) -> dict[str, str]:
    """The state label and the informational labels, like NVIDIA's feature discovery."""
    gpus = [g for g in status.gpus if g.mig not in ("lost", "unreadable")]
    labels = {
        STATE_LABEL: status.node_state,
        f"{LABEL_PREFIX}gpu.count": str(len(gpus)),
        f"{LABEL_PREFIX}mig.strategy": status.mig_strategy,
        f"{LABEL_PREFIX}gpu.replicas": str(status.replicas),
    }
    if gpus:
        labels[f"{LABEL_PREFIX}gpu.product"] = _label_value(gpus[0].product)
        labels[f"{LABEL_PREFIX}gpu.memory"] = str(gpus[0].memory_mib)
        labels[f"{LABEL_PREFIX}mig.capable"] = str(any(g.mig != "n/a" for g in gpus)).lower()
    return labels


def status_annotation(status: AgentStatus) -> str:
    return json.dumps(
        {
            "mode": status.mode,
            "phase": status.phase,
            "state": status.node_state,
            "config": status.applied_config,
            "desired": status.desired_config,
            "source": status.config_source,
            "message": status.message,
            "time": datetime.fromtimestamp(status.updated, UTC).isoformat(),
            "gpus": [{"index": g.index, "mig": g.mig, "layout": g.layout} for g in status.gpus],
            "resources": status.resources,
            "waiting": status.waiting,
        },
        sort_keys=True,
    )


class NodeReporter:
    """Patches the agent's status onto its Node and records Events, from its own thread."""

    def __init__(
        self,
        api: KubeApi,
        *,
        node_name: str,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self._api = api
        self._node_path = path("api", "v1", "nodes", node_name)
        self._backoff = backoff or Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        self.node_name = node_name
        self._clock = clock
        self._latest: AgentStatus | None = None
        # Events waiting to be recorded; the oldest stays until its create succeeds.
        self._events: deque[tuple[str, str, str]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-reporter", daemon=True)
        self._node_uid: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # a daemon thread; it may sit in an API call
            self._thread.join(STOP_JOIN_S)

    # -- the agent's side (never blocks) -------------------------------------

    def status(self, status: AgentStatus) -> None:
        self._latest = _copy(status)
        self._wake.set()

    def event(self, kind: str, reason: str, message: str) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            log.warning("event_dropped", reason=reason)
        else:
            self._events.append((kind, reason, message))
        self._wake.set()

    # -- the reporter's thread --------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    self._flush()
                    self._backoff.reset()
                    break
                except Exception as exc:  # outage or conflict: try again later
                    log.warning("node_report_failed", error=f"{type(exc).__name__}: {exc}")
                    if self._stop.wait(self._backoff.next()):
                        return

    def _flush(self) -> None:
        # Events first: a reader who sees the Node's new state also finds the Event behind it.
        while self._events:
            self._create_event(*self._events[0])
            self._events.popleft()
        status = self._latest
        if status is not None:
            self._patch_node(status)
            if self._latest is status:
                self._latest = None

    def _patch_node(self, status: AgentStatus) -> None:
        body = {
            "metadata": {
                "labels": node_labels(status),
                "annotations": {STATUS_ANNOTATION: status_annotation(status)},
            }
        }
        for attempt in range(5):
            try:
                node = self._api.patch(self._node_path, body)
                self._node_uid = node["metadata"]["uid"]
                return
            except ApiError as exc:
                if exc.status != 409 or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _create_event(self, kind: str, reason: str, message: str) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self._node_uid is None:
            self._node_uid = self._api.get(self._node_path)["metadata"]["uid"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{self.node_name}.fatia.{uuid.uuid4().hex[:10]}",
                "namespace": EVENT_NAMESPACE,
            },
            "involvedObject": {
                "kind": "Node",
                "name": self.node_name,
                "uid": self._node_uid,
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "fatia", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "fatia",
            "reportingInstance": self.node_name,
        }
        self._api.create(path("api", "v1", "namespaces", EVENT_NAMESPACE, "events"), event)
        log.info("event_recorded", reason=reason, type=kind)


def _copy(status: AgentStatus) -> AgentStatus:
    return copy.deepcopy(status)
