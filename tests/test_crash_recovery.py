"""Specification of crash safety: a MIG apply killed or failing at any NVML step.

Killed (SIGKILL, before or after any mutating NVML call): the next apply, or the
next ``fatia run``, converges to the target with no orphaned GPU instance and no
journal left. Failing (an NVML error at any step): the apply raises
:class:`ApplyError` and the GPUs are back at their previous layout, or the
message says the previous layout could not be restored.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from conftest import RecordingNvml

from deviceplugin.agent.status import STATUS_FILE
from mig.apply import JOURNAL_FILE, GpuTarget, Reconciler
from mig.errors import ApplyError
from mig.inventory import Inventory, InventoryReader
from mig.layout import Placement, normalize, profile_counts
from mig.nvml import open_nvml
from mig.planner import plan_gpu
from mig.sim.nvml import SimControl
from mig.sim.state import STATE_FILE, SimFault

REPO = Path(__file__).resolve().parents[1]
SPEC = "h100-80gb:2"

# Applies in child processes, so that an injected fault can SIGKILL an apply: a server that
# has imported fatia's MIG code forks one child per request (a JSON line: state directory,
# spec, targets, output file) and answers with the child's exit status (-9: SIGKILL), so
# that no apply pays for a Python start-up.
APPLY_SERVER = """
import json, os, sys, traceback
from pathlib import Path
from mig.inventory import InventoryReader
from mig.layout import Placement
from mig.nvml import open_nvml
from mig.apply import GpuTarget, Reconciler

def apply(state, spec, raw):
    nvml = open_nvml(spec, state_dir=state, node_name="n")
    inventory = InventoryReader(nvml).read()
    Reconciler(nvml, state_dir=state).apply([
        GpuTarget(i, inventory.gpu(i).uuid, mig, tuple(Placement(*p) for p in layout))
        for i, mig, layout in raw
    ])

while line := sys.stdin.readline():
    state, spec, raw, output = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            apply(Path(state), spec, raw)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""

Desired = dict[int, dict[str, int] | None]  # GPU index -> profile counts; None: MIG off

