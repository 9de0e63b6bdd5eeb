"""DRA mode's writes to the API: the node's ResourceSlices, kept equal to the pool.

:class:`SlicePublisher` takes the slices the driver wants (:mod:`deviceplugin.dra.slices`
builds them; this module only talks to the API server) and makes the API hold exactly
those for this node and driver, from its own thread, retrying with backoff through
outages and conflicts, so the driver never waits for the API server:

- each slice is owned by the Node (owner reference with its UID), so deleting the Node
  deletes them;
- a change of the pool bumps the pool generation in every slice (the scheduler only
  trusts the slices of a pool's newest generation, and only once it has all of them), then
  slices that are no longer wanted are deleted;
- at start the generation continues from what the API holds, so a restarted fatia
  never goes back to an older generation; every ``resync_s`` the API's slices are listed
  again and a missing, extra or altered one (someone deleted or edited it) is written
  back under a new generation.

Threads: the driver's thread only replaces the wanted slices and wakes the publisher.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from deviceplugin.cluster.kubeapi import KubeApi, path
from deviceplugin.retry import Backoff
from mig.errors import ApiError

log = structlog.get_logger("fatia.kube")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
RESYNC_S = 60.0
STOP_JOIN_S = 0.2

Json = dict[str, Any]
SLICES = path("apis", "resource.k8s.io", "v1", "resourceslices")


def _slice(name: str) -> str:
    return SLICES + path(name)


def _without_generation(spec: Json) -> Json:
    """A spec as compared: without the pool generation and the times the server stamps on
    taints."""
    stripped = copy.deepcopy(spec)
    stripped.get("pool", {}).pop("generation", None)
    for device in stripped.get("devices") or []:
        for taint in device.get("taints") or []:
            taint.pop("timeAdded", None)
    return stripped


class SlicePublisher:
    """Publishes the wanted ResourceSlices of one node and driver."""

    def __init__(
        self,
        api: KubeApi,
        *,
        node_name: str,
        driver: str,
        backoff: Backoff | None = None,
        resync_s: float = RESYNC_S,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._api = api
        self._selector = {"fieldSelector": f"spec.nodeName={node_name},spec.driver={driver}"}
        self.node_name = node_name
        self.driver = driver
        self._backoff = backoff or Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        self._resync_s = resync_s
        self._on_published = on_published
        self._wanted: list[Json] | None = None  # None: nothing asked for yet
        self._published: dict[str, Json] = {}  # name -> spec without generation, as written
        self.generation = 0
        self._node_uid: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slice-publisher", daemon=True)
        self.synced = threading.Event()  # set when the API holds the latest wanted slices

    # -- the driver's side (never blocks) --------------------------------------------

    def publish(self, slices: list[Json]) -> None:
        """Make these the node's slices (their generation and owner are filled in here)."""
        self._wanted = copy.deepcopy(slices)
        self.synced.clear()
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)

    # -- the publisher's thread ---------------------------------------------------------

    def _run(self) -> None:
        listed = False
        next_resync = time.monotonic() + self._resync_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_resync - time.monotonic()))
            self._wake.clear()
            resync = time.monotonic() >= next_resync
            while not self._stop.is_set():
                try:
                    if resync or not listed:
                        self._read_existing()
                        listed = True
                    self._sync()
                    self._backoff.reset()
                    break
                except Exception as exc:  # outage, conflict, refusal: try again later
                    log.warning("slice_publish_failed", error=f"{type(exc).__name__}: {_reason(exc)}")
                    listed = False
                    if self._stop.wait(self._backoff.next()):
                        return
            if resync:
                next_resync = time.monotonic() + self._resync_s

    def _read_existing(self) -> None:
        """What the API holds for this node and driver: its specs and the newest generation."""
        published: dict[str, Json] = {}
        for item in self._api.get(SLICES, params=self._selector).get("items") or []:
            published[item["metadata"]["name"]] = _without_generation(item.get("spec", {}))
            self.generation = max(self.generation, int(item["spec"]["pool"].get("generation", 0)))
        self._published = published

    def _sync(self) -> None:
        wanted = self._wanted
        if wanted is None:
            return
        specs = {s["metadata"]["name"]: _without_generation(s["spec"]) for s in wanted}
        if specs == self._published:
            self.synced.set()
            return
        owner = self._owner()
        generation = self.generation + 1
        existing = self._names()
        for item in wanted:
            body = copy.deepcopy(item)
            body["spec"]["pool"]["generation"] = generation
            body["metadata"]["ownerReferences"] = [owner]
            name = body["metadata"]["name"]
            if name in existing:
                current = self._api.get(_slice(name))
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._api.replace(_slice(name), body)
            else:
                self._api.create(SLICES, body)
        self.generation = generation
        for name in existing - set(specs):
            try:
                self._api.delete(_slice(name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
        self._published = specs
        if self._wanted is wanted:
            self.synced.set()
        log.info("slices_published", node=self.node_name, slices=len(wanted), generation=generation)
        if self._on_published is not None:
            self._on_published(generation)

    def _names(self) -> set[str]:
        found = self._api.get(SLICES, params=self._selector)
        return {item["metadata"]["name"] for item in found.get("items") or []}

    def _owner(self) -> Json:
        if self._node_uid is None:
            node = self._api.get(path("api", "v1", "nodes", self.node_name))
            self._node_uid = str(node["metadata"]["uid"])
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "name": self.node_name,
            "uid": self._node_uid,
            "controller": True,
        }


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return str(exc)[:300]
    return str(exc)
