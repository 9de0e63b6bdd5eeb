"""Specification of the DRA kubelet plugin: registration, NodePrepareResources and
NodeUnprepareResources over real unix sockets, against the simulated GPUs.

The kubelet's side is played by plain gRPC clients of the generated stubs; claims come
from a dict standing in for the API server. What matters most is checked on the
simulator itself: a prepare creates exactly the allocated placement's GPU and compute
instance, and every other instance keeps its UUID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import wait_until

from deviceplugin.api.dra.v1 import api_pb2 as dra
from deviceplugin.api.dra.v1 import api_pb2_grpc as dra_grpc
from deviceplugin.api.drahealth.v1 import api_pb2 as health
from deviceplugin.api.drahealth.v1 import api_pb2_grpc as health_grpc
from deviceplugin.api.pluginregistration.v1 import api_pb2 as reg
from deviceplugin.api.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from deviceplugin.config.schema import ReusePolicy, parse_config
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.allocation import ClaimRef
from deviceplugin.dra.cdi import CDI_KIND, CdiWriter
from deviceplugin.dra.checkpoint import PREPARING, Checkpoint
from deviceplugin.dra.devices import PoolModel, device_name, pool_model
from deviceplugin.dra.pool import plan_pool
from deviceplugin.dra.prepare import Preparer
from deviceplugin.dra.registration import DRA_SERVICE, HEALTH_SERVICE, RegistrationServer
from deviceplugin.dra.service import DraServer, HealthBoard
from deviceplugin.telemetry.metrics import Metrics
from mig.apply import GpuTarget, Reconciler
from mig.inventory import Inventory, InventoryReader
from mig.layout import Placement
from mig.nvml import open_nvml
from mig.sim.nvml import SimControl
from mig.sim.state import SIM_PROC_ROOT, SimFault
from mig.timeslice import Timeslicer

REPO = Path(__file__).resolve().parents[1]
NODE = "node-a"
POOL = "gpus: [{devices: all, mig-enabled: true}]"


@dataclass
class FakeClaims:
    """ResourceClaims by (namespace, name), as the API's JSON."""

    claims: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    reads: int = 0

    def add(self, uid: str, *devices: str, name: str | None = None, driver: str = DRIVER_NAME) -> ClaimRef:
        name = name or f"claim-{uid}"
        self.claims[("default", name)] = claim_json(uid, name, devices, driver=driver)
        return ClaimRef("default", uid, name)

    def get(self, namespace: str, name: str) -> Mapping[str, Any]:
        self.reads += 1
        try:
            return self.claims[(namespace, name)]
        except KeyError:
            raise LookupError(f'resourceclaims "{name}" not found') from None


def claim_json(uid: str, name: str, devices: tuple[str, ...], *, driver: str = DRIVER_NAME) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": "default"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": f"req-{i}", "driver": driver, "pool": NODE, "device": d}
                        for i, d in enumerate(devices)
                    ]
                }
            }
        },
    }


class Node:
    """One simulated node in ``root``: the GPUs, the checkpoint, the CDI directory."""

    def __init__(self, root: Path, spec: str = "h100-80gb:2", pool: str = POOL) -> None:
        self.root = root
        self.state = root / "state"
        self.cdi = root / "cdi"
        self.spec = spec
        self.pool_text = pool
        self.nvml = open_nvml(f"sim:{spec}", state_dir=self.state, node_name=NODE)
        self.control = SimControl(self.state)
        self.claims = FakeClaims()

    def inventory(self) -> Inventory:
        return InventoryReader(self.nvml).read()

    def pool(self) -> PoolModel:
        """What the driver publishes: instances the checkpoint names are fatia's own."""
        inventory = self.inventory()
        plan = plan_pool(inventory, parse_config("version: v1\n" + self.pool_text))
        return pool_model(inventory, plan, owned=Checkpoint(self.state).owned())

    def preparer(
        self,
        pool: PoolModel | None = None,
        reuse: ReusePolicy = ReusePolicy.NEVER,
        timeslicer: Timeslicer | None = None,
    ) -> Preparer:
        """A fresh preparer over the same files, as after a restart (``pool``: a stale one;
        ``timeslicer``: another than the simulator's)."""
        reader = InventoryReader(self.nvml)
        return Preparer(
            reuse=lambda: reuse,
            reconciler=Reconciler(self.nvml, state_dir=self.state, reader=reader),
            reader=reader,
            checkpoint=Checkpoint(self.state),
            cdi=CdiWriter(self.cdi),
            claims=self.claims,
            node_name=NODE,
            pool=self.pool if pool is None else lambda: pool,
            timeslicer=self.control if timeslicer is None else timeslicer,
            proc_root=self.state / SIM_PROC_ROOT,
        )

    def instances(self) -> dict[tuple[int, int, str], str]:
        """(GPU, start, profile) -> MIG UUID of every instance on the node."""
        return {
            (g.index, gi.placement.start, gi.profile): ",".join(ci.uuid for ci in gi.compute_instances)
            for g in self.inventory().gpus
            for gi in g.gpu_instances
        }

    def enable_mig(self, *layouts: tuple[Placement, ...]) -> None:
        targets = [GpuTarget(i, "", True, layout) for i, layout in enumerate(layouts)]
        Reconciler(self.nvml, state_dir=self.state).apply(targets)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path)
    n.enable_mig((), ())
    return n


