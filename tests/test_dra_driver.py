"""``fatia run --mode dra`` as a real process, against a fake API server and the simulator.

The test plays the kubelet's part (it registers the plugin through the registration
socket and calls the DRA service); the fake API server holds the Node, the per-node
ConfigMap (the pool), ResourceClaims as the scheduler would leave them, and the
ResourceSlices fatia publishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import wait_until

from deviceplugin.api.dra.v1 import api_pb2 as dra
from deviceplugin.api.dra.v1 import api_pb2_grpc as dra_grpc
from deviceplugin.api.pluginregistration.v1 import api_pb2 as reg
from deviceplugin.api.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.devices import device_name
from deviceplugin.dra.slices import UNHEALTHY_TAINT
from deviceplugin.testing.apiserver import FakeKube
from mig.inventory import InventoryReader
from mig.nvml import open_nvml
from mig.sim.nvml import SimControl

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "fatia-system"
NODE = "node-a"
POOL = """version: v1
gpus:
  - devices: [0]
    mig-enabled: false
  - devices: all
    mig-enabled: true
health: {recoverySeconds: 1, livenessSeconds: 1}
"""


@dataclass
class DraNode:
    fake: FakeKube
    root: Path
    kubeconfig: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def cdi(self) -> Path:
        return self.root / "cdi"

    def start(
        self,
        spec: str = "a100-40gb:1,h100-80gb:2",
        *,
        register: bool = True,
        nvml: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``fatia run --mode dra``, registered as the kubelet would (unless ``register`` is False).

        The simulator of ``spec``, or ``nvml`` (``real``, with ``env`` pointing it at a library).
        """
        self.log = self.root / f"fatia-{self.starts}.log"
        self.starts += 1
        argv = [
            sys.executable, "-m", "deviceplugin.cli.main", "run", "--mode", "dra",
            "--nvml", nvml or f"sim:{spec}", "--state-dir", str(self.state), "--node-name", NODE,
            "--kubelet-dir", str(self.kubelet_dir), "--cdi-dir", str(self.cdi),
            "--kubeconfig", str(self.kubeconfig), "--namespace", NAMESPACE, "--log-format", "json",
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=out, cwd=REPO, env={**os.environ, **(env or {})}
            )
        if register:
            self.register()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def logs(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def slices(self) -> list[dict[str, Any]]:
        return [s for s in self.fake.resource_slices() if s["spec"]["nodeName"] == NODE]

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for s in self.slices() for d in s["spec"].get("devices", [])}

    def generation(self) -> int:
        generations = {s["spec"]["pool"]["generation"] for s in self.slices()}
        assert len(generations) <= 1, generations
        return generations.pop() if generations else 0

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 20) -> None:
        def check() -> object:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"fatia exited ({self.process.returncode}):\n{self.logs()}")
            return condition()

        assert wait_until(check, timeout=timeout, interval=0.1), (
            f"timed out waiting for {what}:\n{self.logs()[-4000:]}"
        )

    def annotation(self) -> dict[str, Any]:
        raw = ((self.fake.node(NODE) or {}).get("metadata", {}).get("annotations") or {}).get(
            "fatia.dev/config.status"
        )
        return json.loads(raw) if raw else {}

    def register(self) -> None:
        """What the kubelet's plugin watcher does with the registration socket."""
        socket = self.kubelet_dir / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"
        self.wait(socket.exists, "the registration socket")
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = reg_grpc.RegistrationStub(channel)
            info = stub.GetInfo(
                reg.InfoRequest(), timeout=20, wait_for_ready=True
            )  # a killed fatia leaves its socket
            assert info.endpoint == str(self.kubelet_dir / "plugins" / DRIVER_NAME / "dra.sock")
            stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=10)

    def unprepare(self, uid: str) -> str:
        with grpc.insecure_channel(f"unix://{self.kubelet_dir}/plugins/{DRIVER_NAME}/dra.sock") as channel:
            response = dra_grpc.DRAPluginStub(channel).NodeUnprepareResources(
                dra.NodeUnprepareResourcesRequest(claims=[dra.Claim(namespace="default", uid=uid, name="")]),
                timeout=30,
            )
        error: str = response.claims[uid].error
        return error

    def prepare(self, uid: str, name: str) -> dra.NodePrepareResourceResponse:
        with grpc.insecure_channel(f"unix://{self.kubelet_dir}/plugins/{DRIVER_NAME}/dra.sock") as channel:
            response = dra_grpc.DRAPluginStub(channel).NodePrepareResources(
                dra.NodePrepareResourcesRequest(claims=[dra.Claim(namespace="default", uid=uid, name=name)]),
                timeout=30,
            )
        answer: dra.NodePrepareResourceResponse = response.claims[uid]
        return answer

    def add_claim(self, name: str, device: str, device_class: str = "mig.gpu.fatia.dev") -> str:
        """A ResourceClaim as the scheduler leaves it, allocated ``device`` of this node; its UID."""
        claim = self.fake.set_resource_claim(
            "default",
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"devices": {"requests": [
                    {"name": "gpu", "exactly": {"deviceClassName": device_class}}]}},
                "status": {"allocation": {"devices": {"results": [
                    {"request": "gpu", "driver": DRIVER_NAME, "pool": NODE, "device": device}]}}},
            },
        )  # fmt: skip
        return str(claim["metadata"]["uid"])


