"""The config fuzz tier: Hypothesis profiles and the figures printed after the run.

Profiles: ``ci`` (the default; a fixed seed through ``derandomize``, bounded examples, no
example database) and ``long`` for a local search::

    .venv/bin/python -m pytest tests/fuzz --hypothesis-profile=long

(``--hypothesis-profile`` needs this directory on the command line: Hypothesis reads the
option before pytest imports conftest files of directories it was not given.)

Every case the tests try is measured (wall time untraced, then peak memory under
``tracemalloc``); the figures appear in the terminal summary of every run (with
pytest-xdist, when this directory is on the command line: the controller loads this
file only then).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=120, derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile("long", max_examples=5_000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile("ci")  # a --hypothesis-profile given for this directory is loaded after


@dataclass
class Figures:
    """What the fuzz run found: cases, and the worst time and memory of any one."""

    cases: int = 0
    configs: int = 0
    errors: int = 0
    max_seconds: float = 0.0
    max_seconds_case: str = ""
    max_mib: float = 0.0
    max_mib_case: str = ""
    largest_bytes: int = 0

    def add(self, *, name: str, accepted: bool, seconds: float, mib: float, size: int) -> None:
        self.cases += 1
        self.configs += accepted
        self.errors += not accepted
        self.largest_bytes = max(self.largest_bytes, size)
        if seconds > self.max_seconds:
            self.max_seconds, self.max_seconds_case = seconds, name
        if mib > self.max_mib:
            self.max_mib, self.max_mib_case = mib, name

    def merge(self, other: Figures) -> None:
        self.cases += other.cases
        self.configs += other.configs
        self.errors += other.errors
        self.largest_bytes = max(self.largest_bytes, other.largest_bytes)
        if other.max_seconds > self.max_seconds:
            self.max_seconds, self.max_seconds_case = other.max_seconds, other.max_seconds_case
        if other.max_mib > self.max_mib:
            self.max_mib, self.max_mib_case = other.max_mib, other.max_mib_case


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, a worker hands its figures to the controller."""
    output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["config_fuzz"] = asdict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    found = getattr(node, "workeroutput", {}).get("config_fuzz")
    if found:
        FIGURES.merge(Figures(**found))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    f = FIGURES
    if not f.cases:
        return
    terminalreporter.write_sep("-", "config fuzz")
    terminalreporter.write_line(
        f"{f.cases} cases ({f.configs} configs, {f.errors} config errors, none other), "
        f"profile {settings.get_current_profile_name()}, largest input {f.largest_bytes} bytes"
    )
    terminalreporter.write_line(f"max time   {f.max_seconds * 1000:.1f} ms  ({f.max_seconds_case})")
    terminalreporter.write_line(f"max memory {f.max_mib:.2f} MiB peak, tracemalloc  ({f.max_mib_case})")
