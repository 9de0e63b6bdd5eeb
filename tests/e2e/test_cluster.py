"""The cluster itself, fatia's manifests on the real API server, and fatia's RBAC.

fatia runs here as a host process with a token of the ``fatia`` ServiceAccount that
``kubectl apply -k daemonset/`` creates, so ``daemonset/rbac.yaml`` authorises every
call it makes. The token is bound to the Node (TokenRequest with a bound object), as
a DaemonSet pod's projected token carries its node's name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from e2e.harness import NAMESPACE, NODE_NAME, REPO, Cluster


def test_kubelet_registered_the_node_with_the_fake_runtime(cluster: Cluster) -> None:
    node = cluster.node()
    info = node["status"]["nodeInfo"]

    assert cluster.node_ready()
    assert info["kubeletVersion"].startswith("v1.37.")
    assert info["containerRuntimeVersion"].startswith("fakeRuntime://")
    # --node-ip=127.0.0.1: the kubelet refuses a loopback node IP and reports none, so
    # nothing (the API server included) has an address to send the node traffic to.
    assert [a for a in node["status"].get("addresses", []) if a["type"] != "Hostname"] == []


def test_kustomize_base_is_accepted_by_the_api_server(cluster: Cluster) -> None:
    # Server-side apply again (the session applied it once): no conflicts, no changes.
    done = cluster.kubectl("apply", "--server-side", "--field-manager=fatia-e2e", "-k", "daemonset/")
    ds = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "daemonset", "fatia", "-o", "json").stdout)

    assert "serverside-applied" in done.stdout
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 1
    # The node carries no GPU-node label, so the DaemonSet places no pod on it (there
    # is no image to run); fatia runs as a host process instead.
    assert ds["status"]["desiredNumberScheduled"] == 0
    for kind, name, namespace in (
        ("serviceaccount", "fatia", NAMESPACE),
        ("role", "fatia-config", NAMESPACE),
        ("role", "fatia-events", "default"),
        ("clusterrole", "fatia-node", None),
    ):
        ns = ["-n", namespace] if namespace else []
        cluster.kubectl(*ns, "get", kind, name)


def test_privileged_component_is_accepted_by_the_api_server(cluster: Cluster, tmp_path: Path) -> None:
    # An overlay as a user writes it (kustomize wants relative paths).
    base = os.path.relpath(REPO / "daemonset", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/components/privileged"],
            }
        )
    )

    rendered = cluster.kubectl("kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)).stdout
    done = cluster.server_dry_run(rendered)

    assert "daemonset.apps/fatia serverside-applied (server dry run)" in done.stdout
    assert "privileged: true" in rendered


def _can_i(cluster: Cluster, *args: str) -> str:
    done = cluster.kubectl("auth", "can-i", *args, kubeconfig=cluster.fatia_kubeconfig, check=False)
    return done.stdout.strip()


def test_fatia_token_may_do_what_the_agent_does(cluster: Cluster) -> None:
    assert _can_i(cluster, "get", f"nodes/{NODE_NAME}") == "yes"
    assert _can_i(cluster, "patch", f"nodes/{NODE_NAME}") == "yes"
    assert _can_i(cluster, "watch", "configmaps", "-n", NAMESPACE) == "yes"
    assert _can_i(cluster, "create", "events", "-n", "default") == "yes"
    patched = cluster.kubectl(
        "patch",
        "node",
        NODE_NAME,
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"fatia.dev/e2e-probe":"own"}}}',
        kubeconfig=cluster.fatia_kubeconfig,
        check=False,
    )
    cluster.kubectl("label", "node", NODE_NAME, "fatia.dev/e2e-probe-")

    assert patched.returncode == 0, patched.stderr


def test_fatia_token_is_refused_what_the_agent_does_not_do(cluster: Cluster) -> None:
    # Another Node, as a second GPU node of the cluster would be (an API object only).
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "e2e-other-node", "labels": {"fatia-e2e": "1"}},
            }
        ),
    )
    cluster.kubectl(
        "create",
        "configmap",
        "e2e-elsewhere",
        "-n",
        "default",
        "--from-literal=config.yaml=version: v1",
        check=False,
    )
    fatia = cluster.fatia_kubeconfig
    try:
        # What RBAC itself answers.
        assert _can_i(cluster, "get", "secrets", "-n", NAMESPACE) == "no"
        assert _can_i(cluster, "list", "secrets", "--all-namespaces") == "no"
        assert _can_i(cluster, "get", "configmaps", "-n", "default") == "no"
        assert _can_i(cluster, "list", "configmaps", "-n", "kube-system") == "no"
        assert _can_i(cluster, "update", "configmaps", "-n", NAMESPACE) == "no"
        assert _can_i(cluster, "create", "events", "-n", "kube-system") == "no"
        assert _can_i(cluster, "delete", f"nodes/{NODE_NAME}") == "no"

        # Real requests with the same token.
        secrets = cluster.kubectl("-n", NAMESPACE, "get", "secrets", kubeconfig=fatia, check=False)
        elsewhere = cluster.kubectl(
            "-n", "default", "get", "configmap", "e2e-elsewhere", kubeconfig=fatia, check=False
        )
        # The ClusterRole grants patch on every Node (RBAC cannot name "its own"), so
        # only admission can refuse this one: the token names its node.
        other = cluster.kubectl(
            "patch",
            "node",
            "e2e-other-node",
            "--type=merge",
            "-p",
            '{"metadata":{"labels":{"fatia.dev/config.state":"success"}}}',
            kubeconfig=fatia,
            check=False,
        )

        assert secrets.returncode != 0 and "forbidden" in secrets.stderr, secrets
        assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr, elsewhere
        # Refused by RBAC or by admission (then "invalid", not "forbidden"): either way
        # the other Node is unchanged.
        labels = json.loads(cluster.kubectl("get", "node", "e2e-other-node", "-o", "json").stdout)[
            "metadata"
        ].get("labels", {})
        assert other.returncode != 0 and "fatia.dev/config.state" not in labels, (
            f"fatia's token patched another Node: {other.stdout}{other.stderr}"
        )
    finally:
        cluster.kubectl("delete", "node", "e2e-other-node", "--ignore-not-found")
        cluster.kubectl("delete", "configmap", "e2e-elsewhere", "-n", "default", "--ignore-not-found")
