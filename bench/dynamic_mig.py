"""Benchmark: MIG slices cut on demand (DRA mode) against the best static layout.

A stream of pods asking for MIG slices of mixed sizes arrives at a simulated node of 8
H100-80GB GPUs and leaves again (seeded: every run is the same). A pod that cannot be
placed when it arrives is rejected (a batch job would wait; the count of rejections is
what a static layout costs). Two ways to serve it:

* **static**: every GPU is cut into the same layout up front (all-balanced, all-1g, ...,
  as mig-parted configs do); a pod takes a free instance of exactly its profile, as the
  device plugin's per-profile resources require. Every static layout is tried; the best
  is reported.
* **on demand**: the pool fatia publishes in DRA mode (every legal placement of every
  profile, with the shared counters of :mod:`deviceplugin.dra.devices`); a pod takes the
  first device, in the published order, whose counters are all free, as the scheduler's
  allocator does, and gives it back when it leaves. This is the scheduler's rule replayed
  offline, on the same devices and counters fatia publishes.

Printed: the fraction of pods placed and the time-averaged GPU-memory utilisation (memory
of the instances pods hold over all GPU memory) for each, and the ratio of pods placed
(target: on demand >= 1.3x the best single static layout). For honesty also: the best
*per-GPU combination* of static layouts, chosen with hindsight for the very stream (no
operator can do that), and a sensitivity table over two mixes and three loads: the gain
comes from serving sizes a static layout does not have, so it shrinks when the mix is
what the balanced layout was made for, and when the node is overloaded whatever it does.

Then the on-demand run's claims are replayed through the real prepare path on the
simulated node: :class:`deviceplugin.dra.prepare.Preparer` with the Reconciler, the
journal, the checkpoint and the CDI writer, prepare at each arrival and unprepare at each
departure in order, timing each claim -> prepared (target: p99 <= 1 s). A prepare that
fails, or an instance left behind, fails the benchmark.

    .venv/bin/python bench/dynamic_mig.py [--pods 200] [--seed 1] [--check]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deviceplugin.config.schema import Config, parse_config  # noqa: E402
from deviceplugin.dra import DRIVER_NAME  # noqa: E402
from deviceplugin.dra.allocation import ClaimRef  # noqa: E402
from deviceplugin.dra.cdi import CdiWriter  # noqa: E402
from deviceplugin.dra.checkpoint import Checkpoint  # noqa: E402
from deviceplugin.dra.devices import DraDevice, PoolModel, pool_model  # noqa: E402
from deviceplugin.dra.pool import plan_pool  # noqa: E402
from deviceplugin.dra.prepare import Preparer  # noqa: E402
from mig.apply import GpuTarget, Reconciler  # noqa: E402
from mig.inventory import InventoryReader  # noqa: E402
from mig.nvml import open_nvml  # noqa: E402
from mig.sim.state import SIM_PROC_ROOT  # noqa: E402
from mig.timeslice import timeslicer_for  # noqa: E402

GPUS = 8
NODE = "bench"
# What pods ask for (weights). "mixed": every size the mig-parted single and balanced
# layouts know, equally often (the default). "small-first": mostly inference-sized
# slices, which the balanced layout was made for (shown so the gain's dependence on the
# mix is visible).
MIXES = {
    "mixed": {"1g.10gb": 20, "2g.20gb": 20, "3g.40gb": 20, "4g.40gb": 20, "7g.80gb": 20},
    "small-first": {"1g.10gb": 40, "2g.20gb": 20, "3g.40gb": 20, "4g.40gb": 5, "7g.80gb": 15},
}
PROFILES = ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
# mig-parted-style single layouts, the same on every GPU.
STATIC = {
    "all-1g.10gb": {"1g.10gb": 7},
    "all-2g.20gb": {"2g.20gb": 3},
    "all-3g.40gb": {"3g.40gb": 2},
    "all-4g.40gb": {"4g.40gb": 1},
    "all-7g.80gb": {"7g.80gb": 1},
    "all-balanced": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
    "1g-and-3g": {"1g.10gb": 3, "3g.40gb": 1},
}
MEAN_INTERARRIVAL = 1.0
MEAN_STAY = 20.0  # 20 pods at once on average: ~1.2x the node's 56 compute slices asked for (mixed)
STAYS = (10.0, 20.0, 30.0)  # the sensitivity table: light, moderate, overloaded


@dataclass(frozen=True)
class Pod:
    index: int
    profile: str
    arrives: float
    leaves: float


@dataclass
class Outcome:
    placed: int
    total: int
    utilisation: float  # time-averaged share of GPU memory held by pods

    @property
    def fraction(self) -> float:
        return self.placed / self.total


def workload(pods: int, seed: int, *, mix: Mapping[str, int], stay: float = MEAN_STAY) -> list[Pod]:
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    now, stream = 0.0, []
    for i in range(pods):
        now += rng.expovariate(1 / MEAN_INTERARRIVAL)
        stream.append(Pod(i, rng.choices(names, weights)[0], now, now + rng.expovariate(1 / stay)))
    return stream


def events(stream: Sequence[Pod]) -> list[tuple[float, int, Pod]]:
    """(time, 0 leave / 1 arrive, pod), leaves first at equal times."""
    out = [(p.arrives, 1, p) for p in stream] + [(p.leaves, 0, p) for p in stream]
    heapq.heapify(out)
    return [heapq.heappop(out) for _ in range(len(out))]


class Memory:
    """Time-weighted integral of the GPU memory pods hold."""

    def __init__(self, total_mib: int) -> None:
        self.total, self.held, self.area, self.last = total_mib, 0, 0.0, 0.0

    def at(self, now: float) -> None:
        self.area += self.held * (now - self.last)
        self.last = now

    def utilisation(self) -> float:
        return self.area / (self.total * self.last) if self.last else 0.0


def run_static(
    stream: Sequence[Pod], layouts: Sequence[Mapping[str, int]], memory: Mapping[str, int], total: int
) -> Outcome:
    """One static layout per GPU (``layouts``); a pod takes a free instance of exactly its
    profile, as the device plugin's per-profile resources require."""
    free: Counter[str] = Counter()
    for layout in layouts:
        free.update(layout)
    held: dict[int, str] = {}
    placed = 0
    mem = Memory(total)
    for now, arriving, pod in events(stream):
        mem.at(now)
        if arriving:
            if free[pod.profile] > 0:
                free[pod.profile] -= 1
                held[pod.index] = pod.profile
                placed += 1
                mem.held += memory[pod.profile]
        elif pod.index in held:
            free[held.pop(pod.index)] += 1
            mem.held -= memory[pod.profile]
    return Outcome(placed, len(stream), mem.utilisation())