@pytest.fixture
def served(node: Node, sockdir: Path) -> Iterator[tuple[DraServer, dra_grpc.DRAPluginStub]]:
    server = DraServer(socket_path=sockdir / "plugins" / DRIVER_NAME / "dra.sock", handler=node.preparer())
    server.start()
    with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
        yield server, dra_grpc.DRAPluginStub(channel)
    server.stop()


def prepare(stub: dra_grpc.DRAPluginStub, *refs: ClaimRef) -> dra.NodePrepareResourcesResponse:
    request = dra.NodePrepareResourcesRequest(
        claims=[dra.Claim(namespace=r.namespace, uid=r.uid, name=r.name) for r in refs]
    )
    response: dra.NodePrepareResourcesResponse = stub.NodePrepareResources(request, timeout=30)
    return response


def unprepare(stub: dra_grpc.DRAPluginStub, *refs: ClaimRef) -> dra.NodeUnprepareResourcesResponse:
    request = dra.NodeUnprepareResourcesRequest(
        claims=[dra.Claim(namespace=r.namespace, uid=r.uid, name=r.name) for r in refs]
    )
    response: dra.NodeUnprepareResourcesResponse = stub.NodeUnprepareResources(request, timeout=30)
    return response


# -- registration ----------------------------------------------------------------------


def test_the_registration_socket_answers_get_info_as_a_dra_plugin(sockdir: Path) -> None:
    endpoint = sockdir / "plugins" / DRIVER_NAME / "dra.sock"
    told: list[bool] = []
    server = RegistrationServer(
        registry_dir=sockdir / "plugins_registry",
        driver=DRIVER_NAME,
        endpoint=endpoint,
        versions=(DRA_SERVICE, HEALTH_SERVICE),
        on_status=told.append,
    )
    server.start()
    try:
        assert server.socket_path == sockdir / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"
        with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
            stub = reg_grpc.RegistrationStub(channel)
            info = stub.GetInfo(reg.InfoRequest(), timeout=5)
            assert (info.type, info.name, info.endpoint) == ("DRAPlugin", DRIVER_NAME, str(endpoint))
            assert list(info.supported_versions) == ["v1.DRAPlugin", "v1.DRAResourceHealth"]
            assert not server.registered.is_set()
            stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=5)
            assert server.registered.is_set() and server.error is None
            stub.NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=False, error="no"), timeout=5
            )
            assert not server.registered.is_set() and server.error == "no"
            assert told == [True, False]
    finally:
        server.stop()
    assert not server.socket_path.exists()


def test_a_removed_registration_socket_is_served_again(sockdir: Path) -> None:
    server = RegistrationServer(
        registry_dir=sockdir / "reg", driver=DRIVER_NAME, endpoint=sockdir / "dra.sock"
    )
    server.start()
    try:
        server.socket_path.unlink()
        assert wait_until(server.socket_path.exists, timeout=5)
        with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
            assert (
                reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=5).name == DRIVER_NAME
            )
    finally:
        server.stop()


# -- prepare ------------------------------------------------------------------------------


def test_prepare_creates_exactly_the_allocated_placement_and_nothing_else(
    node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]
) -> None:
    _, stub = served
    first = node.claims.add("uid-1", device_name(0, "3g.40gb", 0))
    assert prepare(stub, first).claims["uid-1"].error == ""
    before = node.instances()
    wanted = device_name(1, "1g.10gb", 3)
    ref = node.claims.add("uid-2", wanted)

    answer = prepare(stub, ref).claims["uid-2"]

    assert answer.error == ""
    after = node.instances()
    assert set(after) - set(before) == {(1, 3, "1g.10gb")}
    assert {k: after[k] for k in before} == before  # every other instance keeps its UUID
    (device,) = answer.devices
    assert (device.pool_name, device.device_name, list(device.request_names)) == (NODE, wanted, ["req-0"])
    assert list(device.cdi_device_ids) == [f"{CDI_KIND}=uid-2-{wanted}"]
    spec = json.loads((node.cdi / "fatia.dev-gpu_uid-2.json").read_text())
    assert spec["kind"] == CDI_KIND
    (entry,) = spec["devices"]
    assert entry["name"] == f"uid-2-{wanted}"
    assert entry["containerEdits"]["env"] == [f"NVIDIA_VISIBLE_DEVICES={after[(1, 3, '1g.10gb')]}"]
    assert after[(1, 3, "1g.10gb")].startswith("MIG-")