@pytest.fixture
def node(fake_kube: FakeKube, sockdir: Path) -> Iterator[DraNode]:
    fake_kube.add_node(NODE)
    fake_kube.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": POOL})
    this = DraNode(fake_kube, sockdir, fake_kube.write_kubeconfig(sockdir / "kubeconfig"))
    yield this
    if this.process is not None:
        this.stop()


def test_the_pool_is_published_as_resource_slices_owned_by_the_node(node: DraNode) -> None:
    node.start()
    node.wait(lambda: len(node.devices()) == 1 + 2 * 25, "the pool's devices")
    uid = (node.fake.node(NODE) or {})["metadata"]["uid"]
    for s in node.slices():
        assert s["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": uid, "controller": True}
        ]
        assert s["spec"]["driver"] == DRIVER_NAME and s["spec"]["pool"]["name"] == NODE
        assert s["spec"]["pool"]["resourceSliceCount"] == len(node.slices())
    assert node.devices()["gpu-0"]["attributes"]["type"] == {"string": "gpu"}
    assert device_name(2, "7g.80gb", 0) in node.devices()
    node.wait(lambda: node.annotation().get("mode") == "dra", "the status annotation")
    assert node.annotation()["phase"] == "idle"
    status = json.loads((node.state / "status.json").read_text())
    assert status["mode"] == "dra" and status["resources"] == {DRIVER_NAME: 51}
    # MIG was switched on for the GPUs offered as partitions, and only for them
    inventory = InventoryReader(
        open_nvml("sim:a100-40gb:1,h100-80gb:2", state_dir=node.state, node_name=NODE)
    ).read()
    assert [g.mig_enabled for g in inventory.gpus] == [False, True, True]


def test_nothing_is_published_until_the_kubelet_has_registered_the_driver(node: DraNode) -> None:
    node.start(register=False)
    node.wait(
        lambda: "waiting for the kubelet" in node.annotation().get("message", ""), "the status to say why"
    )
    assert node.slices() == []  # a pod placed now would wait for the kubelet's retry
    node.register()
    node.wait(lambda: len(node.devices()) == 51, "the pool")


def test_a_config_change_republishes_under_a_new_generation(node: DraNode) -> None:
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the first pool")
    first = node.generation()
    narrower = POOL.replace("mig-enabled: true", "mig-devices: {3g.40gb: 2}")
    node.fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": narrower})
    expected = {"gpu-0", *(device_name(g, "3g.40gb", s) for g in (1, 2) for s in (0, 4))}
    node.wait(lambda: set(node.devices()) == expected, "the narrower pool")
    assert node.generation() > first


def test_a_bad_config_keeps_the_pool_and_says_why(node: DraNode) -> None:
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the pool")
    generation = node.generation()
    node.fake.set_configmap(
        NAMESPACE, f"fatia-{NODE}", {"config.yaml": "version: v1\ngpus: [{devicez: all}]\n"}
    )
    node.wait(lambda: node.annotation().get("phase") == "failed", "the failure to show")
    assert "devicez" in node.annotation()["message"]
    assert len(node.devices()) == 51 and node.generation() == generation


