"""The Helm chart (daemonset/chart): the kustomize base for default values, and valid.

``helm`` is built from the Go module proxy by ``make e2e-build`` ($FATIA_E2E_HELM).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import NAMESPACE, REPO, Cluster

CHART = REPO / "daemonset" / "chart"


def helm(*args: str) -> str:
    binary = os.environ.get("FATIA_E2E_HELM", "")
    assert Path(binary).is_file(), "$FATIA_E2E_HELM must name helm (make e2e sets it)"
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def objects(text: str) -> dict[tuple[str, str, str], Any]:
    found = {}
    for doc in yaml.safe_load_all(text):
        if doc:
            meta = doc["metadata"]
            found[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    return found


def template(*values: str) -> str:
    sets = [arg for value in values for arg in ("--set", value)]
    return helm("template", "fatia", str(CHART), "--namespace", NAMESPACE, *sets)


def test_chart_renders_the_kustomize_base_with_default_values(cluster: Cluster) -> None:
    rendered = objects(template())
    base = objects(cluster.kubectl("kustomize", "daemonset/").stdout)

    assert sorted(rendered) == sorted(base)
    for key, obj in base.items():
        assert rendered[key] == obj, key


def test_chart_lints_clean() -> None:
    output = helm("lint", "--strict", str(CHART))

    assert "0 chart(s) failed" in output


def test_chart_with_values_is_accepted_by_the_api_server(cluster: Cluster) -> None:
    config = "version: v1\ngpus:\n  - devices: all\n    mig-devices: {3g.20gb: 2}\n"
    text = helm(
        "template",
        "fatia",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "image.tag=9.9.9",
        "--set",
        "metrics.port=9500",
        "--set",
        "nodeSelector.pool=gpu",
        "--set",
        "privileged=true",
        "--set-string",
        f"defaultConfig={config}",
    )
    rendered = objects(text)

    done = cluster.server_dry_run(text)
    assert done.stdout.count("(server dry run)") == len(rendered), done.stdout
    ds = rendered[("DaemonSet", NAMESPACE, "fatia")]["spec"]["template"]
    pod, container = ds["spec"], ds["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/fatia-dev/fatia:9.9.9"
    assert "--metrics-addr=0.0.0.0:9500" in container["args"]
    assert container["ports"][0]["containerPort"] == 9500
    assert ds["metadata"]["annotations"]["prometheus.io/port"] == "9500"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert container["securityContext"]["privileged"] is True
    assert rendered[("ConfigMap", NAMESPACE, "fatia-default")]["data"]["config.yaml"] == config


def test_chart_follows_the_release_namespace_except_for_events() -> None:
    rendered = objects(helm("template", "fatia", str(CHART), "--namespace", "gpu-ops"))

    namespaced = {key for key in rendered if key[1]}
    assert ("Namespace", "", "gpu-ops") in rendered
    assert namespaced == {
        ("ServiceAccount", "gpu-ops", "fatia"),
        ("Role", "gpu-ops", "fatia-config"),
        ("RoleBinding", "gpu-ops", "fatia-config"),
        ("DaemonSet", "gpu-ops", "fatia"),
        ("Role", "default", "fatia-events"),
        ("RoleBinding", "default", "fatia-events"),
    }
    for key in (
        ("RoleBinding", "default", "fatia-events"),
        ("RoleBinding", "gpu-ops", "fatia-config"),
        ("ClusterRoleBinding", "", "fatia-node"),
    ):
        assert rendered[key]["subjects"] == [
            {"kind": "ServiceAccount", "name": "fatia", "namespace": "gpu-ops"}
        ]