def test_prepare_is_idempotent(node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]) -> None:
    _, stub = served
    ref = node.claims.add("uid-1", device_name(0, "2g.20gb", 2))
    first = prepare(stub, ref)
    state = node.control.node().to_json()
    second = prepare(stub, ref)
    assert second == first
    assert node.control.node().to_json() == state  # NVML untouched the second time
    assert node.claims.reads == 1  # and the claim not read again


def test_one_call_prepares_several_claims_and_a_failing_one_fails_alone(
    node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]
) -> None:
    _, stub = served
    good = node.claims.add("uid-1", device_name(0, "1g.10gb", 0), device_name(0, "1g.10gb", 1))
    missing = ClaimRef("default", "uid-x", "gone")
    other = node.claims.add("uid-2", device_name(1, "7g.80gb", 0))
    answer = prepare(stub, good, missing, other)
    assert answer.claims["uid-1"].error == "" and len(answer.claims["uid-1"].devices) == 2
    assert answer.claims["uid-2"].error == ""
    assert "cannot read ResourceClaim default/gone" in answer.claims["uid-x"].error
    assert set(node.instances()) == {(0, 0, "1g.10gb"), (0, 1, "1g.10gb"), (1, 0, "7g.80gb")}


def test_a_placement_held_by_another_claim_fails_the_claim_and_names_the_holder(
    node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]
) -> None:
    _, stub = served
    prepare(stub, node.claims.add("uid-1", device_name(0, "3g.40gb", 4), name="first"))
    before = node.instances()
    error = prepare(stub, node.claims.add("uid-2", device_name(0, "2g.20gb", 4))).claims["uid-2"].error
    assert "3g.40gb@4, which claim default/first holds, overlaps 2g.20gb@4" in error
    assert node.instances() == before


def test_an_instance_fatia_did_not_cut_is_never_touched(tmp_path: Path, sockdir: Path) -> None:
    node = Node(tmp_path)
    node.enable_mig((Placement(0, 4, "3g.40gb"),), ())
    before = node.instances()
    ref = node.claims.add("uid-1", device_name(0, "1g.10gb", 4))
    assert node.preparer().prepare([ref])["uid-1"].error is None
    # an allocation from slices published before someone cut an instance there is refused
    published = node.pool()
    stale_device = device_name(1, "7g.80gb", 0)
    stale = node.claims.add("uid-2", stale_device)
    Reconciler(node.nvml, state_dir=node.state).apply([GpuTarget(1, "", True, (Placement(0, 8, "7g.80gb"),))])
    error = node.preparer().prepare([stale])["uid-2"].error
    assert error is not None and error.endswith(
        f"device {stale_device} is not (or no longer) in this node's pool"
    )
    outcome = node.preparer(pool=published).prepare([stale])["uid-2"]
    assert outcome.error is not None and "an instance fatia did not cut, sits at 7g.80gb@0" in outcome.error
    assert {k: v for k, v in node.instances().items() if k in before} == before


def test_claim_problems_are_reported_per_claim(node: Node) -> None:
    preparer = node.preparer()
    node.claims.claims[("default", "renamed")] = claim_json(
        "uid-new", "renamed", (device_name(0, "1g.10gb", 0),)
    )
    not_ours = node.claims.add("uid-3", "gpu-0", driver="other.example.com")
    unknown = node.claims.add("uid-4", "gpu-9-mig-1g-10gb-0")
    results = preparer.prepare([ClaimRef("default", "uid-old", "renamed"), not_ours, unknown])
    assert "has UID uid-new, not uid-old" in str(results["uid-old"].error)
    assert "no device of driver gpu.fatia.dev allocated" in str(results["uid-3"].error)
    assert "not (or no longer) in this node's pool" in str(results["uid-4"].error)
    assert node.instances() == {}


