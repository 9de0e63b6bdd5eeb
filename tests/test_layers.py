"""The layer rules of the source tree, checked on every ``make test``.

The folders are the architecture (see the README's "Layout"); these rules keep it so:

- ``mig`` is the GPU side and knows nothing of Kubernetes: it imports nothing from
  ``deviceplugin`` and no Kubernetes or gRPC library;
- only ``mig/nvml`` (the seam) and ``mig/sim`` (the simulated library, which reuses
  pynvml's structs and exceptions) import ``pynvml``: everything else reaches NVML through
  the seam object it is given;
- ``deviceplugin.testing`` (the kubelet emulator and the fake API server) is imported only
  by tests, benchmarks and ``fatia demo``;
- the pure core (``deviceplugin.config``, ``deviceplugin.plan``) does no I/O with the
  kubelet or the API server: no gRPC, no Kubernetes client;
- only ``deviceplugin.cluster`` (and the fake API server) speak HTTP to the API server:
  fatia's own client (:mod:`deviceplugin.cluster.kubeapi`) is built on ``urllib3``, and
  the official ``kubernetes`` client is for tests only.

Imports are read with :mod:`ast`, so a module does not have to be importable to be checked,
and an import inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATED = "deviceplugin/api/"


@dataclass(frozen=True)
class Rule:
    """Modules under ``where`` (but not under ``unless``) may not import ``forbidden``."""

    name: str
    where: tuple[str, ...]
    forbidden: tuple[str, ...]
    unless: tuple[str, ...] = ()

    def applies(self, module: str) -> bool:
        return _under(module, self.where) and not _under(module, self.unless)


RULES = (
    Rule("mig knows nothing of Kubernetes", ("mig",), ("deviceplugin", "kubernetes", "urllib3", "grpc")),
    Rule(
        "only the NVML seam and the simulator import pynvml",
        ("deviceplugin", "mig"),
        ("pynvml",),
        unless=("mig.nvml", "mig.sim"),
    ),
    Rule(
        "deviceplugin.testing is for tests, benchmarks and the demo",
        ("deviceplugin", "mig"),
        ("deviceplugin.testing",),
        unless=("deviceplugin.testing", "deviceplugin.cli.demo"),
    ),
    Rule(
        "the pure core talks to no kubelet and no API server",
        ("deviceplugin.config", "deviceplugin.plan"),
        (
            "grpc",
            "kubernetes",
            "deviceplugin.kubelet",
            "deviceplugin.cluster",
            "deviceplugin.agent",
            "deviceplugin.cli",
        ),
    ),
    Rule(
        "only deviceplugin.cluster talks to the Kubernetes API",
        ("deviceplugin",),
        ("kubernetes", "urllib3"),
        unless=("deviceplugin.cluster", "deviceplugin.testing"),
    ),
)


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[list[str], int]]:
    """Per import statement: the modules (and ``from`` names) it imports, and its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield [alias.name for alias in node.names], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            # ``from deviceplugin import testing`` imports deviceplugin.testing
            yield [base, *(f"{base}.{alias.name}" for alias in node.names)], node.lineno


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that breaks a rule, as ``path:line: rule (import)``."""
    found = []
    for top in ("deviceplugin", "mig"):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith(GENERATED):
                found += file_violations(rel, path.read_text())
    return found


def file_violations(rel: str, source: str) -> list[str]:
    """The imports of one module (``rel``, its path in the tree; ``source``) that break a rule."""
    path = Path(rel)
    module = _module_name(path)
    found = []
    for names, line in _imports(ast.parse(source, filename=rel), module, path.name == "__init__.py"):
        for rule in RULES:
            bad = [n for n in names if _under(n, rule.forbidden)]
            if rule.applies(module) and bad:
                found.append(f"{rel}:{line}: {rule.name} (imports {bad[0]})")
    return found


def test_the_tree_keeps_its_layers() -> None:
    assert violations(REPO) == []


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("mig/planner.py", "from deviceplugin.config.schema import Config"),
        ("mig/layout.py", "import kubernetes"),
        ("deviceplugin/agent/loop.py", "import pynvml"),
        ("deviceplugin/kubelet/server.py", "from deviceplugin.testing import kubelet"),
        ("deviceplugin/plan/node.py", "import grpc"),
        ("deviceplugin/config/schema.py", "from ..cluster import node"),
        ("deviceplugin/agent/loop.py", "from kubernetes import client"),
        ("deviceplugin/health/monitor.py", "import urllib3"),
    ],
)
def test_a_crossed_layer_is_caught(path: str, line: str) -> None:
    source = (REPO / path).read_text()
    crossed = source + f"\n\ndef _crossing() -> None:\n    {line}\n"
    found = set(file_violations(path, crossed)) - set(file_violations(path, source))
    assert len(found) == 1, found
    assert found.pop().startswith(f"{path}:")
