"""The real-cluster tier: fatia against a real kube-apiserver, scheduler and kubelet.

Collected only when ``FATIA_E2E_BIN`` names the directory of binaries built by
``make e2e-build`` (``make e2e`` sets it); a plain ``pytest``/``make test`` run collects
nothing here and boots nothing. In an e2e run every test must really run: a skip is
turned into a failure.

Fixtures:

- ``cluster``: the one-node cluster (session-wide; see ``harness.py``), with fatia's
  kustomize base applied server-side and a kubeconfig holding a token of fatia's own
  ServiceAccount. Its teardown fails the run if any process is left behind or the host's
  sysctls or cgroups changed.
- ``node``: per test; starts ``fatia run`` on the node, applies per-node ConfigMaps, and
  cleans up after the test (fatia stopped, ConfigMap and pods deleted).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

E2E_BIN = os.environ.get("FATIA_E2E_BIN")

if not E2E_BIN:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs the real-cluster tier (make e2e); collected only with FATIA_E2E_BIN"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if E2E_BIN and report.skipped and Path(__file__).parent in Path(str(item.fspath)).parents:
        report.outcome = "failed"
        report.longrepr = f"an e2e test was skipped in an e2e run: {report.longrepr}"
    if E2E_BIN and report.failed and report.when == "call":
        from e2e.harness import FAILURE_LOGS

        for name, text in FAILURE_LOGS.items():
            report.sections.append((f"log: {name}", text()))
    return report


# Lines for the end of the run: boot time and what the cluster was.
_SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _SUMMARY:
        terminalreporter.write_line(line)


if E2E_BIN:
    from e2e.harness import (
        FAILURE_LOGS,
        Cluster,
        Node,
        wait_for,
    )

    @pytest.fixture(scope="session")
    def cluster() -> Iterator[Cluster]:
        assert E2E_BIN is not None
        booting = Cluster(Path(E2E_BIN))
        FAILURE_LOGS["kubelet"] = lambda: booting.kubelet_tail(30)
        try:
            booting.boot()
            booting.deploy_fatia()
            _SUMMARY.append(
                f"e2e cluster booted in {booting.timings['boot']:.1f} s "
                f"({', '.join(f'{k} {v:.1f} s' for k, v in booting.timings.items())}); "
                f"kubelet nodeStatusUpdateFrequency {booting.node_status_update_frequency}; "
                f"directory {booting.base}"
            )
            yield booting
        finally:
            booting.teardown()
            FAILURE_LOGS.pop("kubelet", None)
        left = booting.leftovers()
        changed = booting.host_changes()
        if not left and not changed and not os.environ.get("FATIA_E2E_KEEP"):
            booting.remove()
        assert not left, f"processes left behind: {left}"
        assert not changed, f"the node side changed the host: {changed}"

    @pytest.fixture
    def node(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Node]:
        this = Node(cluster, request.node.nodeid)
        this.wait_no_devices()
        try:
            yield this
        finally:
            this.cleanup()

    # The kubelets the version-sensitive tests run against: the cluster's own, and the
    # newest release before Kubernetes PR #135437, whose device manager keeps one
    # client per resource name (what most clusters in use still run).
    KUBELETS = {"kubelet-1.37": None, "kubelet-1.36": "FATIA_E2E_OLD_KUBELET"}

    @pytest.fixture(params=sorted(KUBELETS))
    def kubelet_version(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
        """Runs the test with each kubelet of KUBELETS on the node, then restores."""
        variable = KUBELETS[request.param]
        if variable is None:
            yield cluster.kubelet_version()
            return
        binary = os.environ.get(variable)
        if not binary or not Path(binary).is_file():
            raise AssertionError(f"${variable} must name the old kubelet (make e2e sets it)")
        own = cluster.bin / "kubelet"
        cluster.restart_kubelet(Path(binary))
        try:
            cluster.wait_node_ready(120)

            def old_version() -> str | None:
                version = cluster.kubelet_version()
                return version if version and not version.startswith("v1.37") else None

            yield wait_for(old_version, 60, "the old kubelet's version on the Node")
        finally:
            cluster.restart_kubelet(own)
            cluster.wait_node_ready(120)
