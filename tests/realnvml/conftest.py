"""The real-NVML tier: the real ``pynvml`` module over fatia's mock ``libnvidia-ml.so.1``.

Every test here runs ``fatia run --nvml real`` as a process whose NVML is the
library that ``make nvml-mock`` builds (``tests/realnvml/mocknvml``), configured per
test through three files (see ``mocknvml.c`` for their format):

- ``node.conf``  the GPUs (``FATIA_MOCK_NVML_CONFIG``), read at ``nvmlInit``;
- ``faults``     run-time faults and events (``FATIA_MOCK_NVML_FAULTS``), re-read
                 on every NVML call: :meth:`MockNode.inject` appends to it;
- ``trace``      one line per NVML call the library answered (:meth:`MockNode.calls`);
- ``state``      MIG mode and instances (``FATIA_MOCK_NVML_STATE``), kept across
                 fatia restarts as the hardware keeps them.

The tier proves, once per session and for every fatia process it starts, that the
process imported the real ``pynvml`` and mapped the mock library (``/proc/PID/maps``),
never fatia's simulator.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import RunFatia

from deviceplugin.testing.daemon import FatiaProcess
from realnvml.mock import LIBRARY, MockNode, mapped_library

HERE = Path(__file__).resolve().parent
BUILD = HERE / "mocknvml" / "build.sh"
_session: dict[str, Any] = {"tests": 0, "calls": set()}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realnvml: runs the real pynvml against fatia's mock libnvidia-ml (make nvml-mock)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.realnvml)
            _session["tests"] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, a worker hands what it saw to the controller, which prints it."""
    output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if output is not None and "probe" in _session:
        output["realnvml"] = {**_session, "calls": sorted(_session["calls"])}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    found = getattr(node, "workeroutput", {}).get("realnvml")
    if found:
        _session.setdefault("probe", found["probe"])
        _session["started"] = min(_session.get("started", found["started"]), found["started"])
        _session["calls"].update(found["calls"])
        _session["tests"] = max(_session["tests"], found["tests"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "probe" not in _session:
        return
    probe = _session["probe"]
    wall = time.monotonic() - _session["started"]
    terminalreporter.write_line(
        f"realnvml: real pynvml {probe['pynvml']} ({probe['pynvml_version']}) loaded "
        f"{probe['library']} (driver {probe['driver']}, NVML {probe['nvml']}); "
        f"{_session['tests']} tests, {wall:.1f}s"
    )
    calls = sorted(_session["calls"])
    terminalreporter.write_line(f"realnvml: {len(calls)} NVML calls answered by the mock: {', '.join(calls)}")


# -- the library --------------------------------------------------------------------


def _build() -> Path:
    """The directory holding the mock ``libnvidia-ml.so.1``, built if it is not yet."""
    try:
        out = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=300, check=True)
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        pytest.fail(
            f"the mock NVML library cannot be built ({detail.strip()}); "
            f"run `make nvml-mock` (it needs a C compiler and Go, for go-nvml's nvml.h)",
            pytrace=False,
        )
    path = Path(out.stdout.strip().splitlines()[-1])
    if not (path / LIBRARY).is_file():
        pytest.fail(f"{BUILD} reported {path}, which has no {LIBRARY}", pytrace=False)
    return path


PROBE = r"""
import json, os, pynvml
pynvml.nvmlInit()
maps = open("/proc/self/maps").read().split("\n")
lib = sorted({line.split()[-1] for line in maps if "libnvidia-ml" in line})
out = {
    "pynvml": pynvml.__file__,
    "pynvml_version": __import__("importlib.metadata").metadata.version("nvidia-ml-py"),
    "library": lib,
    "driver": str(pynvml.nvmlSystemGetDriverVersion()),
    "nvml": str(pynvml.nvmlSystemGetNVMLVersion()),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def mock_library() -> Path:
    """The mock library's directory; the session fails here, naming why, if it is unusable."""
    path = _build()
    _session["started"] = time.monotonic()
    probe_dir = Path(tempfile.mkdtemp(prefix="fatia-realnvml-"))
    try:
        node = MockNode(path, probe_dir)
        node.configure(["model=a100-40gb"])
        probe = json.loads(node.python(PROBE))
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    assert probe["library"] == [str(path / LIBRARY)], probe
    assert "site-packages" in probe["pynvml"] and "mig" not in Path(probe["pynvml"]).parts, probe
    probe["library"] = probe["library"][0]
    _session["probe"] = probe
    return path


# -- one mock node per test ---------------------------------------------------------


@pytest.fixture
def mock_node(mock_library: Path, sockdir: Path) -> Iterator[MockNode]:
    node = MockNode(mock_library, sockdir / "nvml")
    yield node
    _session["calls"].update(name for name, _gpu, _rc in node.calls())


class StartFatia(Protocol):
    """The ``start_fatia`` fixture: ``fatia run --nvml real`` over the test's mock node."""

    def __call__(self, config_text: str | None = None, *, extra: tuple[str, ...] = ()) -> FatiaProcess: ...


@pytest.fixture
def start_fatia(run_fatia: RunFatia, mock_node: MockNode) -> StartFatia:
    """``start_fatia(config_text=None)``: ``fatia run --nvml real`` over ``mock_node``.

    It returns once the process has mapped the mock library, and fails if the
    library it mapped is any other.
    """

    def start(config_text: str | None = None, *, extra: tuple[str, ...] = ()) -> FatiaProcess:
        config = None
        if config_text is not None:
            config = mock_node.root / "config.yaml"
            config.write_text(config_text)
        daemon = run_fatia("real", config=config, extra=extra, env=mock_node.env)
        deadline = time.monotonic() + 15
        while not mapped_library(daemon.process.pid) and time.monotonic() < deadline:
            assert daemon.process.poll() is None, f"fatia exited:\n{daemon.logs()}"
            time.sleep(0.02)
        assert mapped_library(daemon.process.pid) == [str(mock_node.library / LIBRARY)], daemon.logs()
        return daemon

    return start
