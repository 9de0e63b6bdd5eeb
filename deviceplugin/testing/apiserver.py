"""An in-process fake Kubernetes API server: the fast tier's API.

fatia's API mode watches a ConfigMap, patches its own Node and records Events. This
module serves the few REST endpoints fatia touches over real HTTP on ``127.0.0.1``:
fatia's own client (:mod:`deviceplugin.cluster.kubeapi`) talks to it exactly as it would
to a cluster, through a kubeconfig written by :meth:`FakeKube.write_kubeconfig`, and
``tests/test_fakekube.py`` holds it to the official ``kubernetes`` client too. The real
cluster tier (``tests/e2e``) runs fatia against a real kube-apiserver.

Design
------
* ``_Store`` is the whole "etcd + watch cache": one lock, one global, monotonically
  increasing resourceVersion bumped on every mutation, a bounded history of watch events
  and the set of open watches. It knows nothing about HTTP; failures are ``_ApiError``.
* ``_Handler`` is a thin ``http.server`` shell (HTTP/1.1, keep-alive, chunked transfer
  for watches) that routes a URL to a ``_Resource`` and turns ``_ApiError`` into a
  ``Status`` body with the real ``code``/``reason``, so a client raises its API error
  with the right status.
* ``FakeKube`` owns both, adds outage and fault control, and the helpers tests use to
  arrange and inspect state without going through HTTP. Helper writes emit watch events
  just like API writes do.

Emulated faithfully (where a client can tell)
---------------------------------------------
* ConfigMaps (namespaced), ResourceClaims and ResourceSlices (``resource.k8s.io/v1``, stored
  as given: no schema, no defaults), Nodes (cluster-scoped, with the ``status`` subresource: the main
  resource ignores ``.status`` changes and ``/status`` ignores ``.spec`` changes), core/v1
  Events and events.k8s.io/v1 Events. Both Event APIs share one storage, converted field by
  field (``regarding`` <-> ``involvedObject``, ``note`` <-> ``message`` ...), and both are
  validated like the real server (namespace agreement; the strict events.k8s.io/v1 rules).
* get / list / create / replace / patch / delete; ``uid``, ``creationTimestamp`` and
  ``resourceVersion`` filled on create; ``generateName``; no-op writes do not bump the
  resourceVersion or emit events; a stale ``metadata.resourceVersion`` in a PUT or a patch,
  or a failed delete precondition, is a 409 ``Conflict``. ``metadata.generation`` is not
  set, as the real server does not set it for these kinds.
* Patches: ``merge-patch+json`` (RFC 7386), ``strategic-merge-patch+json`` (applied as a
  merge patch: maps merge, ``null`` deletes, lists are replaced whole; the real server
  merges some lists by key and honours ``$patch`` directives), ``json-patch+json``
  (RFC 6902, all six ops; a failing op is 422 ``Invalid`` as in the real server). Any other
  content type is 415 ``UnsupportedMediaType``.
* Lists carry ``metadata.resourceVersion`` = the current global RV; items omit
  ``kind``/``apiVersion`` like the real server. ``fieldSelector`` (the fields the real server
  supports for the kind) and equality/existence ``labelSelector`` filter lists and watches.
* Watches: newline-delimited JSON events in a chunked response. From RV ``R`` every retained
  event after ``R`` is replayed, then live events follow; with no RV or ``"0"`` synthetic
  ``ADDED`` events for current objects come first. An RV older than the retained history
  yields HTTP 200 with a single ``ERROR`` event (``Status`` 410 ``Expired``, "too old
  resource version: R (oldest)"), as the watch cache does. ``timeoutSeconds`` ends the
  response cleanly; :meth:`FakeKube.stop` aborts it mid-stream. ``allowWatchBookmarks``
  watches get a ``BOOKMARK`` when a test calls :meth:`FakeKube.bookmark`.

Not emulated
------------
Authentication and authorization (any token is accepted), admission, schema validation of
ConfigMaps and Nodes, ``limit``/``continue`` pagination, ``resourceVersionMatch`` and list
``resourceVersion`` semantics (lists always return the latest state), server-side apply,
``managedFields``, ``dryRun``, finalizers and graceful deletion, protobuf/CBOR/YAML
encodings, ``sendInitialEvents``, periodic bookmarks, and the default watch timeout.
A watch from an RV newer than the current one simply waits for it instead of failing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import random
import socket
import string
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from deviceplugin.cluster.kubeapi import KubeApi

__all__ = ["FakeKube", "RequestRecord"]

JsonObject = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(eq=False)
class _ApiError(Exception):
    """A failure the server reports to the client as a ``Status`` object; the reason is
    the one Kubernetes gives the code unless one is named."""

    code: int
    message: str
    _: KW_ONLY
    reason: str = ""
    details: JsonObject | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.reason = self.reason or _REASONS.get(self.code, "Unknown")

    def status(self) -> JsonObject:
        body: JsonObject = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


# --------------------------------------------------------------------------- resources


def _identity(obj: JsonObject) -> JsonObject:
    return obj


@dataclass(frozen=True)
class _Resource:
    """One REST resource as served at one group/version.

    Objects are stored by plural, so resources of one plural share them (the two Event APIs
    do); they are kept in storage form and converted with ``to_storage``/``from_storage`` at
    the edge.
    """

    api_version: str  # "v1" for the core group, else "group/version"
    plural: str
    kind: str
    namespaced: bool
    field_selectors: frozenset[str]
    to_storage: Callable[[JsonObject], JsonObject] = _identity
    from_storage: Callable[[JsonObject], JsonObject] = _identity

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def storage(self) -> str:
        return self.plural

    def qualified(self) -> str:
        """The name the real server uses in messages, e.g. ``events.events.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str) -> JsonObject:
        details: JsonObject = {"name": name, "kind": self.plural}
        if self.group:
            details["group"] = self.group
        return details

    def not_found(self, name: str) -> _ApiError:
        return _ApiError(404, f'{self.qualified()} "{name}" not found', details=self.details(name))

    def conflict(self, name: str, why: str) -> _ApiError:
        return _ApiError(
            409,
            f'Operation cannot be fulfilled on {self.qualified()} "{name}": {why}',
            details=self.details(name),
        )

    def invalid(self, name: str, causes: list[tuple[str, str]]) -> _ApiError:
        """A 422 ``Invalid`` for ``(field, message)`` causes, worded like the real server."""
        summary = ", ".join(f"{path}: {msg}" for path, msg in causes)
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        details = {
            "name": name,
            "group": self.group,
            "kind": self.kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": msg, "field": path} for path, msg in causes
            ],
        }
        return _ApiError(422, f'{kind} "{name}" is invalid: {summary}', details=details)


