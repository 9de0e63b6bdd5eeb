"""The fake API server behaves like kube-apiserver wherever the official client can tell.

Every test talks to ``FakeKube`` over real HTTP through ``kubernetes`` 37.x, configured from
the kubeconfig the fake writes: a client written apart from fatia's own
(:mod:`deviceplugin.cluster.kubeapi`, which every API-mode test uses) holds the fake to the
API's behaviour (how a watch surfaces 410, which content type a patch sends).
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from deviceplugin.testing.apiserver import FakeKube

NS = "fatia-system"
WAIT_S = 2.0


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every server, request and watch thread a test starts is gone when it ends."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leaked == []


@pytest.fixture
def api(fake_kube: FakeKube, tmp_path: Path) -> Iterator[client.ApiClient]:
    """An ApiClient loaded from the fake's kubeconfig, as fatia loads it."""
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(fake_kube.write_kubeconfig(tmp_path / "kubeconfig")),
        client_configuration=configuration,
    )
    configuration.retries = 0  # fail fast while the server is down
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


class WatchReader:
    """Consumes one ``Watch.stream`` on a thread so a test can await its items."""

    END = "end of stream"

    def __init__(self, watcher: watch.Watch, stream: Iterator[dict[str, Any]]) -> None:
        self.watcher = watcher
        self._items: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Iterator[dict[str, Any]]) -> None:
        try:
            for event in stream:
                self._items.put(event)
            self._items.put(self.END)
        except Exception as error:  # handed to the test thread
            self._items.put(error)

    def next(self) -> Any:
        return self._items.get(timeout=WAIT_S)

    def next_event(self) -> tuple[str, str]:
        """The next event as ``(type, name)``; fails on an error or end of stream."""
        item = self.next()
        assert isinstance(item, dict), item
        return item["type"], item["raw_object"]["metadata"].get("name", "")

    def close(self) -> None:
        self.watcher.stop()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()


@pytest.fixture
def watch_configmaps(
    core: client.CoreV1Api,
) -> Iterator[Callable[..., WatchReader]]:
    """Start a ``Watch.stream`` over ConfigMaps in ``NS``; closed after the test."""
    readers: list[WatchReader] = []

    def start(**kwargs: Any) -> WatchReader:
        watcher = watch.Watch()
        kwargs.setdefault("timeout_seconds", 30)
        stream = watcher.stream(core.list_namespaced_config_map, NS, **kwargs)
        readers.append(WatchReader(watcher, stream))
        return readers[-1]

    yield start
    for reader in readers:
        reader.close()


def configmap(name: str, data: dict[str, str], **metadata: Any) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, **metadata), data=data)


# The client's models type every field Optional; the server fills these, so a test asserts
# they are there rather than guards against None.


def meta(obj: client.V1ConfigMap | client.V1Node) -> client.V1ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def rv(obj: client.V1ConfigMap) -> int:
    """The object's resourceVersion, as the number it is."""
    resource_version = meta(obj).resource_version
    assert resource_version is not None
    return int(resource_version)


def list_rv(listed: client.V1ConfigMapList) -> str:
    assert listed.metadata is not None
    assert listed.metadata.resource_version is not None
    return str(listed.metadata.resource_version)


def error_body(error: ApiException) -> Any:
    """The Status object an API error carries, parsed."""
    assert error.body is not None
    return json.loads(error.body)


# --------------------------------------------------------------------------- configmaps


def test_create_fills_server_owned_metadata(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, configmap("layout", {"k": "v"}))

    assert meta(created).uid
    assert meta(created).creation_timestamp is not None
    assert meta(created).namespace == NS
    assert rv(created) > 0
    assert core.read_namespaced_config_map("layout", NS).data == {"k": "v"}