def test_a_whole_gpu_is_prepared_without_touching_nvml(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-40gb:1", pool="gpus: [{devices: all, mig-enabled: false}]")
    state = node.control.node().to_json()
    outcome = node.preparer().prepare([node.claims.add("uid-1", "gpu-0")])["uid-1"]
    assert outcome.error is None
    assert node.control.node().to_json() == state
    spec = json.loads((node.cdi / "fatia.dev-gpu_uid-1.json").read_text())
    assert spec["devices"][0]["containerEdits"]["env"] == [
        f"NVIDIA_VISIBLE_DEVICES={node.inventory().gpus[0].uuid}"
    ]


# -- unprepare ----------------------------------------------------------------------------


def test_unprepare_after_a_restart_destroys_only_the_claims_instance(
    node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]
) -> None:
    _, stub = served
    keep = node.claims.add("uid-1", device_name(0, "4g.40gb", 0))
    drop = node.claims.add("uid-2", device_name(0, "1g.10gb", 5), device_name(1, "2g.20gb", 0))
    prepare(stub, keep, drop)
    before = node.instances()
    restarted = node.preparer()  # a new process: only the files are left
    del node.claims.claims[("default", drop.name)]  # the claim itself may be gone already

    assert restarted.unprepare([ClaimRef("", "uid-2", "")]) == {"uid-2": None}

    after = node.instances()
    assert set(before) - set(after) == {(0, 5, "1g.10gb"), (1, 0, "2g.20gb")}
    assert all(after[k] == before[k] for k in after)
    assert not (node.cdi / "fatia.dev-gpu_uid-2.json").exists()
    assert (node.cdi / "fatia.dev-gpu_uid-1.json").exists()
    assert restarted.unprepare([ClaimRef("", "uid-2", "")]) == {"uid-2": None}  # idempotent


def test_unprepare_over_grpc_answers_each_claim(
    node: Node, served: tuple[DraServer, dra_grpc.DRAPluginStub]
) -> None:
    _, stub = served
    ref = node.claims.add("uid-1", device_name(1, "3g.40gb", 4))
    prepare(stub, ref)
    answer = unprepare(stub, ref, ClaimRef("default", "never-prepared", "x"))
    assert {uid: r.error for uid, r in answer.claims.items()} == {"uid-1": "", "never-prepared": ""}
    assert node.instances() == {}


def test_an_instance_still_running_a_process_is_not_destroyed_until_it_ends(node: Node) -> None:
    preparer = node.preparer()
    ref = node.claims.add("uid-1", device_name(0, "2g.20gb", 0))
    assert preparer.prepare([ref])["uid-1"].error is None
    gi = node.inventory().gpus[0].gpu_instances[0]
    pid = node.control.start_process(0, gpu_instance=gi.id, compute_instance=gi.compute_instances[0].id)
    error = preparer.unprepare([ref])["uid-1"]
    assert error is not None and "in use" in error
    assert (0, 0, "2g.20gb") in node.instances()
    node.control.stop_process(pid)
    assert preparer.unprepare([ref]) == {"uid-1": None}
    assert node.instances() == {}


# -- crashes ------------------------------------------------------------------------------

