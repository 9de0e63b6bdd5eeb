"""The per-node ConfigMap, watched and delivered to the agent.

:class:`ConfigMapSource` lists and watches the ConfigMaps of fatia's namespace and
delivers the effective one: ``fatia-<node-name>``, or ``fatia-default`` when the node has
none. It resumes the watch from the last resourceVersion after a disconnect (with
backoff) and lists again when the server answers 410 Gone. While the API server is away
nothing is delivered, so an outage changes nothing on the node and the device plugin
keeps serving.

Its thread owns every field; the agent only receives :class:`ConfigText` values.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import structlog

from deviceplugin.cluster.kubeapi import KubeApi, Params, Watch, path
from deviceplugin.config.source import CONFIG_KEY, ConfigSink, ConfigText
from deviceplugin.config.yamlload import DocumentError, decode
from deviceplugin.retry import Backoff
from mig.errors import ApiError

log = structlog.get_logger("fatia.kube")

DEFAULT_CONFIGMAP = "fatia-default"
WATCH_TIMEOUT_S = 300
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0
STOP_JOIN_S = 0.2


class ConfigMapSource:
    """Delivers the effective per-node ConfigMap's ``config.yaml`` to the agent."""

    def __init__(
        self, api: KubeApi, *, namespace: str, node_name: str, backoff: Backoff | None = None
    ) -> None:
        self._api = api
        self._path = path("api", "v1", "namespaces", namespace, "configmaps")
        self._backoff = backoff or Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        self.namespace = namespace
        self.names = (f"fatia-{node_name}", DEFAULT_CONFIGMAP)
        self._maps: dict[str, dict[str, Any]] = {}
        self._delivered: ConfigText | None = None
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self.relists = 0

    def start(self, sink: ConfigSink) -> None:
        self._thread = threading.Thread(target=self._run, args=(sink,), name="configmap-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        watching = self._watch
        if watching is not None:
            watching.stop()
        if self._thread is not None:  # a daemon thread; it may sit in a watch read
            self._thread.join(STOP_JOIN_S)

    def effective(self) -> ConfigText:
        for name in self.names:
            found = self._maps.get(name)
            if found is None:
                continue
            origin = f"configmap {self.namespace}/{name}"
            data = found.get("data") or {}
            if CONFIG_KEY in data:
                return ConfigText(data[CONFIG_KEY], origin)
            binary = found.get("binaryData") or {}
            if CONFIG_KEY in binary:  # `kubectl create configmap --from-file` of non-UTF-8 bytes
                return _decoded(binary[CONFIG_KEY], origin)
            return ConfigText(None, origin, error=f"{origin} has no key {CONFIG_KEY}")
        return ConfigText(None, f"no configmap {' or '.join(self.names)} in {self.namespace}")

    def _deliver(self, sink: ConfigSink) -> None:
        current = self.effective()
        if current != self._delivered:
            self._delivered = current
            sink.config_changed(current)

    def _run(self, sink: ConfigSink) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                    self._deliver(sink)
                version = self._follow(sink, version)
                self._backoff.reset()
            except ApiError as exc:
                if exc.status == 410:
                    log.info("configmap_watch_expired", resource_version=version)
                    version = None
                    continue
                log.warning("configmap_watch_failed", status=exc.status, reason=exc.reason)
            except Exception as exc:  # connection refused, reset, timeouts: the API is away
                log.warning("configmap_watch_failed", error=f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self._backoff.next()):
                return

    def _list(self) -> str:
        listed = self._api.get(self._path)
        self._maps = {}
        for item in listed.get("items") or []:
            self._keep(item)
        self.relists += 1
        return str(listed["metadata"]["resourceVersion"])

    def _keep(self, item: dict[str, Any]) -> bool:
        """Remember one of the two ConfigMaps; whether ``item`` is one of them."""
        name = item["metadata"]["name"]
        if name in self.names:
            self._maps[name] = {"data": item.get("data"), "binaryData": item.get("binaryData")}
        return name in self.names

    def _follow(self, sink: ConfigSink, version: str) -> str:
        """Watch from ``version`` until the server ends the watch; returns the newest version."""
        params: Params = {
            "resourceVersion": version,
            "timeoutSeconds": WATCH_TIMEOUT_S,
            "allowWatchBookmarks": True,
        }
        self._watch = self._api.watch(self._path, params=params, timeout=WATCH_TIMEOUT_S + 30)
        if self._stop.is_set():  # stop() ran while the watch was being opened
            self._watch.stop()
        for kind, obj in self._watch:
            version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                if self._maps.pop(obj["metadata"]["name"], None) is None:
                    continue
            elif not self._keep(obj):
                continue
            self._deliver(sink)
        return version


def _decoded(encoded: str, origin: str) -> ConfigText:
    """``binaryData`` is base64: the bytes must still be a UTF-8 document within the limits."""
    try:
        return ConfigText(decode(base64.b64decode(encoded, validate=True)), origin)
    except binascii.Error:
        return ConfigText(None, origin, error=f"{origin}: binaryData {CONFIG_KEY} is not base64")
    except DocumentError as exc:
        where = f"{origin}:{exc.line}:{exc.column}" if exc.line is not None else origin
        return ConfigText(None, origin, error=f"{where}: {exc.problem}")