# events.k8s.io/v1 field name -> core/v1 field name (the rest are shared).
_EVENTS_V1_TO_CORE = {
    "regarding": "involvedObject",
    "note": "message",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
    "reportingController": "reportingComponent",
}
_CORE_TO_EVENTS_V1 = {core: v1 for v1, core in _EVENTS_V1_TO_CORE.items()}


def _rename_keys(obj: JsonObject, names: dict[str, str]) -> JsonObject:
    return {names.get(key, key): value for key, value in obj.items()}


_EVENT_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

_NAME_AND_NAMESPACE = frozenset({"metadata.name", "metadata.namespace"})
_NODE_FIELDS = frozenset({"metadata.name", "spec.unschedulable"})
_SLICE_FIELDS = frozenset({"metadata.name", "spec.nodeName", "spec.driver", "spec.pool.name"})

CONFIGMAPS = _Resource("v1", "configmaps", "ConfigMap", namespaced=True, field_selectors=_NAME_AND_NAMESPACE)
NODES = _Resource("v1", "nodes", "Node", namespaced=False, field_selectors=_NODE_FIELDS)
CORE_EVENTS = _Resource("v1", "events", "Event", namespaced=True, field_selectors=_EVENT_FIELDS)
EVENTS_V1 = _Resource(
    "events.k8s.io/v1",
    "events",
    "Event",
    namespaced=True,
    field_selectors=_EVENT_FIELDS,
    to_storage=lambda obj: _rename_keys(obj, _EVENTS_V1_TO_CORE),
    from_storage=lambda obj: _rename_keys(obj, _CORE_TO_EVENTS_V1),
)
# DRA mode (deviceplugin.dra): the driver publishes its node's slices and reads claims.
RESOURCE_SLICES = _Resource(
    "resource.k8s.io/v1", "resourceslices", "ResourceSlice", namespaced=False, field_selectors=_SLICE_FIELDS
)
RESOURCE_CLAIMS = _Resource(
    "resource.k8s.io/v1",
    "resourceclaims",
    "ResourceClaim",
    namespaced=True,
    field_selectors=_NAME_AND_NAMESPACE,
)
_RESOURCES = {
    (r.group, r.version, r.plural): r
    for r in (CONFIGMAPS, NODES, CORE_EVENTS, EVENTS_V1, RESOURCE_SLICES, RESOURCE_CLAIMS)
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lookup(obj: JsonObject, dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, actual: str | None) -> bool:
        if self.op == "exists":
            return actual is not None
        if self.op == "!exists":
            return actual is None
        if self.op == "=":
            return actual == self.value
        return actual != self.value


def _parse_selector(text: str, *, allow_existence: bool) -> list[_Requirement]:
    requirements = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                requirements.append(_Requirement(key.strip(), "!=" if op == "!=" else "=", value))
                break
        else:
            if not allow_existence or " " in term or "(" in term:
                raise _ApiError(400, f"unable to parse requirement: {term!r} (not emulated)")
            if term.startswith("!"):
                requirements.append(_Requirement(term[1:], "!exists"))
            else:
                requirements.append(_Requirement(term, "exists"))
    return requirements


@dataclass(frozen=True)
class _Filter:
    """Which stored objects a list or watch request is about."""

    resource: _Resource
    namespace: str | None
    fields: tuple[_Requirement, ...] = ()
    labels: tuple[_Requirement, ...] = ()

    @classmethod
    def from_query(cls, resource: _Resource, namespace: str | None, query: dict[str, str]) -> _Filter:
        fields = _parse_selector(query.get("fieldSelector", ""), allow_existence=False)
        for requirement in fields:
            if requirement.key not in resource.field_selectors:
                raise _ApiError(
                    400,
                    f"field label not supported: {requirement.key}",
                )
        labels = _parse_selector(query.get("labelSelector", ""), allow_existence=True)
        return cls(resource, namespace, tuple(fields), tuple(labels))

    def matches(self, storage: str, obj: JsonObject) -> bool:
        if storage != self.resource.storage:
            return False
        metadata = obj.get("metadata", {})
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        for requirement in self.fields:
            value = _lookup(obj, requirement.key)
            if not requirement.matches("" if value is None else _field_text(value)):
                return False
        labels = metadata.get("labels") or {}
        return all(r.matches(labels.get(r.key)) for r in self.labels)


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _JsonPatchError(Exception):
    """An RFC 6902 operation that cannot be applied."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _JsonPatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    parts = _pointer(path)
    if not parts:
        raise _JsonPatchError("operation on the document root is not supported")
    node = doc
    for part in parts[:-1]:
        node = _child(node, part, path)
    return node, parts[-1]


def _index(container: list[Any], part: str, path: str, *, for_insert: bool) -> int:
    if for_insert and part == "-":
        return len(container)
    if not part.isdigit():
        raise _JsonPatchError(f"invalid array index {part!r} in {path!r}")
    index = int(part)
    limit = len(container) if for_insert else len(container) - 1
    if index > limit:
        raise _JsonPatchError(f"array index {index} out of bounds in {path!r}")
    return index


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, dict):
        if part not in node:
            raise _JsonPatchError(f"path {path!r} does not exist")
        return node[part]
    if isinstance(node, list):
        return node[_index(node, part, path, for_insert=False)]
    raise _JsonPatchError(f"path {path!r} does not exist")


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        node = _child(node, part, path)
    return node


def _add(doc: Any, path: str, value: Any) -> None:
    parent, last = _parent(doc, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, for_insert=True), value)
    else:
        raise _JsonPatchError(f"cannot add at {path!r}")


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, path)
    if isinstance(parent, dict):
        if last not in parent:
            raise _JsonPatchError(f"unable to remove nonexistent key: {last}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, path, for_insert=False))
    raise _JsonPatchError(f"cannot remove {path!r}")


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; returns a new document.

    Raises ``_ApiError`` 400 for a malformed patch and ``_JsonPatchError`` for an operation
    that does not apply (including a failed ``test``).
    """
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise _ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = copy.deepcopy(doc)
    for op in operations:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise _JsonPatchError(f"operation {kind!r} is missing a path")
        if kind == "add":
            _add(result, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(result, path)
        elif kind == "replace":
            _remove(result, path)
            _add(result, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            _add(result, path, _remove(result, str(op.get("from"))))
        elif kind == "copy":
            _add(result, path, copy.deepcopy(_get(result, str(op.get("from")))))
        elif kind == "test":
            if _get(result, path) != op.get("value"):
                raise _JsonPatchError(f"testing value {path} failed: test failed")
        else:
            raise _JsonPatchError(f"Unexpected kind: {kind}")
    return result


def _apply_patch(content_type: str, current: JsonObject, patch: Any) -> JsonObject:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise _ApiError(400, "patch body must be a JSON object")
        return dict(merge_patch(current, patch))
    if media_type == JSON_PATCH:
        try:
            patched = json_patch(current, patch)
        except _JsonPatchError as error:
            raise _ApiError(422, str(error)) from error
        if not isinstance(patched, dict):
            raise _ApiError(422, "patched document is not an object")
        return patched
    raise _ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}",
    )


# --------------------------------------------------------------------------- events


def _validate_event(resource: _Resource, namespace: str, event: JsonObject) -> None:
    """The real server's Event create validation (legacy rules plus strict events.k8s.io/v1)."""
    causes: list[tuple[str, str]] = []
    involved_ns = (event.get("involvedObject") or {}).get("namespace") or ""
    if not event.get("eventTime"):
        if (involved_ns == "" and namespace not in ("", "default")) or (
            involved_ns != "" and involved_ns != namespace
        ):
            causes.append(("involvedObject.namespace", "does not match event.namespace"))
    else:
        if involved_ns == "" and namespace not in ("default", "kube-system"):
            causes.append(("involvedObject.namespace", "does not match event.namespace"))
        for name in ("reportingComponent", "reportingInstance", "action", "reason"):
            if not event.get(name):
                shown = _CORE_TO_EVENTS_V1.get(name, name) if resource.group else name
                causes.append((shown, "Required value"))
    if resource is EVENTS_V1:
        if not event.get("eventTime"):
            causes.append(("eventTime", "Required value"))
        if event.get("type") not in ("Normal", "Warning"):
            causes.append(("type", f"has invalid value: {event.get('type')}"))
        for name in ("firstTimestamp", "lastTimestamp", "count", "source"):
            if event.get(name):
                causes.append((name, "needs to be unset"))
    if causes:
        raise resource.invalid(event.get("metadata", {}).get("name", ""), causes)


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class _WatchEvent:
    rv: int
    type: str
    storage: str
    obj: JsonObject


_CLOSE = object()  # queued to a watch when the server stops: abort the stream


@dataclass(eq=False)
class _Watch:
    filter: _Filter
    bookmarks: bool
    events: queue.Queue[_WatchEvent | object] = field(default_factory=queue.Queue)


class _Store:
    """Objects, the global resourceVersion, the event history and the open watches."""

    def __init__(self, *, history_limit: int) -> None:
        self._lock = threading.RLock()
        self._watches_changed = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str, str], JsonObject] = {}
        # Start above "0", which watches treat specially, as no real cluster is ever at 0.
        self._rv = 1
        self._history: deque[_WatchEvent] = deque()
        self._history_limit = history_limit
        self._compacted_rv = self._rv  # every event after this RV is still in the history
        self._watches: set[_Watch] = set()
        self._serving = True  # False while stopped: new watches are born aborted

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, resource: _Resource, namespace: str, name: str) -> JsonObject:
        with self._lock:
            obj = self._objects.get((resource.storage, namespace, name))
            if obj is None:
                raise resource.not_found(name)
            return copy.deepcopy(obj)

    def find(self, storage: str, namespace: str, name: str) -> JsonObject | None:
        with self._lock:
            obj = self._objects.get((storage, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def select(self, selection: _Filter) -> tuple[list[JsonObject], int]:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (storage, _, _), obj in sorted(self._objects.items())
                if selection.matches(storage, obj)
            ]
            return items, self._rv

    def create(self, resource: _Resource, namespace: str, obj: JsonObject) -> JsonObject:
        with self._lock:
            metadata = obj.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                metadata["name"] = metadata["generateName"] + suffix
            name = metadata.get("name")
            if not name:
                raise resource.invalid("", [("metadata.name", "Required value")])
            key = (resource.storage, namespace, name)
            if key in self._objects:
                raise _ApiError(
                    409,
                    f'{resource.qualified()} "{name}" already exists',
                    reason="AlreadyExists",
                    details=resource.details(name),
                )
            if resource.namespaced:
                metadata["namespace"] = namespace
            else:
                metadata.pop("namespace", None)
            metadata.pop("resourceVersion", None)
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = _now()
            return self._commit("ADDED", key, obj)

    def update(
        self,
        resource: _Resource,
        namespace: str,
        name: str,
        mutate: Callable[[JsonObject], JsonObject],
    ) -> JsonObject:
        """Replace an object with ``mutate(current)``, enforcing its resourceVersion."""
        with self._lock:
            key = (resource.storage, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise resource.not_found(name)
            updated = mutate(copy.deepcopy(current))
            metadata = updated.setdefault("metadata", {})
            if metadata.get("name", name) != name:
                raise _ApiError(
                    400,
                    f"the name of the object ({metadata.get('name')}) does not match the name "
                    f"on the URL ({name})",
                )
            wanted_rv = metadata.get("resourceVersion")
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise resource.conflict(
                    name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            for system_field in ("uid", "creationTimestamp", "name", "namespace"):
                if system_field in current["metadata"]:
                    metadata[system_field] = current["metadata"][system_field]
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
            if updated == current:
                return copy.deepcopy(current)  # no-op writes change nothing, like etcd3
            return self._commit("MODIFIED", key, updated)

    def delete(self, resource: _Resource, namespace: str, name: str, preconditions: JsonObject) -> JsonObject:
        with self._lock:
            key = (resource.storage, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise resource.not_found(name)
            for precondition in ("uid", "resourceVersion"):
                wanted = preconditions.get(precondition)
                if wanted and wanted != current["metadata"].get(precondition):
                    raise resource.conflict(
                        name,
                        f"Precondition failed: {precondition.title()} in precondition: "
                        f"{wanted}, {precondition.title()} in object meta: "
                        f"{current['metadata'].get(precondition)}",
                    )
            return self._commit("DELETED", key, copy.deepcopy(current))

    def _commit(self, kind: str, key: tuple[str, str, str], obj: JsonObject) -> JsonObject:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        event = _WatchEvent(self._rv, kind, key[0], copy.deepcopy(obj))
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._compacted_rv = self._history.popleft().rv
        for watch in self._watches:
            if watch.filter.matches(event.storage, event.obj):
                watch.events.put(event)
        return copy.deepcopy(obj)

    def expire_history(self) -> None:
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv

    def open_watch(
        self, selection: _Filter, since: str | None, *, bookmarks: bool
    ) -> tuple[_Watch, list[_WatchEvent]] | _ApiError:
        """Register a watch; return it with its backlog, or the 410 it must report."""
        with self._lock:
            if since in (None, "", "0"):
                backlog = [
                    _WatchEvent(int(obj["metadata"]["resourceVersion"]), "ADDED", storage, obj)
                    for (storage, _, _), obj in sorted(self._objects.items())
                    if selection.matches(storage, obj)
                ]
            else:
                try:
                    rv = int(since)
                except ValueError:
                    raise _ApiError(400, f'invalid resource version "{since}"') from None
                if rv < self._compacted_rv:
                    return _ApiError(
                        410,
                        f"too old resource version: {rv} ({self._compacted_rv})",
                        reason="Expired",
                    )
                backlog = [
                    event
                    for event in self._history
                    if event.rv > rv and selection.matches(event.storage, event.obj)
                ]
            watch = _Watch(selection, bookmarks)
            if not self._serving:
                watch.events.put(_CLOSE)
            self._watches.add(watch)
            self._watches_changed.notify_all()
            return watch, copy.deepcopy(backlog)

    def close_watch(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.discard(watch)
            self._watches_changed.notify_all()

    def wait_for_watches(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._watches_changed.wait_for(lambda: len(self._watches) >= count, timeout)

    def resume_watches(self) -> None:
        with self._lock:
            self._serving = True

    def abort_watches(self) -> None:
        """End every open watch, and any opened until ``resume_watches``, abruptly."""
        with self._lock:
            self._serving = False
            for watch in self._watches:
                watch.events.put(_CLOSE)

    def bookmark(self) -> None:
        with self._lock:
            for watch in self._watches:
                if watch.bookmarks:
                    watch.events.put(_WatchEvent(self._rv, "BOOKMARK", "", {}))


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server received it (query values are the last ones given)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None = None
    body: Any = None

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass(frozen=True)
class _Route:
    resource: _Resource
    namespace: str | None  # None: all namespaces (or cluster-scoped)
    name: str | None
    subresource: str | None


def _route(path: str) -> _Route | None:
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        return None
    resource = _RESOURCES.get((group, version, rest[0]))
    if resource is None or (namespace is not None and not resource.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and (resource is not NODES or subresource != "status"):
        return None
    if name is not None and resource.namespaced and namespace is None:
        return None
    return _Route(resource, namespace, name, subresource)


class _Faults:
    """Injected failures, consumed one per matching request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._node_conflicts: dict[str | None, int] = {}
        self._failures: list[tuple[int, int, str | None, str | None]] = []

    def conflict_node_writes(self, count: int, name: str | None) -> None:
        with self._lock:
            self._node_conflicts[name] = self._node_conflicts.get(name, 0) + count

    def take_node_conflict(self, name: str) -> bool:
        with self._lock:
            for key in (name, None):
                if self._node_conflicts.get(key, 0) > 0:
                    self._node_conflicts[key] -= 1
                    return True
            return False

    def fail(self, count: int, status: int, method: str | None, path_prefix: str | None) -> None:
        with self._lock:
            self._failures.append((count, status, method, path_prefix))

    def take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for index, (count, status, want_method, prefix) in enumerate(self._failures):
                if want_method not in (None, method):
                    continue
                if prefix is not None and not path.startswith(prefix):
                    continue
                if count <= 1:
                    del self._failures[index]
                else:
                    self._failures[index] = (count - 1, status, want_method, prefix)
                return status
            return None


class _Server(ThreadingHTTPServer):
    """One thread per connection, all tracked so that an outage can cut and reap them.

    Request threads are daemons (a test that forgets ``stop()`` cannot hang the
    interpreter), which ``socketserver`` does not join; ``close`` joins them itself.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], kube: FakeKube) -> None:
        self.kube = kube
        self._connections: set[socket.socket] = set()
        self._request_threads: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out in separate writes; without this, Nagle's algorithm and
        # the client's delayed ACK add ~40 ms to every response.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"deviceplugin.testing.apiserver-request:{self.server_address[1]}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections.add(request)
            self._request_threads = [t for t in self._request_threads if t.is_alive()]
            self._request_threads.append(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by ``stop()`` or dropped by clients are expected; bugs are not."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close(self, *, timeout: float = 5.0) -> None:
        """Stop listening, cut every connection and wait for the request threads."""
        self.server_close()
        with self._connections_lock:
            connections, threads = list(self._connections), list(self._request_threads)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; see ``FakeKube.requests``."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        kube = self.server.kube
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query, True).items()}
        content_type = self.headers.get("Content-Type")
        try:
            body = self._read_body()
        except _ApiError as error:
            self._send_json(error.code, error.status())
            return
        kube._record(RequestRecord(self.command, url.path, query, content_type, body))
        try:
            injected = kube._faults.take_failure(self.command, url.path)
            if injected is not None:
                raise _ApiError(injected, f"injected failure ({injected})")
            if self.command == "GET" and query.get("watch") in ("true", "1"):
                self._watch(url.path, query)
                return
            status, payload = kube._handle(self.command, url.path, query, content_type, body)
        except _ApiError as error:
            status, payload = error.code, error.status()
        except Exception as error:  # a bug in the fake: report it like the real server would
            status, payload = 500, _ApiError(500, f"deviceplugin.testing.apiserver: {error!r}").status()
        self._send_json(status, payload)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise _ApiError(400, f"invalid JSON body: {error}") from error

    def _send_json(self, status: int, payload: JsonObject) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _write_chunk(self, payload: JsonObject) -> None:
        line = json.dumps(payload).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def _watch(self, path: str, query: dict[str, str]) -> None:
        kube = self.server.kube
        route = _route(path)
        if route is None or route.name is not None:
            raise _ApiError(404, "the server could not find the requested resource")
        resource = route.resource
        selection = _Filter.from_query(resource, route.namespace, query)
        opened = kube._store.open_watch(
            selection,
            query.get("resourceVersion"),
            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
        )
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout is not None else None

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if isinstance(opened, _ApiError):
            self._write_chunk({"type": "ERROR", "object": opened.status()})
            self.wfile.write(b"0\r\n\r\n")
            return
        watch, backlog = opened
        try:
            for event in backlog:
                self._write_chunk(_event_payload(resource, event))
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    item = watch.events.get(timeout=remaining)
                except queue.Empty:
                    break
                if not isinstance(item, _WatchEvent):  # the server is stopping
                    self.close_connection = True
                    return
                self._write_chunk(_event_payload(resource, item))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client went away
        finally:
            kube._store.close_watch(watch)


def _event_payload(resource: _Resource, event: _WatchEvent) -> JsonObject:
    if event.type == "BOOKMARK":
        obj: JsonObject = {"metadata": {"resourceVersion": str(event.rv)}}
    else:
        obj = resource.from_storage(event.obj)
    obj = {**obj, "kind": resource.kind, "apiVersion": resource.api_version}
    return {"type": event.type, "object": obj}


def _without_type_meta(obj: JsonObject) -> JsonObject:
    """List items carry no ``kind``/``apiVersion`` on the real server."""
    return {key: value for key, value in obj.items() if key not in ("kind", "apiVersion")}


# --------------------------------------------------------------------------- facade


class FakeKube:
    """A fake kube-apiserver on ``127.0.0.1`` for ConfigMaps, Nodes and Events.

    Use as a context manager or call :meth:`start`/:meth:`stop`. The store outlives
    :meth:`stop`, so a test can change state during an outage and watch the client catch
    up after :meth:`start`, which serves on the same port again.
    """

    def __init__(self, *, history_limit: int = 1000, port: int = 0) -> None:
        self._store = _Store(history_limit=history_limit)
        self._faults = _Faults()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._requests_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeKube:
        """Serve (again, on the same port once one was chosen); idempotent."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = _Server(("127.0.0.1", self._port), self)
            self._store.resume_watches()
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"deviceplugin.testing.apiserver:{self._port}",
                daemon=True,
            )
            self._thread.start()
            return self

    def stop(self) -> None:
        """Close the listener and break every open connection, watches included; idempotent.

        Watch streams end without the terminating chunk, so the client sees a broken stream
        rather than a clean end. Returns once every request thread has finished.
        """
        with self._lifecycle:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._server = self._thread = None
            server.shutdown()
            thread.join()
            self._store.abort_watches()
            server.close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (plain HTTP, dummy bearer token)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        target = Path(path)
        target.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        return target

    def api(self) -> KubeApi:
        """fatia's API client for this server, as the kubeconfig gives it."""
        from deviceplugin.cluster.kubeapi import KubeApi

        return KubeApi(self.url, headers=lambda: {"Authorization": "Bearer fake-token"})

    # -- fault injection ----------------------------------------------------------------

    def conflict_next_node_writes(self, count: int = 1, *, name: str | None = None) -> None:
        """Fail the next ``count`` PUT/PATCH requests to a node (any, or ``name``) with 409."""
        self._faults.conflict_node_writes(count, name)

    def fail_requests(
        self,
        count: int = 1,
        *,
        status: int = 500,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with a ``Status`` of ``status``."""
        self._faults.fail(count, status, method, path_prefix)

    def expire_history(self) -> None:
        """Forget all watch history: a watch from any older RV now gets 410 Expired."""
        self._store.expire_history()

    def wait_for_watches(self, count: int = 1, *, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` watches are open; False on timeout.

        A watch replays history, so tests rarely need this; they do before :meth:`bookmark`
        or when asserting that a client has (re)established its watch.
        """
        return self._store.wait_for_watches(count, timeout)

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current RV to every watch that allows bookmarks."""
        self._store.bookmark()

    # -- inspection and arrangement ------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._store.resource_version)

    def requests(self, *, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Requests received so far, oldest first, optionally filtered."""
        with self._requests_lock:
            return [
                r
                for r in self._requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def set_configmap(
        self, namespace: str, name: str, data: dict[str, str], *, binary_data: dict[str, str] | None = None
    ) -> JsonObject:
        """Create the ConfigMap or replace its ``data`` (and ``binaryData``, base64 values)."""
        contents: JsonObject = {"data": dict(data)}
        if binary_data is not None:
            contents["binaryData"] = dict(binary_data)
        try:
            return self._store.update(CONFIGMAPS, namespace, name, lambda cm: {**cm, **contents})
        except _ApiError as error:
            if error.code != 404:
                raise
        obj = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name}, **contents}
        return self._store.create(CONFIGMAPS, namespace, obj)

    def delete_configmap(self, namespace: str, name: str) -> None:
        """Delete the ConfigMap (KeyError if absent); emits DELETED."""
        try:
            self._store.delete(CONFIGMAPS, namespace, name, {})
        except _ApiError as error:
            raise KeyError(f"configmap {namespace}/{name}") from error

    def configmap(self, namespace: str, name: str) -> JsonObject | None:
        return self._store.find(CONFIGMAPS.storage, namespace, name)

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        *,
        annotations: dict[str, str] | None = None,
        status: JsonObject | None = None,
    ) -> JsonObject:
        """Register a Node, as a kubelet would."""
        metadata: JsonObject = {"name": name, "labels": dict(labels or {})}
        if annotations:
            metadata["annotations"] = dict(annotations)
        obj = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {},
            "status": copy.deepcopy(status) if status else {},
        }
        return self._store.create(NODES, "", obj)

    def node(self, name: str) -> JsonObject | None:
        return self._store.find(NODES.storage, "", name)

    def set_resource_claim(self, namespace: str, claim: JsonObject) -> JsonObject:
        """Create a ResourceClaim as given (status included, as the scheduler would leave it)."""
        obj = {"kind": "ResourceClaim", "apiVersion": RESOURCE_CLAIMS.api_version, **copy.deepcopy(claim)}
        return self._store.create(RESOURCE_CLAIMS, namespace, obj)

    def resource_slices(self) -> list[JsonObject]:
        """Stored ResourceSlices, by name."""
        items, _ = self._store.select(_Filter(RESOURCE_SLICES, None))
        return sorted(items, key=lambda s: s["metadata"]["name"])

    def events(self, namespace: str | None = None, *, api_version: str = "v1") -> list[JsonObject]:
        """Stored Events, oldest first, as core ``v1`` or as ``events.k8s.io/v1`` objects."""
        resource = EVENTS_V1 if api_version == EVENTS_V1.api_version else CORE_EVENTS
        items, _ = self._store.select(_Filter(resource, namespace))
        items.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [
            {**resource.from_storage(e), "kind": "Event", "apiVersion": resource.api_version} for e in items
        ]

    # -- request handling (called by _Handler) -------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._requests_lock:
            self._requests.append(record)

    def _handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        content_type: str | None,
        body: Any,
    ) -> tuple[int, JsonObject]:
        if path.rstrip("/") == "/version" and method == "GET":
            return 200, _VERSION
        route = _route(path)
        if route is None:
            raise _ApiError(404, "the server could not find the requested resource")
        resource, name = route.resource, route.name
        namespace = route.namespace or ""
        if name is None:
            if method == "GET":
                return 200, self._list(route, query)
            if method == "POST" and (route.namespace is not None or not resource.namespaced):
                return 201, self._create(resource, namespace, body)
            raise _ApiError(405, f"{method} is not supported on {path}")
        if method == "GET":
            return 200, self._view(resource, self._store.get(resource, namespace, name))
        if method == "DELETE":
            preconditions = (body or {}).get("preconditions") or {}
            deleted = self._store.delete(resource, namespace, name, preconditions)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {**resource.details(name), "uid": deleted["metadata"]["uid"]},
            }
        if method in ("PUT", "PATCH"):
            if resource is NODES and self._faults.take_node_conflict(name):
                raise resource.conflict(
                    name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            mutate = self._mutation(resource, method, content_type, body)
            updated = self._store.update(resource, namespace, name, _subresource_guard(route, mutate))
            return 200, self._view(resource, updated)
        raise _ApiError(405, f"{method} is not supported on {path}")

    def _list(self, route: _Route, query: dict[str, str]) -> JsonObject:
        resource = route.resource
        items, rv = self._store.select(_Filter.from_query(resource, route.namespace, query))
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": [_without_type_meta(resource.from_storage(item)) for item in items],
        }

    def _create(self, resource: _Resource, namespace: str, body: Any) -> JsonObject:
        if not isinstance(body, dict):
            raise _ApiError(400, "the request body must be a JSON object")
        obj = resource.to_storage(copy.deepcopy(body))
        metadata = obj.setdefault("metadata", {})
        body_ns = metadata.get("namespace")
        if resource.namespaced and body_ns and body_ns != namespace:
            raise _ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if resource.storage == "events":
            _validate_event(resource, namespace, obj)
        stored_as = CORE_EVENTS if resource.storage == "events" else resource
        obj["kind"], obj["apiVersion"] = stored_as.kind, stored_as.api_version
        return self._view(resource, self._store.create(resource, namespace, obj))

    @staticmethod
    def _mutation(
        resource: _Resource, method: str, content_type: str | None, body: Any
    ) -> Callable[[JsonObject], JsonObject]:
        if method == "PUT":
            if not isinstance(body, dict):
                raise _ApiError(400, "the request body must be a JSON object")
            replacement = resource.to_storage(copy.deepcopy(body))
            return lambda current: {
                **replacement,
                "kind": current.get("kind"),
                "apiVersion": current.get("apiVersion"),
            }

        def patch(current: JsonObject) -> JsonObject:
            view = {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                **resource.from_storage(current),
            }
            patched = _apply_patch(content_type or "", view, body)
            patched = resource.to_storage(patched)
            patched["kind"], patched["apiVersion"] = current.get("kind"), current.get("apiVersion")
            return patched

        return patch

    @staticmethod
    def _view(resource: _Resource, obj: JsonObject) -> JsonObject:
        return {
            **resource.from_storage(obj),
            "kind": resource.kind,
            "apiVersion": resource.api_version,
        }


def _subresource_guard(
    route: _Route, mutate: Callable[[JsonObject], JsonObject]
) -> Callable[[JsonObject], JsonObject]:
    """Node writes keep ``.status`` (main resource) or ``.spec`` (``/status``) as stored."""
    if route.resource is not NODES:
        return mutate
    kept = "spec" if route.subresource == "status" else "status"

    def guarded(current: JsonObject) -> JsonObject:
        updated = mutate(copy.deepcopy(current))
        if kept in current:
            updated[kept] = current[kept]
        else:
            updated.pop(kept, None)
        return updated

    return guarded


_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-fatia-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