class Counters:
    """The scheduler's bookkeeping of the pool's shared counters."""

    def __init__(self, model: PoolModel) -> None:
        self.free = {(c.name, k): v for c in model.counter_sets for k, v in c.counters}

    def fits(self, device: DraDevice) -> bool:
        return all(self.free[(device.counter_set or "", k)] >= v for k, v in device.consumes)

    def take(self, device: DraDevice, sign: int = 1) -> None:
        for k, v in device.consumes:
            self.free[(device.counter_set or "", k)] -= sign * v


def run_on_demand(
    stream: Sequence[Pod], model: PoolModel, total: int
) -> tuple[Outcome, list[tuple[str, Pod, str]]]:
    """The allocator's first fit over the published devices; also the claim sequence."""
    counters = Counters(model)
    held: dict[int, DraDevice] = {}
    placed = 0
    mem = Memory(total)
    claims: list[tuple[str, Pod, str]] = []  # ("prepare"|"unprepare", pod, device)
    for now, arriving, pod in events(stream):
        mem.at(now)
        if arriving:
            device = next(
                (
                    d
                    for d in model.devices
                    if d.profile == pod.profile and d.name not in _taken(held) and counters.fits(d)
                ),
                None,
            )
            if device is not None:
                counters.take(device)
                held[pod.index] = device
                placed += 1
                mem.held += device.memory_mib
                claims.append(("prepare", pod, device.name))
        elif pod.index in held:
            device = held.pop(pod.index)
            counters.take(device, -1)
            mem.held -= device.memory_mib
            claims.append(("unprepare", pod, device.name))
    return Outcome(placed, len(stream), mem.utilisation()), claims