def test_every_mutation_bumps_one_global_resource_version(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    first = core.create_namespaced_config_map(NS, configmap("a", {}))
    fake_kube.add_node("gpu-node")
    second = core.create_namespaced_config_map("other", configmap("b", {}))

    assert rv(second) == rv(first) + 2
    assert fake_kube.resource_version == meta(second).resource_version


def test_reading_a_missing_configmap_raises_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_config_map("absent", NS)

    assert raised.value.status == 404
    assert error_body(raised.value)["reason"] == "NotFound"


def test_creating_an_existing_configmap_raises_409_already_exists(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_config_map(NS, configmap("layout", {}))

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_config_map(NS, configmap("layout", {}))

    assert raised.value.status == 409
    assert error_body(raised.value)["reason"] == "AlreadyExists"


def test_replace_with_current_resource_version_succeeds(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, configmap("layout", {"v": "1"}))
    created.data = {"v": "2"}

    replaced = core.replace_namespaced_config_map("layout", NS, created)

    assert replaced.data == {"v": "2"}
    assert rv(replaced) > rv(created)
    assert meta(replaced).uid == meta(created).uid


def test_replace_with_stale_resource_version_raises_409_conflict(
    core: client.CoreV1Api,
) -> None:
    stale = core.create_namespaced_config_map(NS, configmap("layout", {"v": "1"}))
    core.patch_namespaced_config_map("layout", NS, {"data": {"v": "2"}})
    stale.data = {"v": "3"}

    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_config_map("layout", NS, stale)

    assert raised.value.status == 409
    assert error_body(raised.value)["reason"] == "Conflict"
    assert core.read_namespaced_config_map("layout", NS).data == {"v": "2"}


def test_patch_merges_configmap_data_and_null_removes_a_key(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, configmap("layout", {"keep": "1", "drop": "2"}))

    patched = core.patch_namespaced_config_map("layout", NS, {"data": {"drop": None, "new": "3"}})

    assert patched.data == {"keep": "1", "new": "3"}


def test_delete_removes_the_configmap(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, configmap("layout", {}))

    status = core.delete_namespaced_config_map("layout", NS)

    assert isinstance(status, dict)  # 37.x returns delete results as plain dicts
    assert status["status"] == "Success"
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_config_map("layout", NS)
    assert raised.value.status == 404


def test_a_no_op_write_keeps_the_resource_version(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, configmap("layout", {"v": "1"}))

    patched = core.patch_namespaced_config_map("layout", NS, {"data": {"v": "1"}})

    assert meta(patched).resource_version == meta(created).resource_version
    assert fake_kube.resource_version == meta(created).resource_version


def test_list_filters_by_field_and_label_selector(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, configmap("a", {}, labels={"app": "fatia"}))
    core.create_namespaced_config_map(NS, configmap("b", {}, labels={"app": "other"}))
    core.create_namespaced_config_map("elsewhere", configmap("a", {}, labels={"app": "fatia"}))

    by_name = core.list_namespaced_config_map(NS, field_selector="metadata.name=a")
    by_label = core.list_namespaced_config_map(NS, label_selector="app=fatia")
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app")

    assert [meta(cm).name for cm in by_name.items] == ["a"]
    assert [meta(cm).name for cm in by_label.items] == ["a"]
    assert len(everywhere.items) == 3
    assert list_rv(by_name) == fake_kube.resource_version


# --------------------------------------------------------------------------- watches


def expired_resource_version(kube: FakeKube) -> str:
    """An RV the server has forgotten: ``layout`` changed since, then history expired."""
    kube.set_configmap(NS, "layout", {"v": "0"})
    old_rv = kube.resource_version
    kube.set_configmap(NS, "layout", {"v": "1"})
    kube.expire_history()
    return old_rv


def test_watch_from_list_resource_version_sees_changes_in_order(
    fake_kube: FakeKube,
    core: client.CoreV1Api,
    watch_configmaps: Callable[..., WatchReader],
) -> None:
    fake_kube.set_configmap(NS, "before", {"v": "0"})
    listed = core.list_namespaced_config_map(NS)
    reader = watch_configmaps(resource_version=list_rv(listed))

    fake_kube.set_configmap(NS, "layout", {"v": "1"})
    fake_kube.set_configmap(NS, "layout", {"v": "2"})
    fake_kube.delete_configmap(NS, "layout")

    assert reader.next_event() == ("ADDED", "layout")
    modified = reader.next()
    assert modified["type"] == "MODIFIED"
    assert modified["object"].data == {"v": "2"}  # deserialised into V1ConfigMap
    assert reader.next_event() == ("DELETED", "layout")


def test_watch_with_field_selector_sees_only_that_name(
    fake_kube: FakeKube, watch_configmaps: Callable[..., WatchReader]
) -> None:
    reader = watch_configmaps(
        resource_version=fake_kube.resource_version, field_selector="metadata.name=layout"
    )

    fake_kube.set_configmap(NS, "noise", {})
    fake_kube.set_configmap(NS, "layout", {})
    fake_kube.set_configmap("elsewhere", "layout", {})

    assert reader.next_event() == ("ADDED", "layout")
    fake_kube.set_configmap(NS, "layout", {"v": "1"})
    assert reader.next_event() == ("MODIFIED", "layout")


def test_watch_without_resource_version_starts_with_current_objects(
    fake_kube: FakeKube, watch_configmaps: Callable[..., WatchReader]
) -> None:
    fake_kube.set_configmap(NS, "existing", {})

    reader = watch_configmaps()
    assert reader.next_event() == ("ADDED", "existing")

    fake_kube.set_configmap(NS, "later", {})
    assert reader.next_event() == ("ADDED", "later")


def test_watch_ends_cleanly_when_timeout_seconds_expires(
    fake_kube: FakeKube, watch_configmaps: Callable[..., WatchReader]
) -> None:
    reader = watch_configmaps(resource_version=fake_kube.resource_version, timeout_seconds=1)

    assert reader.next() == WatchReader.END


def test_bookmark_reaches_watches_that_allow_them(
    fake_kube: FakeKube, watch_configmaps: Callable[..., WatchReader]
) -> None:
    reader = watch_configmaps(resource_version=fake_kube.resource_version, allow_watch_bookmarks=True)
    fake_kube.set_configmap("elsewhere", "unrelated", {})
    assert fake_kube.wait_for_watches(1)

    fake_kube.bookmark()

    event = reader.next()
    assert event["type"] == "BOOKMARK"
    assert event["raw_object"]["metadata"]["resourceVersion"] == fake_kube.resource_version
    assert reader.watcher.resource_version == fake_kube.resource_version


def test_watch_from_expired_resource_version_is_a_200_stream_with_a_410_error_event(
    fake_kube: FakeKube,
) -> None:
    old_rv = expired_resource_version(fake_kube)

    connection = http.client.HTTPConnection("127.0.0.1", fake_kube.port, timeout=WAIT_S)
    connection.request("GET", f"/api/v1/namespaces/{NS}/configmaps?watch=true&resourceVersion={old_rv}")
    response = connection.getresponse()
    lines = response.read().splitlines()
    connection.close()

    assert response.status == 200
    assert [json.loads(line) for line in lines] == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old_rv} ({fake_kube.resource_version})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]


