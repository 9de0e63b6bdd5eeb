"""API mode: the per-node ConfigMap in, status on the Node out.

Only ``fatia run`` in API mode imports this module (and with it the
``kubernetes`` client, which is slow to import and large).

:class:`ConfigMapSource` lists and watches the ConfigMaps of fatia's namespace
and delivers the effective one: ``fatia-<node-name>``, or ``fatia-default``
when the node has none. It resumes the watch from the last resourceVersion
after a disconnect (with backoff) and lists again when the server answers
410 Gone. While the API server is away nothing is delivered, so an outage
changes nothing on the node and the device plugin keeps serving.

:class:`NodeReporter` publishes the agent's state on its own Node: the label
``fatia.dev/config.state``, the annotation ``fatia.dev/config.status`` (JSON),
informational ``fatia.dev/`` labels, and Events. It works from its own thread
with the newest status only, retrying on conflicts and outages, so the agent
never waits for the API server.
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
from typing import Any

import structlog
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from deviceplugin.agent.status import AgentStatus
from deviceplugin.config.source import CONFIG_KEY, ConfigSink, ConfigText

log = structlog.get_logger("fatia.kube")

LABEL_PREFIX = "fatia.dev/"
STATE_LABEL = "fatia.dev/config.state"
STATUS_ANNOTATION = "fatia.dev/config.status"
DEFAULT_CONFIGMAP = "fatia-default"
EVENT_NAMESPACE = "default"  # where the kubelet, too, records Events about Nodes
WATCH_TIMEOUT_S = 300
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0
MAX_PENDING_EVENTS = 100  # kept while the API server is away; newer ones are dropped


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from ``--kubeconfig``, or the in-cluster service account."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 1  # fatia retries itself, with backoff
    return client.ApiClient(configuration)


class ConfigMapSource:
    """Delivers the effective per-node ConfigMap's ``config.yaml`` to the agent."""

    def __init__(self, api: client.ApiClient, *, namespace: str, node_name: str) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.names = (f"fatia-{node_name}", DEFAULT_CONFIGMAP)
        self._maps: dict[str, dict[str, Any]] = {}
        self._delivered: ConfigText | None = None
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.relists = 0

    def start(self, sink: ConfigSink) -> None:
        self._thread = threading.Thread(target=self._run, args=(sink,), name="configmap-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(5)

    def effective(self) -> ConfigText:
        for name in self.names:
            found = self._maps.get(name)
            if found is None:
                continue
            origin = f"configmap {self.namespace}/{name}"
            data = found.get("data") or {}
            if CONFIG_KEY not in data:
                return ConfigText(None, origin, error=f"{origin} has no key {CONFIG_KEY}")
            return ConfigText(data[CONFIG_KEY], origin)
        return ConfigText(None, f"no configmap {' or '.join(self.names)} in {self.namespace}")

    def _deliver(self, sink: ConfigSink) -> None:
        current = self.effective()
        if current != self._delivered:
            self._delivered = current
            sink.config_changed(current)

    def _run(self, sink: ConfigSink) -> None:
        backoff = BACKOFF_MIN_S
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                    self._deliver(sink)
                version = self._follow(sink, version)
                backoff = BACKOFF_MIN_S
            except ApiException as exc:
                if exc.status == 410:
                    log.info("configmap_watch_expired", resource_version=version)
                    version = None
                    continue
                log.warning("configmap_watch_failed", status=exc.status, reason=exc.reason)
            except Exception as exc:  # connection refused, reset, timeouts: the API is away
                log.warning("configmap_watch_failed", error=f"{type(exc).__name__}: {exc}")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> str:
        listed: Any = self._core.list_namespaced_config_map(self.namespace, _request_timeout=10)
        self._maps = {
            item.metadata.name: {"data": item.data}
            for item in listed.items
            if item.metadata.name in self.names
        }
        self.relists += 1
        return str(listed.metadata.resource_version)

    def _follow(self, sink: ConfigSink, version: str) -> str:
        """Watch from ``version`` until the server ends the watch; returns the newest version."""
        self._watch = watch.Watch()
        for event in self._watch.stream(
            self._core.list_namespaced_config_map,
            self.namespace,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            allow_watch_bookmarks=True,
            _request_timeout=WATCH_TIMEOUT_S + 30,
        ):
            if self._stop.is_set():
                break
            kind, obj = event["type"], event["object"]
            if kind == "BOOKMARK":
                version = str(obj["metadata"]["resourceVersion"])
                continue
            version = str(obj.metadata.resource_version)
            if obj.metadata.name not in self.names:
                continue
            if kind == "DELETED":
                self._maps.pop(obj.metadata.name, None)
            else:
                self._maps[obj.metadata.name] = {"data": obj.data}
            self._deliver(sink)
        return version


def _label_value(value: str) -> str:
    """A valid label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return cleaned.strip("-_.")


def node_labels(status: AgentStatus) -> dict[str, str]:
    """The state label and the informational labels, like NVIDIA's feature discovery."""
    gpus = [g for g in status.gpus if g.mig != "lost"]
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
        self, api: client.ApiClient, *, node_name: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._core = client.CoreV1Api(api)
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
        self._thread.join(5)

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
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    self._flush()
                    backoff = BACKOFF_MIN_S
                    break
                except Exception as exc:  # outage or conflict: try again later
                    log.warning("node_report_failed", error=f"{type(exc).__name__}: {exc}")
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _flush(self) -> None:
        status = self._latest
        if status is not None:
            self._patch_node(status)
            if self._latest is status:
                self._latest = None
        while self._events:
            self._create_event(*self._events[0])
            self._events.popleft()

    def _patch_node(self, status: AgentStatus) -> None:
        body = {
            "metadata": {
                "labels": node_labels(status),
                "annotations": {STATUS_ANNOTATION: status_annotation(status)},
            }
        }
        for attempt in range(5):
            try:
                node: Any = self._core.patch_node(
                    self.node_name, body, _content_type="application/merge-patch+json", _request_timeout=10
                )
                self._node_uid = node.metadata.uid
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _create_event(self, kind: str, reason: str, message: str) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        if self._node_uid is None:
            node: Any = self._core.read_node(self.node_name, _request_timeout=10)
            self._node_uid = node.metadata.uid
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{self.node_name}.fatia.{uuid.uuid4().hex[:10]}", namespace=EVENT_NAMESPACE
            ),
            involved_object=client.V1ObjectReference(
                kind="Node", name=self.node_name, uid=self._node_uid, api_version="v1"
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=client.V1EventSource(component="fatia", host=self.node_name),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="fatia",
            reporting_instance=self.node_name,
        )
        self._core.create_namespaced_event(EVENT_NAMESPACE, event, _request_timeout=10)
        log.info("event_recorded", reason=reason, type=kind)


def _copy(status: AgentStatus) -> AgentStatus:
    return copy.deepcopy(status)