def _taken(held: Mapping[int, DraDevice]) -> set[str]:
    return {d.name for d in held.values()}


class Claims:
    """ResourceClaims as the scheduler leaves them, for the replayed prepares."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}

    def add(self, pod: Pod, device: str) -> ClaimRef:
        name, uid = f"pod-{pod.index}-gpu", f"uid-{pod.index}"
        self.by_name[name] = {
            "metadata": {"uid": uid, "name": name, "namespace": "default"},
            "status": {"allocation": {"devices": {"results": [
                {"request": "gpu", "driver": DRIVER_NAME, "pool": NODE, "device": device}]}}},
        }  # fmt: skip
        return ClaimRef("default", uid, name)

    def get(self, namespace: str, name: str) -> Mapping[str, Any]:
        return self.by_name[name]


def replay_prepares(workdir: Path, claims: Sequence[tuple[str, Pod, str]]) -> list[float]:
    """Every claim of the on-demand run through the real prepare path; seconds per prepare."""
    state = workdir / "state"
    nvml = open_nvml(f"sim:h100-80gb:{GPUS}", state_dir=state, node_name=NODE)
    Reconciler(nvml, state_dir=state).apply([GpuTarget(i, "", True) for i in range(GPUS)])
    inventory = InventoryReader(nvml).read()
    checkpoint = Checkpoint(state)
    # The pool as published before any claim: every placement stays published while fatia's
    # own instances exist, so it does not change during the run.
    model = pool_model(inventory, plan_pool(inventory, pool_config()))
    reader = InventoryReader(nvml)
    source = Claims()
    preparer = Preparer(
        reconciler=Reconciler(nvml, state_dir=state, reader=reader),
        reader=reader,
        checkpoint=checkpoint,
        cdi=CdiWriter(workdir / "cdi"),
        claims=source,
        node_name=NODE,
        pool=lambda: model,
        timeslicer=timeslicer_for(nvml),
        proc_root=state / SIM_PROC_ROOT,
    )
    latencies = []
    for action, pod, device in claims:
        ref = source.add(pod, device) if action == "prepare" else ClaimRef("default", f"uid-{pod.index}", "")
        start = time.perf_counter()
        if action == "prepare":
            outcome = preparer.prepare([ref])[ref.uid]
            latencies.append(time.perf_counter() - start)
            if outcome.error:
                raise SystemExit(f"prepare of {device} for pod {pod.index} failed: {outcome.error}")
        else:
            error = preparer.unprepare([ref])[ref.uid]
            if error:
                raise SystemExit(f"unprepare of {device} for pod {pod.index} failed: {error}")
    left = [gi for g in InventoryReader(nvml).read().gpus for gi in g.gpu_instances]
    if left:
        raise SystemExit(f"instances left behind after every pod left: {left}")
    return latencies


def pool_config() -> Config:
    """Every GPU offers the profiles pods ask for (each up to its hardware limit)."""
    profiles = ", ".join(f"{name}: 7" for name in PROFILES)
    return parse_config(f"version: v1\ngpus: [{{devices: all, mig-devices: {{{profiles}}}}}]")


def best_mixed_static(
    stream: Sequence[Pod], memory: Mapping[str, int], total: int
) -> tuple[tuple[str, ...], Outcome]:
    """The best per-GPU combination of the static layouts, chosen knowing the stream."""
    best: tuple[tuple[str, ...], Outcome] | None = None
    for combo in itertools.combinations_with_replacement(sorted(STATIC), GPUS):
        outcome = run_static(stream, [STATIC[name] for name in combo], memory, total)
        if best is None or (outcome.placed, outcome.utilisation) > (best[1].placed, best[1].utilisation):
            best = (combo, outcome)
    assert best is not None
    return best


def best_single(stream: Sequence[Pod], memory: Mapping[str, int], total: int) -> tuple[str, Outcome]:
    outcomes = {name: run_static(stream, [layout] * GPUS, memory, total) for name, layout in STATIC.items()}
    return max(outcomes.items(), key=lambda kv: (kv[1].placed, kv[1].utilisation))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5, help="seeds pooled in the sensitivity table")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fatia-dyn-", dir="/tmp") as scratch:
        nvml = open_nvml(f"sim:h100-80gb:{GPUS}", state_dir=Path(scratch), node_name=NODE)
        inventory = InventoryReader(nvml).read()
    memory = {p.name: p.memory_mib for p in inventory.gpus[0].profiles}
    total = sum(g.memory_mib for g in inventory.gpus)
    model = pool_model(inventory, plan_pool(inventory, pool_config()))
    stream = workload(args.pods, args.seed, mix=MIXES["mixed"])

    asked = Counter(p.profile for p in stream)
    print(
        f"node: {GPUS}x H100-80GB (simulated); {args.pods} pods, seed {args.seed}, mix 'mixed': "
        + ", ".join(f"{n} x{asked[n]}" for n in PROFILES)
        + f"; arrivals every {MEAN_INTERARRIVAL:g} and stays of {MEAN_STAY:g} on average (exponential);"
        " a pod that cannot be placed on arrival is rejected"
    )
    print(f"\n{'layout':<34} {'placed':>7} {'fraction':>9} {'mem. util.':>11}")
    for name, layout in STATIC.items():
        outcome = run_static(stream, [layout] * GPUS, memory, total)
        print(f"static {name:<27} {outcome.placed:>7} {outcome.fraction:>9.1%} {outcome.utilisation:>11.1%}")
    best_name, best = best_single(stream, memory, total)
    combo, mixed = best_mixed_static(stream, memory, total)
    shown = ", ".join(f"{Counter(combo)[n]}x {n}" for n in sorted(set(combo)))
    print(f"{'static, best per-GPU mix (hindsight)':<34} {mixed.placed:>7} {mixed.fraction:>9.1%} "
          f"{mixed.utilisation:>11.1%}   ({shown})")  # fmt: skip
    dynamic, claims = run_on_demand(stream, model, total)
    label = "on demand (fatia DRA)"
    print(f"{label:<34} {dynamic.placed:>7} {dynamic.fraction:>9.1%} {dynamic.utilisation:>11.1%}")
    ratio = dynamic.placed / best.placed if best.placed else float("inf")
    print(
        f"\non demand places {ratio:.2f}x the pods of the best single static layout ({best_name}); "
        "target >= 1.3"
        f"\n                 {dynamic.placed / mixed.placed:.2f}x the best per-GPU mix of static layouts, "
        "chosen knowing the whole stream"
        f"\nmemory utilisation {dynamic.utilisation:.1%} on demand vs {best.utilisation:.1%} ({best_name})"
    )

    seeds = f"{args.seed}..{args.seed + args.seeds - 1}"
    print(f"\nsensitivity (seeds {seeds} pooled): pods placed on demand / by the best single static layout")
    print(f"{'mix':<12} " + " ".join(f"{'stay ' + format(stay, 'g'):>16}" for stay in STAYS))
    for mix_name, mix in MIXES.items():
        cells = []
        for stay in STAYS:
            on_demand = static_best = 0
            for seed in range(args.seed, args.seed + args.seeds):
                trial = workload(args.pods, seed, mix=mix, stay=stay)
                on_demand += run_on_demand(trial, model, total)[0].placed
                static_best += best_single(trial, memory, total)[1].placed
            cells.append(
                f"{on_demand / static_best:>9.2f} ({on_demand * 100 // (args.pods * args.seeds):>2}%)"
            )
        print(f"{mix_name:<12} " + " ".join(f"{c:>16}" for c in cells))

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="fatia-dyn-", dir="/tmp") as scratch:
        latencies = replay_prepares(Path(scratch), claims)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(
        f"\nclaim -> prepared through the real prepare path on the simulator ({len(latencies)} prepares, "
        f"each unprepared when its pod leaves): median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms; target p99 <= 1000 ms"
    )
    ok = ratio >= 1.3 and p99 <= 1.0
    if args.check and not ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