@pytest.mark.parametrize(
    ("policy", "effect"), [("", "NoSchedule"), ("dra: {taintEffect: NoExecute}\n", "NoExecute")]
)
def test_an_xid_taints_exactly_the_gpus_devices_until_it_recovers(
    node: DraNode, policy: str, effect: str
) -> None:
    node.fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": POOL + policy})
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the pool")
    SimControl(node.state).inject_event(1, data=79)

    def tainted() -> set[str]:
        return {n for n, d in node.devices().items() if d.get("taints")}

    node.wait(lambda: tainted() and {int(n.split("-")[1]) for n in tainted()} == {1}, "GPU 1's taints")
    assert len(tainted()) == 25
    taint = node.devices()[device_name(1, "1g.10gb", 0)]["taints"][0]
    assert (taint["key"], taint["effect"]) == (UNHEALTHY_TAINT, effect)
    node.wait(lambda: not tainted(), "the taints to go after recovery", timeout=30)


def test_a_prepared_claim_and_the_pool_generation_survive_a_kill(node: DraNode) -> None:
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the pool")
    wanted = device_name(2, "2g.20gb", 4)
    uid = node.add_claim("c1", wanted)
    answer = node.prepare(uid, "c1")
    assert answer.error == "" and [d.device_name for d in answer.devices] == [wanted]
    assert (node.cdi / f"fatia.dev-gpu_{uid}.json").exists()
    generation = node.generation()

    node.stop(signal.SIGKILL)
    node.start()
    node.wait(lambda: '"event": "phase"' in node.logs(), "the restarted fatia to reconcile")
    # the same pool: nothing rewritten (its instance is fatia's, every placement still offered)
    assert len(node.devices()) == 51 and node.generation() == generation
    assert node.prepare(uid, "c1").devices[0].device_name == wanted  # answered from the checkpoint
    # a change continues from the API's generation, never below it
    node.fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": POOL.replace("[0]", "[1]")})
    node.wait(lambda: "gpu-1" in node.devices(), "the changed pool")
    assert node.generation() == generation + 1


def test_a_kept_instance_is_reported_and_destroyed_when_the_policy_goes_back_to_never(node: DraNode) -> None:
    reuse = POOL + "dra: {reuse: identical}\n"
    node.fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": reuse})
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the pool")
    wanted = device_name(1, "1g.10gb", 2)
    uid = node.add_claim("c1", wanted)
    assert node.prepare(uid, "c1").error == ""
    (uuid,) = mig_uuids(node, 1)
    assert node.unprepare(uid) == ""
    node.wait(
        lambda: f"kept for reuse: {wanted} ({uuid})" in node.annotation().get("message", ""), "the report"
    )
    assert mig_uuids(node, 1) == [uuid] and len(node.devices()) == 51  # kept, and still published

    node.fake.set_configmap(NAMESPACE, f"fatia-{NODE}", {"config.yaml": POOL})  # reuse: never
    node.wait(lambda: not mig_uuids(node, 1), "the kept instance to be destroyed")

    def events() -> list[dict[str, Any]]:
        return [e for e in node.fake.events() if e.get("reason") == "KeptInstanceDestroyed"]

    node.wait(events, "the Event")
    assert len(events()) == 1 and uuid in events()[0]["message"] and "never" in events()[0]["message"]


def mig_uuids(node: DraNode, gpu: int) -> list[str]:
    nvml = open_nvml("sim:a100-40gb:1,h100-80gb:2", state_dir=node.state, node_name=NODE)
    return [
        ci.uuid for gi in InventoryReader(nvml).read().gpu(gpu).gpu_instances for ci in gi.compute_instances
    ]


def test_a_lost_gpu_takes_its_devices_out_of_the_pool(node: DraNode) -> None:
    node.start()
    node.wait(lambda: len(node.devices()) == 51, "the pool")
    SimControl(node.state).set_lost(2)
    node.wait(lambda: not any(n.startswith("gpu-2-") for n in node.devices()), "GPU 2's devices to go")
    assert len(node.devices()) == 26


def test_dra_mode_without_the_api_says_what_it_needs(sockdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deviceplugin.cli.main", "run", "--mode", "dra", "--nvml", "sim:a30",
         "--state-dir", str(sockdir / "s"), "--node-name", NODE],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")},
    )  # fmt: skip
    assert done.returncode == 1
    assert "DRA mode needs the Kubernetes API" in done.stderr
