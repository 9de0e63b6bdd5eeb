"""Specification of ``dra: {reuse: identical}``: an unprepared claim's MIG instance is kept,
an identical later claim adopts it (same MIG UUID, no NVML call), a claim it is in the way
of destroys it first, and the pool or the policy changing destroys it.

Run against the simulated GPUs through the real preparer (the nodes of
:mod:`test_dra_plugin`); what matters is read back from the simulator itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dra_plugin import Node, claim_json, crash_prepare

from deviceplugin.config.schema import ReusePolicy, parse_config
from deviceplugin.dra.allocation import ClaimRef
from deviceplugin.dra.checkpoint import PREPARING, Checkpoint, ClaimRecord
from deviceplugin.dra.devices import device_name
from deviceplugin.dra.pool import plan_pool
from deviceplugin.dra.prepare import Preparer
from deviceplugin.dra.reuse import unwanted
from mig.apply import GpuTarget, Reconciler
from mig.layout import Placement
from mig.sim.state import SimFault

IDENTICAL = ReusePolicy.IDENTICAL
ONE_G = device_name(0, "1g.10gb", 0)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path)
    n.enable_mig((), ())
    return n


def prepared(node: Node, preparer: Preparer, uid: str, *devices: str) -> ClaimRef:
    ref = node.claims.add(uid, *devices)
    outcome = preparer.prepare([ref])[uid]
    assert outcome.error is None, outcome.error
    return ref


def kept_one(node: Node, device: str = ONE_G) -> tuple[Preparer, str]:
    """A claim of ``device`` prepared and unprepared under ``identical``: (preparer, MIG UUID)."""
    preparer = node.preparer(reuse=IDENTICAL)
    ref = prepared(node, preparer, "uid-k", device)
    assert preparer.unprepare([ref]) == {"uid-k": None}
    (kept,) = Checkpoint(node.state).kept()
    assert kept.mig_uuid is not None
    return preparer, kept.mig_uuid


def test_unprepare_keeps_the_instance_records_it_kept_and_it_stays_published(node: Node) -> None:
    preparer = node.preparer(reuse=IDENTICAL)
    ref = prepared(node, preparer, "uid-1", ONE_G)
    uuid = node.instances()[(0, 0, "1g.10gb")]

    assert preparer.unprepare([ref]) == {"uid-1": None}

    assert node.instances() == {(0, 0, "1g.10gb"): uuid}
    checkpoint = Checkpoint(node.state)
    assert checkpoint.records() == ()
    assert [(k.device, k.mig_uuid) for k in checkpoint.kept()] == [(ONE_G, uuid)]
    assert not (node.cdi / "fatia.dev-gpu_uid-1.json").exists()
    assert ONE_G in {d.name for d in node.pool().devices}  # free for the scheduler, as before


def test_under_never_unprepare_destroys_the_instance_as_before(node: Node) -> None:
    preparer = node.preparer()
    ref = prepared(node, preparer, "uid-1", ONE_G)
    assert preparer.unprepare([ref]) == {"uid-1": None}
    assert node.instances() == {}
    assert Checkpoint(node.state).kept() == ()


def test_an_identical_claim_adopts_the_kept_instance_without_an_nvml_call(node: Node) -> None:
    preparer, uuid = kept_one(node)
    state = node.control.node().to_json()

    outcome = preparer.prepare([node.claims.add("uid-2", ONE_G)])["uid-2"]

    assert outcome.error is None
    assert [d.mig_uuid for d in outcome.devices] == [uuid]
    assert node.control.node().to_json() == state  # nothing created, nothing destroyed
    assert Checkpoint(node.state).kept() == ()
    record = Checkpoint(node.state).get("uid-2")
    assert record is not None and record.devices[0].mig_uuid == uuid


def test_a_kept_instance_survives_a_restart(node: Node) -> None:
    _, uuid = kept_one(node)
    restarted = node.preparer(reuse=IDENTICAL)  # only the files are left
    outcome = restarted.prepare([node.claims.add("uid-2", ONE_G)])["uid-2"]
    assert [d.mig_uuid for d in outcome.devices] == [uuid]


def test_a_claim_overlapping_a_kept_instance_destroys_it_then_cuts(node: Node) -> None:
    preparer, uuid = kept_one(node)
    prepared(node, preparer, "uid-other", device_name(0, "1g.10gb", 6))
    prepared(node, preparer, "uid-gpu1", device_name(1, "1g.10gb", 0))
    before = node.instances()

    outcome = preparer.prepare([node.claims.add("uid-2", device_name(0, "2g.20gb", 0))])["uid-2"]

    assert outcome.error is None
    after = node.instances()
    assert set(after) == set(before) - {(0, 0, "1g.10gb")} | {(0, 0, "2g.20gb")}
    assert {k: after[k] for k in before if k in after} == {k: before[k] for k in before if k in after}
    assert uuid not in after.values()
    assert Checkpoint(node.state).kept() == ()


def test_a_kept_instance_using_the_counter_a_claim_needs_is_destroyed_first(node: Node) -> None:
    # 1g.10gb+me: one per GPU (its profile counter is 1); the kept one at 0 gives way.
    preparer, uuid = kept_one(node, device_name(0, "1g.10gb+me", 0))
    wanted = device_name(0, "1g.10gb+me", 3)
    outcome = preparer.prepare([node.claims.add("uid-2", wanted)])["uid-2"]
    assert outcome.error is None
    assert set(node.instances()) == {(0, 3, "1g.10gb+me")}
    assert uuid not in node.instances().values()


def test_a_kept_instance_not_in_the_way_stays_kept(node: Node) -> None:
    preparer, uuid = kept_one(node)
    prepared(node, preparer, "uid-2", device_name(0, "3g.40gb", 4))
    assert node.instances()[(0, 0, "1g.10gb")] == uuid
    assert [k.mig_uuid for k in Checkpoint(node.state).kept()] == [uuid]


def test_an_instance_running_a_process_is_not_kept(node: Node) -> None:
    preparer = node.preparer(reuse=IDENTICAL)
    ref = prepared(node, preparer, "uid-1", ONE_G)
    gi = node.inventory().gpus[0].gpu_instances[0]
    pid = node.control.start_process(0, gpu_instance=gi.id, compute_instance=gi.compute_instances[0].id)
    error = preparer.unprepare([ref])["uid-1"]
    assert error is not None and "in use" in error
    assert Checkpoint(node.state).kept() == () and Checkpoint(node.state).get("uid-1") is not None
    node.control.stop_process(pid)
    assert preparer.unprepare([ref]) == {"uid-1": None}
    assert len(Checkpoint(node.state).kept()) == 1


@pytest.mark.parametrize(
    ("pool", "reuse", "reason"),
    [
        ("gpus: [{devices: all, mig-enabled: true}]", ReusePolicy.NEVER, "the reuse policy is now never"),
        ("gpus: [{devices: all, mig-devices: {2g.20gb: 3}}]", IDENTICAL, "1g.10gb is no longer offered"),
        ("gpus: [{devices: [0], mig-enabled: false}]", IDENTICAL, "GPU 0 is no longer offered as MIG"),
    ],
)
def test_kept_instances_are_destroyed_when_the_pool_or_the_policy_no_longer_wants_them(
    node: Node, pool: str, reuse: ReusePolicy, reason: str
) -> None:
    preparer, uuid = kept_one(node)
    prepared(node, preparer, "uid-held", device_name(1, "2g.20gb", 0))
    held = node.instances()[(1, 0, "2g.20gb")]
    plan = plan_pool(node.inventory(), parse_config("version: v1\n" + pool))

    destroyed, failed = preparer.release_kept(lambda kept: unwanted(kept, plan, reuse))

    assert failed == [] and len(destroyed) == 1 and reason in destroyed[0] and uuid in destroyed[0]
    assert node.instances() == {(1, 0, "2g.20gb"): held}  # a claim's instance is never destroyed
    assert Checkpoint(node.state).kept() == ()


def test_a_kept_instance_still_offered_stays(node: Node) -> None:
    preparer, uuid = kept_one(node)
    plan = plan_pool(node.inventory(), parse_config("version: v1\n" + node.pool_text))
    assert preparer.release_kept(lambda kept: unwanted(kept, plan, IDENTICAL)) == ([], [])
    assert node.instances() == {(0, 0, "1g.10gb"): uuid}


def test_a_kept_instance_someone_replaced_is_forgotten_and_left_alone(node: Node) -> None:
    preparer, uuid = kept_one(node)
    engine = Reconciler(node.nvml, state_dir=node.state)
    engine.apply([GpuTarget(0, "", True, ())])
    engine.apply([GpuTarget(0, "", True, (Placement(0, 1, "1g.10gb"),))])  # someone else's now
    theirs = node.instances()[(0, 0, "1g.10gb")]
    assert theirs != uuid

    assert preparer.release_kept(lambda kept: dict.fromkeys(kept, "test")) == ([], [])

    assert Checkpoint(node.state).kept() == ()
    assert node.instances() == {(0, 0, "1g.10gb"): theirs}
    error = node.preparer(pool=node.pool()).prepare([node.claims.add("uid-2", ONE_G)])["uid-2"].error
    assert error is not None and "not (or no longer) in this node's pool" in error


def test_a_prepare_killed_while_destroying_a_kept_instance_converges_on_the_retry(node: Node) -> None:
    kept_one(node)
    prepared(node, node.preparer(), "uid-other", device_name(0, "1g.10gb", 6))
    before = node.instances()
    claim = claim_json("uid-2", "crashed", (device_name(0, "2g.20gb", 0),))
    crash_prepare(node, claim, SimFault(call="nvmlComputeInstanceDestroy", action="kill", when="after"))
    assert (0, 0, "1g.10gb") in node.instances()  # half destroyed: no compute instance

    node.claims.claims[("default", "crashed")] = claim
    outcome = node.preparer(reuse=IDENTICAL).prepare([ClaimRef("default", "uid-2", "crashed")])["uid-2"]

    assert outcome.error is None
    after = node.instances()
    assert set(after) == {(0, 6, "1g.10gb"), (0, 0, "2g.20gb")}
    assert after[(0, 6, "1g.10gb")] == before[(0, 6, "1g.10gb")]
    assert Checkpoint(node.state).kept() == ()


def test_a_kept_instance_whose_destruction_was_cut_short_is_finished(node: Node) -> None:
    kept_one(node)
    prepared(node, node.preparer(), "uid-other", device_name(0, "1g.10gb", 6))
    claim = claim_json("uid-2", "crashed", (device_name(0, "2g.20gb", 0),))
    crash_prepare(node, claim, SimFault(call="nvmlComputeInstanceDestroy", action="kill", when="after"))
    preparer = node.preparer(reuse=IDENTICAL)
    assert preparer.unprepare([ClaimRef("default", "uid-2", "crashed")]) == {"uid-2": None}  # claim gone

    destroyed, failed = preparer.release_kept(lambda kept: {})

    assert failed == [] and ["cut short" in line for line in destroyed] == [True]
    assert set(node.instances()) == {(0, 6, "1g.10gb")}
    assert Checkpoint(node.state).kept() == ()


def test_an_adoption_killed_before_the_cdi_spec_converges_on_the_retry(node: Node) -> None:
    _, uuid = kept_one(node)
    claim = claim_json("uid-2", "crashed", (ONE_G,))
    # The adoption makes no NVML call a fault could kill it at: the checkpoint is left by
    # hand as a kill right after the intent's write would leave it.
    node.claims.claims[("default", "crashed")] = claim
    checkpoint = Checkpoint(node.state)
    (kept,) = checkpoint.kept()
    checkpoint.put(ClaimRecord("uid-2", "default", "crashed", PREPARING, (kept,)), adopted=[kept])
    outcome = node.preparer(reuse=IDENTICAL).prepare([ClaimRef("default", "uid-2", "crashed")])["uid-2"]
    assert outcome.error is None and [d.mig_uuid for d in outcome.devices] == [uuid]
    assert node.instances() == {(0, 0, "1g.10gb"): uuid}