def test_watch_stream_with_timeout_raises_410_on_expired_resource_version(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    old_rv = expired_resource_version(fake_kube)

    with pytest.raises(ApiException) as raised:
        next(
            watch.Watch().stream(
                core.list_namespaced_config_map, NS, resource_version=old_rv, timeout_seconds=5
            )
        )

    assert raised.value.status == 410
    assert raised.value.reason.startswith("Expired: too old resource version")
    assert len([r for r in fake_kube.requests(method="GET") if r.is_watch]) == 1


def test_watch_stream_without_timeout_retries_once_before_raising_410(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    old_rv = expired_resource_version(fake_kube)

    with pytest.raises(ApiException) as raised:
        next(watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=old_rv))

    assert raised.value.status == 410
    watches = [r for r in fake_kube.requests(method="GET") if r.is_watch]
    assert [r.query["resourceVersion"] for r in watches] == [old_rv, old_rv]


def test_relist_after_410_recovers_the_current_state(
    fake_kube: FakeKube,
    core: client.CoreV1Api,
    watch_configmaps: Callable[..., WatchReader],
) -> None:
    old_rv = expired_resource_version(fake_kube)
    failed = watch_configmaps(resource_version=old_rv, timeout_seconds=5).next()
    assert isinstance(failed, ApiException)
    assert failed.status == 410

    listed = core.list_namespaced_config_map(NS)
    reader = watch_configmaps(resource_version=list_rv(listed))
    fake_kube.set_configmap(NS, "layout", {"v": "2"})

    assert [cm.data for cm in listed.items] == [{"v": "1"}]  # the latest state
    assert reader.next_event() == ("MODIFIED", "layout")


def test_history_is_bounded() -> None:
    with FakeKube(history_limit=2) as kube:
        kube.set_configmap(NS, "layout", {"v": "initial"})
        start_rv = kube.resource_version
        for version in range(3):
            kube.set_configmap(NS, "layout", {"v": str(version)})
        connection = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=WAIT_S)
        connection.request("GET", f"/api/v1/namespaces/{NS}/configmaps?watch=1&resourceVersion={start_rv}")
        event = json.loads(connection.getresponse().read().splitlines()[0])
        connection.close()

    assert event["object"]["code"] == 410


# --------------------------------------------------------------------------- outages


