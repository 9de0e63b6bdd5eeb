"""How long fatia takes to refuse hostile configs, against reading a normal one.

The unit tests (``tests/test_config_bounds.py``) check what is deterministic: each
hostile config is refused, with which message, and the traced memory stays small. How
fast it is refused depends on the machine and its load, so it is measured here, where
a number is printed rather than asserted on a shared box:

- an alias bomb (9**9 values once expanded) under a key fatia does not use;
- a 1 MiB dense list under an unknown key;
- 20 MiB of text (refused before parsing);
- a plan of 560,000 devices on 8 simulated H100s (refused without building one).

Each is timed as the best of ``--repeat`` runs, and so is the baseline, parsing the
design's example config; the ratio says how many ordinary config reads a refusal costs.
Target (issue 9): every refusal within 1 s on these machines.

Run: ``.venv/bin/python bench/hostile_configs.py [--repeat 5]``
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deviceplugin.config import limits
from deviceplugin.config.schema import parse_config
from deviceplugin.plan.node import errors, plan_node
from mig.errors import ConfigError
from mig.inventory import InventoryReader
from mig.nvml import open_nvml

TARGET_S = 1.0
BASELINE = """version: v1
gpus:
  - devices: [0, 1]
    mig-devices: {1g.10gb: 7}
  - devices: all
    replicas: 4
migStrategy: mixed
"""
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def refused(text: str) -> Callable[[], None]:
    def parse() -> None:
        with contextlib.suppress(ConfigError):
            parse_config(text)

    return parse


def huge_plan(state_dir: Path) -> Callable[[], None]:
    node = InventoryReader(open_nvml("sim:h100-80gb:8", state_dir=state_dir, node_name="n")).read()
    config = parse_config("version: v1\ngpus: [{devices: all, mig-devices: {1g.10gb: 7}, replicas: 10000}]\n")

    def plan() -> None:
        assert errors(plan_node(node, config))

    return plan


def best(call: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    head = "version: v1\njunk: ["
    dense = head + ",".join(["1"] * ((limits.MAX_BYTES - len(head) - 2) // 2)) + "]\n"
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "alias bomb under imex": refused(
                "version: v1\nflags: {migStrategy: none}\nimex:\n  " + BILLION_LAUGHS.replace("\n", "\n  ")
            ),
            "1 MiB dense list, unknown key": refused(dense),
            "20 MiB of text": refused("version: v1\n" + "#" * (20 * limits.MAX_BYTES)),
            "plan of 560,000 devices": huge_plan(Path(tmp)),
        }
        baseline = best(refused(BASELINE), args.repeat * 20)
        print(f"baseline: the example config parsed in {baseline * 1e3:.3f} ms (best of {args.repeat * 20})")
        print(f"{'hostile input':34} {'refused in':>11} {'x baseline':>11}")
        worst = 0.0
        for name, call in cases.items():
            seconds = best(call, args.repeat)
            worst = max(worst, seconds)
            print(f"{name:34} {seconds * 1e3:9.2f} ms {seconds / baseline:11.1f}")
    verdict = "PASS" if worst <= TARGET_S else "FAIL"
    print(f"slowest refusal: {worst:.3f} s (target <= {TARGET_S:.1f} s) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
