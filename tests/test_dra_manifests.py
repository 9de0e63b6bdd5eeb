"""The DRA-mode deployment: the ``daemonset/components/dra`` component over the base.

Rendered with the real kustomize and validated against the Kubernetes 1.37 schemas in
strict mode, like the base (tests/test_manifests.py); on top of the schema: the
DeviceClasses are what the catalog generates, the RBAC grants exactly what the driver
uses, the admission policy confines each fatia to its own node's slices, and the
DaemonSet runs the DRA mode with the kubelet's plugin directories.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from test_manifests import BASE, Doc, as_rules, kustomize, one, schema_errors, select

from deviceplugin.config.schema import parse_config
from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.classes import MIG_CLASS, device_classes, profile_class, render
from deviceplugin.dra.pool import plan_pool
from deviceplugin.plan.resources import mig_resource_name
from mig.catalog import MODELS
from mig.inventory import InventoryReader
from mig.nvml import open_nvml

COMPONENT = BASE / "components" / "dra"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    overlay = tmp_path_factory.mktemp("dra-overlay")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, overlay)],
                "components": [os.path.relpath(COMPONENT, overlay)],
            }
        )
    )
    return kustomize(overlay)


def test_every_document_passes_the_strict_schema(rendered: list[Doc]) -> None:
    errors = {f"{d['kind']}/{d['metadata']['name']}": schema_errors(d) for d in rendered}
    assert {k: v for k, v in errors.items() if v} == {}


def test_the_device_classes_file_is_what_the_catalog_generates() -> None:
    assert (COMPONENT / "deviceclasses.yaml").read_text() == render(), (
        "run: python -m deviceplugin.dra.classes > daemonset/components/dra/deviceclasses.yaml"
    )


def test_every_catalog_profile_has_a_class_serving_its_device_plugin_resource_name() -> None:
    classes = {c["metadata"]["name"]: c["spec"] for c in device_classes()}
    assert classes[DRIVER_NAME]["extendedResourceName"] == "nvidia.com/gpu"
    assert "extendedResourceName" not in classes[MIG_CLASS]
    for model in MODELS.values():
        for profile in model.profiles:
            spec = classes[profile_class(profile.name)]
            assert spec["extendedResourceName"] == mig_resource_name(profile.name)
            assert f'.profile == "{profile.name}"' in spec["selectors"][0]["cel"]["expression"]
    names = [c["extendedResourceName"] for c in classes.values() if "extendedResourceName" in c]
    assert len(names) == len(set(names))  # one class per extended resource


def test_dra_rbac_grants_only_what_the_driver_uses(rendered: list[Doc]) -> None:
    role = one(rendered, "ClusterRole", "fatia-dra")
    group = frozenset({"resource.k8s.io"})
    assert as_rules(role) == [
        (group, frozenset({"resourceslices"}), frozenset({"get", "list", "create", "update", "delete"})),
        (group, frozenset({"resourceclaims"}), frozenset({"get"})),
    ]
    binding = one(rendered, "ClusterRoleBinding", "fatia-dra")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fatia", "namespace": "fatia-system"}]
    assert [r["metadata"]["name"] for r in select(rendered, "ClusterRole")] == ["fatia-dra", "fatia-node"]


def test_an_admission_policy_keeps_each_fatia_to_its_own_nodes_slices(rendered: list[Doc]) -> None:
    policy = one(rendered, "ValidatingAdmissionPolicy", "fatia-resourceslices-own-node")["spec"]
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["resourceslices"] and set(rule["operations"]) == {
        "CREATE",
        "UPDATE",
        "DELETE",
    }
    assert "system:serviceaccount:fatia-system:fatia" in policy["matchConditions"][0]["expression"]
    assert policy["failurePolicy"] == "Fail"
    binding = one(rendered, "ValidatingAdmissionPolicyBinding", "fatia-resourceslices-own-node")["spec"]
    assert binding == {"policyName": "fatia-resourceslices-own-node", "validationActions": ["Deny"]}


def test_the_daemonset_runs_dra_mode_with_the_plugin_directories(rendered: list[Doc]) -> None:
    daemonset = one(rendered, "DaemonSet", "fatia")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"name": "FATIA_MODE", "value": "dra"} in container["env"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    for path in ("/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/run/cdi"):
        assert volumes[mounts[path]]["path"] == path
        assert volumes[mounts[path]]["type"] in ("Directory", "DirectoryOrCreate")
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_the_pool_example_is_a_valid_pool(tmp_path: Path) -> None:
    (configmap,) = [d for d in yaml.safe_load_all((COMPONENT / "pool-example.yaml").read_text()) if d]
    assert schema_errors(configmap) is None
    config = parse_config(configmap["data"]["config.yaml"])
    nvml = open_nvml("sim:a100-40gb:1,h100-80gb:2,a30:1", state_dir=tmp_path, node_name="gpu-node-1")
    plan = plan_pool(InventoryReader(nvml).read(), config)
    assert plan.errors == ()
    assert [(o.index, o.whole) for o in plan.offers] == [(0, True), (1, False), (2, False), (3, False)]
    assert plan.offers[1].profiles == ("1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb")