def test_stop_breaks_an_open_watch_and_start_serves_the_same_store_on_the_same_port(
    fake_kube: FakeKube,
    core: client.CoreV1Api,
    watch_configmaps: Callable[..., WatchReader],
) -> None:
    port = fake_kube.port
    reader = watch_configmaps(resource_version=fake_kube.resource_version)
    fake_kube.set_configmap(NS, "layout", {"v": "1"})
    assert reader.next_event() == ("ADDED", "layout")

    fake_kube.stop()
    broken = reader.next()
    fake_kube.set_configmap(NS, "layout", {"v": "2"})  # changed while the server is down
    fake_kube.stop()  # idempotent
    fake_kube.start()
    fake_kube.start()  # idempotent

    assert isinstance(broken, urllib3.exceptions.ProtocolError)
    assert fake_kube.port == port
    assert core.read_namespaced_config_map("layout", NS).data == {"v": "2"}


def test_requests_fail_with_a_connection_error_while_stopped(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.stop()

    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_namespaced_config_map(NS)


def test_fail_requests_answers_with_the_given_status_then_recovers(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.fail_requests(1, status=503, method="GET")

    with pytest.raises(ApiException) as raised:
        core.list_namespaced_config_map(NS)

    assert raised.value.status == 503
    assert error_body(raised.value)["reason"] == "ServiceUnavailable"
    assert core.list_namespaced_config_map(NS).items == []


# --------------------------------------------------------------------------- nodes


def test_merge_patch_sets_and_removes_node_labels_and_annotations(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0", {"stale": "x", "keep": "y"}, annotations={"old": "1"})

    core.patch_node(
        "gpu-0",
        {
            "metadata": {
                "labels": {"stale": None, "nvidia.com/mig.config": "all-1g.10gb"},
                "annotations": {"old": None, "fatia/state": "ready"},
            }
        },
        _content_type="application/merge-patch+json",
    )

    node = fake_kube.node("gpu-0")
    assert node is not None
    metadata = node["metadata"]
    assert metadata["labels"] == {"keep": "y", "nvidia.com/mig.config": "all-1g.10gb"}
    assert metadata["annotations"] == {"fatia/state": "ready"}
    assert fake_kube.requests(method="PATCH")[0].content_type == "application/merge-patch+json"


def test_patch_node_with_a_dict_sends_strategic_merge_patch(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0", {"drop": "x"})

    node = core.patch_node("gpu-0", {"metadata": {"labels": {"drop": None, "a": "b"}}})

    assert meta(node).labels == {"a": "b"}
    request = fake_kube.requests(method="PATCH")[0]
    assert request.content_type == "application/strategic-merge-patch+json"


def test_patch_node_with_a_list_sends_json_patch(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    fake_kube.add_node("gpu-0", {"old": "x"})

    node = core.patch_node(
        "gpu-0",
        [
            {"op": "test", "path": "/metadata/labels/old", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/old"},
            {"op": "add", "path": "/metadata/labels/fatia~1ready", "value": "true"},
        ],
    )

    assert meta(node).labels == {"fatia/ready": "true"}
    assert fake_kube.requests(method="PATCH")[0].content_type == "application/json-patch+json"


def test_json_patch_with_a_failing_test_op_is_422_invalid(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0", {"old": "x"})
    before = fake_kube.node("gpu-0")

    with pytest.raises(ApiException) as raised:
        core.patch_node("gpu-0", [{"op": "test", "path": "/metadata/labels/old", "value": "y"}])

    assert raised.value.status == 422
    assert error_body(raised.value)["reason"] == "Invalid"
    assert fake_kube.node("gpu-0") == before


def test_unknown_patch_content_type_is_415(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    fake_kube.add_node("gpu-0")

    with pytest.raises(ApiException) as raised:
        core.patch_node("gpu-0", {"metadata": {}}, _content_type="application/x-patch+json")

    assert raised.value.status == 415
    assert error_body(raised.value)["reason"] == "UnsupportedMediaType"


def test_conflict_hook_fails_node_writes_with_409_then_lets_them_through(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0")
    fake_kube.conflict_next_node_writes(2)
    body = {"metadata": {"labels": {"a": "b"}}}

    statuses = []
    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            core.patch_node("gpu-0", body)
        statuses.append(raised.value.status)
    node = core.patch_node("gpu-0", body)

    assert statuses == [409, 409]
    assert meta(node).labels == {"a": "b"}


def test_node_status_changes_only_through_the_status_subresource(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0", status={"capacity": {"nvidia.com/gpu": "1"}})
    main_patch = {"spec": {"unschedulable": True}, "status": {"capacity": {"cpu": "8"}}}
    status_patch = {"spec": {"unschedulable": False}, "status": {"capacity": {"cpu": "8"}}}

    after_main = core.patch_node("gpu-0", main_patch)
    after_status = core.patch_node_status("gpu-0", status_patch)

    assert after_main.spec is not None and after_main.status is not None
    assert after_main.spec.unschedulable is True
    assert after_main.status.capacity == {"nvidia.com/gpu": "1"}
    assert after_status.spec is not None and after_status.status is not None
    assert after_status.spec.unschedulable is True
    assert after_status.status.capacity == {"nvidia.com/gpu": "1", "cpu": "8"}


def test_replace_node_with_stale_resource_version_raises_409(
    fake_kube: FakeKube, core: client.CoreV1Api
) -> None:
    fake_kube.add_node("gpu-0")
    stale = core.read_node("gpu-0")
    core.patch_node("gpu-0", {"metadata": {"labels": {"a": "b"}}})

    with pytest.raises(ApiException) as raised:
        core.replace_node("gpu-0", stale)

    assert raised.value.status == 409


# --------------------------------------------------------------------------- events


def _utcnow() -> datetime:
    return datetime.now(UTC)


def test_core_v1_event_is_recorded_with_its_fields(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    core.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="gpu-0."),
            involved_object=client.V1ObjectReference(kind="Node", name="gpu-0", uid="gpu-0"),
            reason="Repartitioned",
            message="GPU 0 now all-1g.10gb",
            type="Normal",
            count=1,
            source=client.V1EventSource(component="fatia", host="gpu-0"),
        ),
    )

    [event] = fake_kube.events("default")
    assert event["reason"] == "Repartitioned"
    assert event["type"] == "Normal"
    assert event["message"] == "GPU 0 now all-1g.10gb"
    assert event["involvedObject"] == {"kind": "Node", "name": "gpu-0", "uid": "gpu-0"}
    assert event["metadata"]["name"].startswith("gpu-0.")


def test_events_v1_event_is_recorded_and_readable_through_both_apis(
    fake_kube: FakeKube, api: client.ApiClient
) -> None:
    client.EventsV1Api(api).create_namespaced_event(
        "default",
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="gpu-0.repartition"),
            event_time=_utcnow(),
            regarding=client.V1ObjectReference(kind="Node", name="gpu-0"),
            reason="Repartitioned",
            action="Repartition",
            note="GPU 0 now all-1g.10gb",
            type="Warning",
            reporting_controller="fatia.io/agent",
            reporting_instance="fatia-gpu-0",
        ),
    )

    [as_v1] = fake_kube.events("default", api_version="events.k8s.io/v1")
    [as_core] = fake_kube.events("default")
    assert as_v1["regarding"] == {"kind": "Node", "name": "gpu-0"}
    assert as_v1["note"] == "GPU 0 now all-1g.10gb"
    assert as_core["involvedObject"] == as_v1["regarding"]
    assert as_core["message"] == as_v1["note"]
    assert as_core["reportingComponent"] == "fatia.io/agent"
    assert (as_core["reason"], as_core["type"]) == ("Repartitioned", "Warning")


def test_events_v1_event_without_event_time_is_422(fake_kube: FakeKube) -> None:
    # The 37.x EventsV1Event model already refuses a missing event_time client-side, so
    # this request is sent raw, as an older or hand-rolled client would send it.
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "x"},
        "regarding": {"kind": "Node", "name": "gpu-0"},
        "reason": "R",
        "action": "A",
        "type": "Normal",
        "reportingController": "fatia.io/agent",
        "reportingInstance": "fatia-gpu-0",
    }
    connection = http.client.HTTPConnection("127.0.0.1", fake_kube.port, timeout=WAIT_S)
    connection.request(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        body=json.dumps(event),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    status = json.loads(response.read())
    connection.close()

    assert response.status == 422
    assert status["reason"] == "Invalid"
    assert "eventTime: Required value" in status["message"]
    assert fake_kube.events() == []


def test_event_about_a_node_outside_default_namespace_is_422(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_event(
            NS,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(name="x"),
                involved_object=client.V1ObjectReference(kind="Node", name="gpu-0"),
                reason="R",
            ),
        )

    assert raised.value.status == 422


def test_event_count_is_updated_by_patch(fake_kube: FakeKube, core: client.CoreV1Api) -> None:
    core.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="gpu-0.r"),
            involved_object=client.V1ObjectReference(kind="Node", name="gpu-0"),
            reason="R",
            count=1,
        ),
    )

    core.patch_namespaced_event("gpu-0.r", "default", {"count": 2})

    assert [e["count"] for e in fake_kube.events("default")] == [2]
    assert core.list_namespaced_event("default").items[0].count == 2


# --------------------------------------------------------------------------- discovery


def test_version_endpoint_answers(api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version.startswith("v1.")
