"""Specification of the ResourceSlice publisher (deviceplugin.cluster.resourceslices) against
the fake API server, through fatia's own API client: what the API holds for the node is
exactly what the driver last asked for, under one generation that only ever grows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import wait_until

from deviceplugin.cluster.resourceslices import SlicePublisher
from deviceplugin.config.schema import parse_config
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.devices import PoolModel, pool_model
from deviceplugin.dra.pool import plan_pool
from deviceplugin.dra.slices import resource_slices
from deviceplugin.testing.apiserver import FakeKube
from mig.inventory import InventoryReader
from mig.nvml import open_nvml

NODE = "node-a"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def model(tmp_path: Path, spec: str) -> PoolModel:
    inventory = InventoryReader(open_nvml(f"sim:{spec}", state_dir=tmp_path / spec, node_name=NODE)).read()
    return pool_model(
        inventory,
        plan_pool(inventory, parse_config("version: v1\ngpus: [{devices: all, mig-enabled: true}]")),
    )


def wanted(tmp_path: Path, spec: str) -> list[dict[str, Any]]:
    return resource_slices(model(tmp_path, spec), node_name=NODE, generation=0)


def ours(fake: FakeKube) -> list[dict[str, Any]]:
    return [s for s in fake.resource_slices() if s["spec"]["nodeName"] == NODE]


def publisher(fake: FakeKube, **kwargs: Any) -> SlicePublisher:
    started = SlicePublisher(fake.api(), node_name=NODE, driver=DRIVER_NAME, **kwargs)
    started.start()
    return started


def test_slices_are_created_owned_by_the_node_and_stale_ones_deleted(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    node_uid = fake_kube.add_node(NODE)["metadata"]["uid"]
    pub = publisher(fake_kube)
    try:
        big = wanted(tmp_path, "h100-80gb:8")
        pub.publish(big)
        assert wait_until(pub.synced.is_set, timeout=10)
        held = ours(fake_kube)
        assert sorted(s["metadata"]["name"] for s in held) == sorted(s["metadata"]["name"] for s in big)
        assert len(held) == 5  # one counters slice, four of devices
        assert {s["spec"]["pool"]["generation"] for s in held} == {1}
        owner = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": True}
        assert all(s["metadata"]["ownerReferences"] == [owner] for s in held)

        small = wanted(tmp_path, "h100-80gb:1")
        pub.publish(small)
        assert wait_until(lambda: pub.synced.is_set() and len(ours(fake_kube)) == 2, timeout=10)
        assert {s["spec"]["pool"]["generation"] for s in ours(fake_kube)} == {2}
    finally:
        pub.stop()


def test_the_same_slices_are_not_written_again(fake_kube: FakeKube, tmp_path: Path) -> None:
    fake_kube.add_node(NODE)
    pub = publisher(fake_kube)
    try:
        slices = wanted(tmp_path, "a100-40gb:2")
        pub.publish(slices)
        assert wait_until(pub.synced.is_set, timeout=10)
        fake_kube.clear_requests()
        pub.publish(slices)
        assert wait_until(pub.synced.is_set, timeout=10)
        assert [r for r in fake_kube.requests() if r.method in ("POST", "PUT", "DELETE")] == []
    finally:
        pub.stop()


def test_a_restarted_publisher_continues_the_generation_and_restores_what_was_removed(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    fake_kube.add_node(NODE)
    slices = wanted(tmp_path, "h100-80gb:2")
    first = publisher(fake_kube)
    first.publish(slices)
    assert wait_until(first.synced.is_set, timeout=10)
    first.stop()

    second = publisher(fake_kube, resync_s=0.3)
    try:
        second.publish(slices)
        assert wait_until(second.synced.is_set, timeout=10)
        assert {s["spec"]["pool"]["generation"] for s in ours(fake_kube)} == {1}  # identical: untouched
        name = ours(fake_kube)[-1]["metadata"]["name"]
        fake_kube.api().delete(f"{SLICES}/{name}")
        assert wait_until(lambda: len(ours(fake_kube)) == len(slices), timeout=10)  # the resync wrote it back
        assert {s["spec"]["pool"]["generation"] for s in ours(fake_kube)} == {2}
    finally:
        second.stop()


def test_an_outage_is_ridden_out_with_backoff(fake_kube: FakeKube, tmp_path: Path) -> None:
    fake_kube.add_node(NODE)
    fake_kube.fail_requests(3, status=503, path_prefix=SLICES)
    pub = publisher(fake_kube)
    try:
        pub.publish(wanted(tmp_path, "a30:1"))
        assert wait_until(pub.synced.is_set, timeout=20)
        assert len(ours(fake_kube)) == 2
    finally:
        pub.stop()