CRASHING_PREPARE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from test_dra_plugin import Node, claim_json
    from deviceplugin.dra.allocation import ClaimRef
    node = Node(Path(sys.argv[2]))
    claim = json.loads(sys.argv[3])
    node.claims.claims[("default", claim["metadata"]["name"])] = claim
    node.preparer().prepare([ClaimRef("default", claim["metadata"]["uid"], claim["metadata"]["name"])])
    print("survived")
    """
)


def crash_prepare(node: Node, claim: dict[str, Any], fault: SimFault) -> subprocess.CompletedProcess[str]:
    node.control.inject_fault(fault)
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_PREPARE, str(REPO), str(node.root), json.dumps(claim)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    node.control.clear_faults()
    assert done.returncode == -9, f"the prepare was not killed: {done.stdout}{done.stderr}"
    return done


@pytest.mark.parametrize(
    ("call", "when"),
    [
        ("nvmlDeviceCreateGpuInstanceWithPlacement", "after"),  # GPU instance, no compute instance
        ("nvmlGpuInstanceCreateComputeInstance", "after"),  # both made, nothing recorded as prepared
    ],
)
def test_a_prepare_killed_midway_converges_when_the_kubelet_retries(node: Node, call: str, when: str) -> None:
    first = node.claims.add("uid-0", device_name(0, "3g.40gb", 0))
    node.preparer().prepare([first])
    before = node.instances()
    wanted = device_name(0, "1g.10gb", 6)
    claim = claim_json("uid-1", "crashed", (wanted,))
    crash_prepare(node, claim, SimFault(call=call, action="kill", when=when))
    record = Checkpoint(node.state).get("uid-1")
    assert record is not None and record.state == PREPARING

    node.claims.claims[("default", "crashed")] = claim
    outcome = node.preparer().prepare([ClaimRef("default", "uid-1", "crashed")])["uid-1"]

    assert outcome.error is None
    after = node.instances()
    assert set(after) == set(before) | {(0, 6, "1g.10gb")}  # exactly one new instance: no orphan
    assert {k: after[k] for k in before} == before
    (device,) = outcome.devices
    assert device.mig_uuid == after[(0, 6, "1g.10gb")] and "," not in after[(0, 6, "1g.10gb")]


def test_a_prepare_killed_midway_then_unprepared_leaves_nothing_behind(node: Node) -> None:
    claim = claim_json("uid-1", "crashed", (device_name(1, "4g.40gb", 0),))
    crash_prepare(
        node, claim, SimFault(call="nvmlDeviceCreateGpuInstanceWithPlacement", action="kill", when="after")
    )
    assert (1, 0, "4g.40gb") in node.instances()
    assert node.preparer().unprepare([ClaimRef("default", "uid-1", "crashed")]) == {"uid-1": None}
    assert node.instances() == {}
    assert Checkpoint(node.state).records() == ()


def test_an_unreadable_checkpoint_is_set_aside_and_fatia_claims_nothing(node: Node) -> None:
    node.preparer().prepare([node.claims.add("uid-1", device_name(0, "7g.80gb", 0))])
    published = node.pool()
    (node.state / "dra-checkpoint.json").write_text("{not json")
    checkpoint = Checkpoint(node.state)
    assert checkpoint.records() == () and (node.state / "dra-checkpoint.json.corrupt").exists()
    # what the lost record named is now someone else's: never overlapped
    ref = node.claims.add("uid-2", device_name(0, "1g.10gb", 0))
    assert device_name(0, "1g.10gb", 0) not in {d.name for d in node.pool().devices}
    error = node.preparer(pool=published).prepare([ref])["uid-2"].error
    assert error is not None and "did not cut" in error


# -- health ---------------------------------------------------------------------------------


def test_the_health_stream_reports_every_device_and_then_each_change(sockdir: Path, node: Node) -> None:
    board = HealthBoard(NODE)
    board.update({"gpu-0-mig-1g-10gb-0": None, "gpu-1-mig-7g-80gb-0": None})
    server = DraServer(
        socket_path=sockdir / "dra.sock", handler=node.preparer(), health=board, health_resend_s=30
    )
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
            stream = health_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                health.NodeWatchResourcesRequest(), timeout=20
            )
            first = next(stream)
            assert {(d.device.pool_name, d.device.device_name, d.health) for d in first.devices} == {
                (NODE, "gpu-0-mig-1g-10gb-0", health.HEALTHY),
                (NODE, "gpu-1-mig-7g-80gb-0", health.HEALTHY),
            }
            threading.Timer(
                0.2, board.update, [{"gpu-0-mig-1g-10gb-0": None, "gpu-1-mig-7g-80gb-0": "XID 79"}]
            ).start()
            second = next(stream)
            bad = [d for d in second.devices if d.health == health.UNHEALTHY]
            assert [(d.device.device_name, d.message) for d in bad] == [("gpu-1-mig-7g-80gb-0", "XID 79")]
            assert all(d.health_check_timeout_seconds > 0 and d.last_updated_time > 0 for d in second.devices)
            stream.cancel()
    finally:
        server.stop()


def test_each_call_is_counted_per_claim_and_timed(node: Node, sockdir: Path) -> None:
    metrics = Metrics()
    server = DraServer(
        socket_path=sockdir / "plugins" / DRIVER_NAME / "dra.sock",
        handler=node.preparer(),
        on_call=metrics.dra_call,
    )
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{server.socket_path}") as channel:
            stub = dra_grpc.DRAPluginStub(channel)
            good = node.claims.add("uid-1", device_name(0, "1g.10gb", 0))
            prepare(stub, good, ClaimRef("default", "uid-x", "gone"))
            unprepare(stub, good)
    finally:
        server.stop()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("fatia_dra_claims_total", action="prepare", outcome="success") == 1
    assert sample("fatia_dra_claims_total", action="prepare", outcome="error") == 1
    assert sample("fatia_dra_claims_total", action="unprepare", outcome="success") == 1
    assert sample("fatia_dra_claims_total", action="unprepare", outcome="error") == 0
    assert sample("fatia_dra_call_duration_seconds_count", action="prepare") == 1
    assert (sample("fatia_dra_call_duration_seconds_sum", action="prepare") or 0) > 0