# Destroys and creates on both GPUs; GPU 0 keeps 3g@4 and the 1g's at 2 and 3.
LAYOUT_CHANGE: tuple[Desired, Desired] = (
    {0: {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}, 1: {"4g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}},
    {0: {"3g.40gb": 1, "1g.10gb": 4}, 1: {"3g.40gb": 2}},
)
# GPU 0 switches MIG off, GPU 1 switches it on.
MODE_CHANGE: tuple[Desired, Desired] = (
    {0: {"3g.40gb": 1, "2g.20gb": 2}, 1: None},
    {0: None, 1: {"2g.20gb": 2, "1g.10gb": 3}},
)
TRANSITIONS = {"layout-change": LAYOUT_CHANGE, "mode-change": MODE_CHANGE}
MUTATING = {
    "nvmlDeviceSetMigMode",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlDeviceCreateGpuInstance",
    "nvmlGpuInstanceDestroy",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlComputeInstanceDestroy",
}


class CountingNvml(RecordingNvml):
    @property
    def mutating(self) -> int:
        return sum(n for name, n in self.counts.items() if name in MUTATING)


def open_node(state_dir: Path) -> tuple[Any, Reconciler]:
    nvml = open_nvml(f"sim:{SPEC}", state_dir=state_dir, node_name="n")
    return nvml, Reconciler(nvml, state_dir=state_dir)


def targets_for(inventory: Inventory, desired: Desired) -> list[GpuTarget]:
    targets = []
    for index, counts in desired.items():
        gpu = inventory.gpu(index)
        if counts is None:
            targets.append(GpuTarget(index, gpu.uuid, False))
        else:
            layout = plan_gpu(gpu.profiles, counts, existing=gpu.layout)
            targets.append(GpuTarget(index, gpu.uuid, True, layout))
    return targets


def as_json(targets: list[GpuTarget]) -> str:
    return json.dumps(
        [[t.index, t.mig_enabled, [[p.start, p.size, p.profile] for p in t.layout]] for t in targets]
    )


def snapshot(inventory: Inventory) -> list[tuple[bool, tuple[Placement, ...]]]:
    return [(g.mig_enabled, g.layout if g.mig_enabled else ()) for g in inventory.gpus]


def expected(targets: list[GpuTarget]) -> list[tuple[bool, tuple[Placement, ...]]]:
    return [
        (t.mig_enabled, normalize(t.layout) if t.mig_enabled else ())
        for t in sorted(targets, key=lambda t: t.index)
    ]


def assert_no_orphans(inventory: Inventory) -> None:
    for gpu in inventory.gpus:
        for gi in gpu.gpu_instances:
            assert gi.complete, f"GPU {gpu.index}: orphaned or partial GPU instance {gi}"


class Scenario:
    """A state directory at the "before" layout of a transition, and the "after" targets."""

    def __init__(self, base: Path, transition: tuple[Desired, Desired]) -> None:
        self.base = base / "base"
        nvml, reconciler = open_node(self.base)
        inventory = InventoryReader(nvml).read()
        reconciler.apply(targets_for(inventory, transition[0]))
        self.before = InventoryReader(nvml).read()
        self.targets = targets_for(self.before, transition[1])
        assert snapshot(self.before) != expected(self.targets)

    def fresh(self, path: Path) -> Path:
        """A new state directory holding a copy of the "before" state."""
        path.mkdir(parents=True)
        shutil.copy(self.base / STATE_FILE, path / STATE_FILE)
        return path

    def count_steps(self, tmp: Path) -> CountingNvml:
        """Apply the transition once, counting the NVML calls it makes."""
        state = self.fresh(tmp / "count")
        nvml, _ = open_node(state)
        counting = CountingNvml(nvml)
        result = Reconciler(counting, state_dir=state).apply(self.targets)
        assert result.done
        return counting


@pytest.fixture(params=sorted(TRANSITIONS))
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Scenario:
    return Scenario(tmp_path, TRANSITIONS[request.param])


class Applier:
    """The apply server (``APPLY_SERVER``), one per test module."""

    def __init__(self) -> None:
        self._server = subprocess.Popen(
            [sys.executable, "-c", APPLY_SERVER],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, state: Path, targets: list[GpuTarget]) -> subprocess.CompletedProcess[str]:
        """One apply in a child process: its exit status, and its output as ``stderr``."""
        assert self._server.stdin is not None and self._server.stdout is not None
        output = state.with_name(state.name + ".out")
        request = [str(state), f"sim:{SPEC}", json.loads(as_json(targets)), str(output)]
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        ready, _, _ = select.select([self._server.stdout], [], [], 60)
        assert ready, "the apply did not end within 60 s"
        returncode = int(self._server.stdout.readline())
        return subprocess.CompletedProcess(request, returncode, "", output.read_text())

    def close(self) -> None:
        assert self._server.stdin is not None
        self._server.stdin.close()
        self._server.wait(10)


@pytest.fixture(scope="module")
def applier() -> Iterator[Applier]:
    server = Applier()
    yield server
    server.close()


# --- SIGKILL at every step --------------------------------------------------------------------


def test_an_apply_killed_at_any_step_converges_on_the_next_apply(
    scenario: Scenario, tmp_path: Path, applier: Applier
) -> None:
    steps = scenario.count_steps(tmp_path).mutating
    assert steps >= 8
    for when in ("before", "after"):
        for k in range(steps):
            state = scenario.fresh(tmp_path / f"{when}-{k}")
            SimControl(state).inject_fault(SimFault(call="mutating", skip=k, action="kill", when=when))

            killed = applier.run(state, scenario.targets)

            assert killed.returncode == -signal.SIGKILL, (when, k, killed.stderr[-2000:])
            nvml, reconciler = open_node(state)
            assert reconciler.interrupted() is not None, (when, k)
            result = reconciler.apply(scenario.targets)
            inventory = InventoryReader(nvml).read()
            assert result.done, (when, k, result.waiting)
            assert snapshot(inventory) == expected(scenario.targets), (when, k)
            assert_no_orphans(inventory)
            assert not (state / JOURNAL_FILE).exists(), (when, k)


def test_the_daemon_restarted_after_a_kill_mid_apply_converges(
    sockdir: Path, run_fatia: Callable[..., Any], tmp_path: Path
) -> None:
    state = sockdir / "state"
    nvml = open_nvml(f"sim:{SPEC}", state_dir=state, node_name="node-a")
    before_targets = targets_for(InventoryReader(nvml).read(), LAYOUT_CHANGE[0])
    Reconciler(nvml, state_dir=state).apply(before_targets)
    desired = {"3g.40gb": 1, "1g.10gb": 4}
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: v1\ngpus:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {3g.40gb: 1, 1g.10gb: 4}\n"
    )
    control = SimControl(state)
    # The 4th mutating call: GPU 0 has lost its 2g and is part-way through the rest.
    control.inject_fault(SimFault(call="mutating", skip=3, action="kill", when="after"))

    first = run_fatia(f"sim:{SPEC}", config=config)

    assert first.process.wait(30) == -signal.SIGKILL, first.logs()[-3000:]
    assert (state / JOURNAL_FILE).exists()

    second = run_fatia(f"sim:{SPEC}", config=config)

    def converged() -> bool:
        try:
            status = json.loads((state / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return False
        return bool(status.get("phase") == "idle")

    from conftest import wait_until

    assert wait_until(converged, timeout=30), second.logs()[-3000:]
    inventory = InventoryReader(nvml).read()
    for gpu in inventory.gpus:
        assert gpu.mig_enabled and profile_counts(gpu.layout) == desired, gpu.layout
    assert_no_orphans(inventory)
    assert not (state / JOURNAL_FILE).exists()
    assert "mig_recovery" in second.logs()


# --- NVML errors at every step ----------------------------------------------------------------

ERRORS = {
    "INSUFFICIENT_RESOURCES": pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES,
    "IN_USE": pynvml.NVML_ERROR_IN_USE,
    "GPU_IS_LOST": pynvml.NVML_ERROR_GPU_IS_LOST,
    "UNKNOWN": pynvml.NVML_ERROR_UNKNOWN,
}


def faults_at_every_step(scenario: Scenario, tmp_path: Path) -> Iterator[tuple[str, SimFault]]:
    counts = scenario.count_steps(tmp_path).counts
    steps = sum(n for name, n in counts.items() if name in MUTATING)
    for name, code in ERRORS.items():
        for when in ("before", "after"):
            for k in range(steps):
                yield f"{name} {when} mutating #{k}", SimFault(call="mutating", error=code, skip=k, when=when)
    # Reads too: the first and the last few calls of read-only kinds.
    for call in (
        "nvmlGpuInstanceGetInfo",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGpuInstanceById",
    ):
        total = counts.get(call, 0)
        for k in sorted({0, 1, total // 2, total - 2, total - 1} & set(range(total))):
            yield f"UNKNOWN at {call} #{k}", SimFault(call=call, skip=k)


def test_an_nvml_error_at_any_step_raises_apply_error_and_restores_the_previous_layout(
    scenario: Scenario, tmp_path: Path
) -> None:
    cases = list(faults_at_every_step(scenario, tmp_path))
    assert len(cases) > 60
    skipped = 0
    for n, (what, fault) in enumerate(cases):
        state = scenario.fresh(tmp_path / f"case-{n}")
        nvml, reconciler = open_node(state)
        SimControl(state).inject_fault(fault)

        try:
            result = reconciler.apply(scenario.targets)
        except ApplyError as raised:
            SimControl(state).clear_faults()
            inventory = InventoryReader(nvml).read()
            assert snapshot(inventory) == snapshot(scenario.before), (what, str(raised))
            message = str(raised)
            assert "previous layout was restored" in message or "nothing was changed" in message, (
                what,
                message,
            )
        else:
            # A read that failed before anything changed costs that GPU this apply only:
            # it waits (named), the other GPU is applied, and the next apply finishes it.
            assert fault.call not in MUTATING, what
            assert any("cannot be read" in w and fault.call in w for w in result.waiting), (
                what,
                result.waiting,
            )
            SimControl(state).clear_faults()
            assert reconciler.apply(scenario.targets).done, what
            inventory = InventoryReader(nvml).read()
            assert snapshot(inventory) == expected(scenario.targets), what
            skipped += 1
        assert_no_orphans(inventory)
        assert not (state / JOURNAL_FILE).exists(), what
    assert skipped < len(cases) // 4


def test_instances_untouched_by_a_failed_apply_keep_their_mig_devices(
    scenario: Scenario, tmp_path: Path
) -> None:
    state = scenario.fresh(tmp_path / "s")
    nvml, reconciler = open_node(state)
    kept = {
        ci.uuid
        for gpu in scenario.before.gpus
        for gi in gpu.gpu_instances
        for ci in gi.compute_instances
        if any(t.index == gpu.index and gi.placement in t.layout for t in scenario.targets)
    }
    steps = scenario.count_steps(tmp_path).mutating
    SimControl(state).inject_fault(SimFault(call="mutating", skip=steps - 1))

    with pytest.raises(ApplyError):
        reconciler.apply(scenario.targets)

    now = {
        ci.uuid
        for gpu in InventoryReader(nvml).read().gpus
        for gi in gpu.gpu_instances
        for ci in gi.compute_instances
    }
    assert kept <= now


class LosingNvml(CountingNvml):
    """Loses GPU ``gpu`` for good (as a fallen-off-the-bus GPU) at its ``at``-th mutating call."""

    def __init__(self, inner: Any, control: SimControl, *, gpu: int, at: int) -> None:
        super().__init__(inner)
        self._control, self._gpu, self._at = control, gpu, at

    def __getattr__(self, name: str) -> Any:
        call = super().__getattr__(name)
        if name not in MUTATING:
            return call

        def lose_then_call(*args: Any, **kwargs: Any) -> Any:
            if self.mutating == self._at:
                self._control.set_lost(self._gpu)
            return call(*args, **kwargs)

        return lose_then_call


def test_a_gpu_lost_mid_apply_is_named_as_not_restored(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, LAYOUT_CHANGE)
    steps = scenario.count_steps(tmp_path).mutating
    state = scenario.fresh(tmp_path / "s")
    nvml, _ = open_node(state)
    control = SimControl(state)
    losing = LosingNvml(nvml, control, gpu=1, at=steps - 2)  # GPU 1 is changed last

    with pytest.raises(ApplyError) as raised:
        Reconciler(losing, state_dir=state).apply(scenario.targets)

    message = str(raised.value)
    assert "GPU 1" in message and "lost" in message, message
    assert "previous layout was restored" not in message, message
    inventory = InventoryReader(nvml).read()
    assert snapshot(inventory)[0] == snapshot(scenario.before)[0]  # GPU 0 was rolled back
    assert_no_orphans(inventory)
    assert not (state / JOURNAL_FILE).exists()


def test_a_gpu_failing_every_change_is_reported_and_the_others_restored(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, LAYOUT_CHANGE)
    state = scenario.fresh(tmp_path / "s")
    nvml, reconciler = open_node(state)
    # GPU 0 accepts its first two changes (a CI and its GI go), then fails every one.
    SimControl(state).inject_fault(
        SimFault(call="mutating", error=pynvml.NVML_ERROR_UNKNOWN, gpu=0, skip=2, count=1000)
    )

    with pytest.raises(ApplyError) as raised:
        reconciler.apply(scenario.targets)

    message = str(raised.value)
    assert "GPU 0" in message and "restor" in message, message
    assert "previous layout was restored" not in message, message
    SimControl(state).clear_faults()
    inventory = InventoryReader(nvml).read()
    assert snapshot(inventory)[1] == snapshot(scenario.before)[1]
    assert_no_orphans(inventory)
    assert not (state / JOURNAL_FILE).exists()


def test_a_rollback_takes_back_a_pending_ampere_mode_change(tmp_path: Path) -> None:
    nvml = open_nvml("sim:a100-40gb:2", state_dir=tmp_path, node_name="n")
    reconciler = Reconciler(nvml, state_dir=tmp_path)
    control = SimControl(tmp_path)
    inventory = InventoryReader(nvml).read()
    reconciler.apply([GpuTarget(1, inventory.gpu(1).uuid, True)])
    control.set_clients(0, 1)  # GPU 0's mode change will stay pending
    reconciler.apply(targets_for(InventoryReader(nvml).read(), {1: {"7g.40gb": 1}}))
    targets = targets_for(InventoryReader(nvml).read(), {0: {"3g.20gb": 2}, 1: {"3g.20gb": 2}})
    # GPU 0's mode change goes pending (call #0); GPU 1's first change fails.
    control.inject_fault(SimFault(call="mutating", skip=1))

    with pytest.raises(ApplyError):
        reconciler.apply(targets)

    gpu0 = InventoryReader(nvml).read().gpu(0)
    assert not gpu0.mig_enabled and not gpu0.mig_pending  # a later reset will not enable MIG
    assert (
        InventoryReader(nvml).read().gpu(1).layout
        == targets_for(InventoryReader(nvml).read(), {1: {"7g.40gb": 1}})[0].layout
    )


# --- recover() ----------------------------------------------------------------------------------


def test_recover_finishes_a_rollback_that_a_crash_interrupted(tmp_path: Path, applier: Applier) -> None:
    scenario = Scenario(tmp_path, LAYOUT_CHANGE)
    state = scenario.fresh(tmp_path / "s")
    control = SimControl(state)
    # The 5th change fails; the rollback's first change kills the process.
    control.inject_fault(SimFault(call="mutating", error=pynvml.NVML_ERROR_UNKNOWN, skip=4))
    control.inject_fault(SimFault(call="mutating", action="kill", skip=4))

    killed = applier.run(state, scenario.targets)

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    nvml, reconciler = open_node(state)
    assert (reconciler.interrupted() or {}).get("phase") == "rolling-back"

    message = reconciler.recover()

    assert message is not None and "rolling back" in message
    inventory = InventoryReader(nvml).read()
    assert snapshot(inventory) == snapshot(scenario.before)
    assert_no_orphans(inventory)
    assert not (state / JOURNAL_FILE).exists()


def test_recover_reports_an_interrupted_apply_and_the_next_apply_finishes_it(
    tmp_path: Path, applier: Applier
) -> None:
    scenario = Scenario(tmp_path, LAYOUT_CHANGE)
    state = scenario.fresh(tmp_path / "s")
    SimControl(state).inject_fault(SimFault(call="mutating", action="kill", skip=3))
    assert applier.run(state, scenario.targets).returncode == -signal.SIGKILL
    nvml, reconciler = open_node(state)
    half = snapshot(InventoryReader(nvml).read())

    message = reconciler.recover()

    assert message is not None and "interrupted" in message and "GPU 0" in message, message
    assert snapshot(InventoryReader(nvml).read()) == half  # recover alone changes nothing
    assert reconciler.apply(scenario.targets).done
    assert snapshot(InventoryReader(nvml).read()) == expected(scenario.targets)
    assert not (state / JOURNAL_FILE).exists()


def test_recover_without_a_journal_says_nothing(tmp_path: Path) -> None:
    _, reconciler = open_node(tmp_path)
    assert reconciler.recover() is None
