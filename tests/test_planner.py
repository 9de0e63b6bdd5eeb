"""Specification of the MIG placement planner (mig.planner.plan_gpu)."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

import pytest

from mig.catalog import MODELS, GpuInstanceProfile
from mig.errors import PlanError
from mig.layout import Layout, Placement, profile_counts
from mig.planner import explain_starts, plan_gpu

Key = frozenset[tuple[str, int]]  # a profile multiset: (name, count) pairs

A100 = MODELS["a100-40gb"].profiles
ORACLE_MODELS = ["a100-40gb", "h100-80gb", "a30"]


def at(profile: str, start: int, profiles: tuple[GpuInstanceProfile, ...] = A100) -> Placement:
    size = next(p.size for p in profiles if p.name == profile)
    return Placement(start, size, profile)


def starts_of(layout: Layout, profile: str) -> list[int]:
    return [p.start for p in layout if p.profile == profile]


# --- an independent, obviously correct oracle ------------------------------------------------


def legal_placements(profiles: tuple[GpuInstanceProfile, ...]) -> list[Placement]:
    return [Placement(s, p.size, p.name) for p in profiles for s in p.starts]


def disjoint_sets(profiles: tuple[GpuInstanceProfile, ...]) -> list[tuple[Placement, ...]]:
    """Every set of pairwise non-overlapping legal placements (each profile within its cap)."""
    sets: list[tuple[Placement, ...]] = [()]
    for placement in legal_placements(profiles):
        sets += [(*s, placement) for s in sets if not any(placement.overlaps(q) for q in s)]
    caps = {p.name: p.max_count for p in profiles}
    return [s for s in sets if all(n <= caps[p] for p, n in Counter(q.profile for q in s).items())]


def realisations(profiles: tuple[GpuInstanceProfile, ...]) -> dict[Key, list[Layout]]:
    """Profile multiset (as frozenset of (name, count)) -> every layout that realises it."""
    found: dict[Key, list[Layout]] = {}
    for s in disjoint_sets(profiles):
        found.setdefault(frozenset(Counter(p.profile for p in s).items()), []).append(s)
    return found


def candidate_multisets(profiles: tuple[GpuInstanceProfile, ...], slices: int) -> list[dict[str, int]]:
    """Every count vector within the caps whose memory need is at most two slices too many."""
    names = [p.name for p in profiles]
    return [
        dict(zip(names, counts, strict=True))
        for counts in itertools.product(*(range(p.max_count + 1) for p in profiles))
        if sum(n * p.size for n, p in zip(counts, profiles, strict=True)) <= slices + 2
    ]


def key(desired: Mapping[str, int]) -> Key:
    return frozenset((name, n) for name, n in desired.items() if n)


def assert_valid(
    layout: Layout, profiles: tuple[GpuInstanceProfile, ...], desired: Mapping[str, int]
) -> None:
    table = {p.name: p for p in profiles}
    for p in layout:
        assert p.size == table[p.profile].size
        assert p.start in table[p.profile].starts
    for a, b in itertools.combinations(layout, 2):
        assert not a.overlaps(b), (a, b)
    assert profile_counts(layout) == {name: n for name, n in desired.items() if n}
    assert list(layout) == sorted(layout)


@pytest.mark.parametrize("model", ORACLE_MODELS)
def test_plans_exactly_the_multisets_that_brute_force_can_place(model: str) -> None:
    profiles, slices = MODELS[model].profiles, MODELS[model].memory_slices
    feasible = realisations(profiles)
    multisets = candidate_multisets(profiles, slices)
    assert any(key(d) not in feasible for d in multisets)  # rejection is covered too
    for desired in multisets:
        if key(desired) in feasible:
            assert_valid(plan_gpu(profiles, desired), profiles, desired)
        else:
            with pytest.raises(PlanError):
                plan_gpu(profiles, desired)


@pytest.mark.parametrize("model", ORACLE_MODELS)
def test_keeps_as_many_held_then_existing_instances_as_any_valid_plan(model: str) -> None:
    profiles = MODELS[model].profiles
    feasible = realisations(profiles)
    layouts = [s for group in feasible.values() for s in group]
    rng = random.Random(model)
    for _ in range(300):
        desired = dict(rng.choice(list(feasible)))
        existing = rng.choice(layouts)
        held = [p for p in existing if rng.random() < 0.5]

        def score(
            layout: Layout, held: list[Placement] = held, existing: Layout = existing
        ) -> tuple[int, int]:
            return (len(set(layout) & set(held)), len(set(layout) & set(existing)))

        plan = plan_gpu(profiles, desired, existing=existing, held=held)
        assert_valid(plan, profiles, desired)
        assert score(plan) == max(score(s) for s in feasible[key(desired)])


# --- known combinations (MIG reference, section 4) -------------------------------------------


def test_3g_with_two_2g_fits_only_with_the_3g_at_slice_4() -> None:
    layout = plan_gpu(A100, {"3g.20gb": 1, "2g.10gb": 2})
    assert layout == (at("2g.10gb", 0), at("2g.10gb", 2), at("3g.20gb", 4))


def test_four_2g_do_not_fit() -> None:
    with pytest.raises(PlanError, match=re.escape("at most 3 instances of 2g.10gb")):
        plan_gpu(A100, {"2g.10gb": 4})


def test_four_2g_do_not_fit_even_without_the_cap_because_2g_cannot_start_at_6() -> None:
    uncapped = [replace(p, max_count=4) if p.name == "2g.10gb" else p for p in A100]
    rule = "no place for 2g.10gb: it can start only at memory slices 0, 2 or 4"
    with pytest.raises(PlanError, match=re.escape(rule)):
        plan_gpu(uncapped, {"2g.10gb": 4})


def test_three_2g_and_a_1g_put_the_1g_at_slice_6() -> None:
    layout = plan_gpu(A100, {"2g.10gb": 3, "1g.5gb": 1})
    assert starts_of(layout, "2g.10gb") == [0, 2, 4]
    assert starts_of(layout, "1g.5gb") == [6]


def test_seven_1g_fill_slices_0_to_6() -> None:
    assert starts_of(plan_gpu(A100, {"1g.5gb": 7}), "1g.5gb") == [0, 1, 2, 3, 4, 5, 6]


def test_eight_1g_do_not_fit() -> None:
    with pytest.raises(PlanError):
        plan_gpu(A100, {"1g.5gb": 8})


def test_seven_1g_and_a_1g_me_do_not_fit_although_memory_adds_up() -> None:
    with pytest.raises(PlanError, match=re.escape("no place for 1g.5gb+me")):
        plan_gpu(A100, {"1g.5gb": 7, "1g.5gb+me": 1})


def test_four_double_memory_1g_fill_all_eight_slices() -> None:
    assert starts_of(plan_gpu(A100, {"1g.10gb": 4}), "1g.10gb") == [0, 2, 4, 6]


def test_4g_and_3g_put_the_4g_at_0_and_the_3g_at_4() -> None:
    assert plan_gpu(A100, {"3g.20gb": 1, "4g.20gb": 1}) == (at("4g.20gb", 0), at("3g.20gb", 4))


def test_7g_takes_the_whole_gpu() -> None:
    assert plan_gpu(A100, {"7g.40gb": 1}) == (at("7g.40gb", 0),)
    with pytest.raises(PlanError):
        plan_gpu(A100, {"7g.40gb": 1, "1g.5gb": 1})


def test_balanced_layout_places_the_3g_at_slice_4() -> None:
    layout = plan_gpu(A100, {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})
    assert starts_of(layout, "3g.20gb") == [4]
    assert_valid(layout, A100, {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})


def test_a30_fits_two_2g_or_one_4g() -> None:
    a30 = MODELS["a30"].profiles
    assert starts_of(plan_gpu(a30, {"2g.12gb": 2}), "2g.12gb") == [0, 2]
    with pytest.raises(PlanError):
        plan_gpu(a30, {"4g.24gb": 1, "1g.6gb": 1})


def test_nothing_desired_is_an_empty_layout() -> None:
    assert plan_gpu(A100, {}) == ()


def test_zero_counts_are_ignored() -> None:
    assert plan_gpu(A100, {"7g.40gb": 1, "1g.5gb": 0}) == (at("7g.40gb", 0),)


# --- keeping what is there -------------------------------------------------------------------


def test_without_existing_instances_profiles_take_the_lowest_starts_largest_first() -> None:
    layout = plan_gpu(A100, {"3g.20gb": 1, "1g.5gb": 3})
    assert layout == (at("3g.20gb", 0), at("1g.5gb", 4), at("1g.5gb", 5), at("1g.5gb", 6))


def test_an_existing_instance_that_still_fits_stays_where_it_is() -> None:
    layout = plan_gpu(A100, {"3g.20gb": 1, "1g.5gb": 3}, existing=[at("3g.20gb", 4)])
    assert layout == (at("1g.5gb", 0), at("1g.5gb", 1), at("1g.5gb", 2), at("3g.20gb", 4))


def test_existing_instances_of_the_same_profile_stay_where_they_are() -> None:
    existing = [at("1g.5gb", 2), at("1g.5gb", 6), at("2g.10gb", 4)]
    layout = plan_gpu(A100, {"1g.5gb": 3, "2g.10gb": 1}, existing=existing)
    assert set(existing) <= set(layout)


def test_an_existing_instance_of_another_profile_in_the_same_place_is_not_kept() -> None:
    layout = plan_gpu(A100, {"1g.10gb": 1}, existing=[at("2g.10gb", 4)])
    assert layout == (at("1g.10gb", 0),)


def test_a_held_instance_decides_which_existing_one_is_kept() -> None:
    existing = [at("2g.10gb", 0), at("2g.10gb", 4)]
    desired = {"3g.20gb": 1, "2g.10gb": 1}
    assert plan_gpu(A100, desired, existing=existing) == (at("3g.20gb", 0), at("2g.10gb", 4))
    assert plan_gpu(A100, desired, existing=existing, held=[at("2g.10gb", 0)]) == (
        at("2g.10gb", 0),
        at("3g.20gb", 4),
    )


def test_one_held_instance_outweighs_several_idle_ones() -> None:
    existing = [at("1g.5gb", 0), at("1g.5gb", 1), at("1g.5gb", 5)]
    desired = {"3g.20gb": 1, "1g.5gb": 2}
    idle = plan_gpu(A100, desired, existing=existing)
    assert idle == (at("1g.5gb", 0), at("1g.5gb", 1), at("3g.20gb", 4))
    held = plan_gpu(A100, desired, existing=existing, held=[at("1g.5gb", 5)])
    assert held == (at("3g.20gb", 0), at("1g.5gb", 4), at("1g.5gb", 5))


def test_the_same_inputs_give_the_same_plan() -> None:
    existing = [at("1g.5gb", 3), at("2g.10gb", 4), at("1g.5gb", 0)]
    desired = {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    assert plan_gpu(A100, desired, existing=existing) == plan_gpu(A100, desired, existing=existing)


def test_the_order_of_inputs_does_not_matter() -> None:
    existing = [at("1g.5gb", 3), at("2g.10gb", 4), at("1g.5gb", 0), at("1g.5gb", 6)]
    desired = {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    held = [existing[0], existing[2]]
    plans = {
        plan_gpu(
            A100,
            dict(reversed(list(desired.items()))) if flip else desired,
            existing=order,
            held=held[::-1] if flip else held,
        )
        for order in itertools.permutations(existing)
        for flip in (False, True)
    }
    assert len(plans) == 1


# --- errors that name the rule ---------------------------------------------------------------


def test_an_unknown_profile_is_named_with_the_profiles_the_gpu_has() -> None:
    with pytest.raises(PlanError) as error:
        plan_gpu(A100, {"1g.6gb": 1})
    assert str(error.value) == (
        "unknown profile '1g.6gb' for this GPU; its profiles are "
        "1g.5gb, 1g.5gb+me, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb"
    )


def test_a_count_over_the_cap_names_the_cap() -> None:
    with pytest.raises(PlanError) as error:
        plan_gpu(A100, {"2g.10gb": 4})
    assert str(error.value) == "at most 3 instances of 2g.10gb fit on this GPU, 4 requested"


def test_too_much_memory_lists_what_each_profile_needs() -> None:
    with pytest.raises(PlanError) as error:
        plan_gpu(A100, {"1g.5gb": 1, "3g.20gb": 2})
    assert str(error.value) == (
        "the layout needs 9 memory slices and the GPU has 8: 3g.20gb ×2 (4 each) + 1g.5gb (1)"  # noqa: RUF001
    )


def test_a_placement_failure_names_the_start_rule_and_what_blocks_it() -> None:
    with pytest.raises(PlanError) as error:
        plan_gpu(A100, {"4g.20gb": 1, "2g.10gb": 2})
    assert str(error.value) == (
        "no place for 2g.10gb: it can start only at memory slices 0, 2 or 4, "
        "but 4g.20gb takes 0-3 and 2g.10gb takes 4-5"
    )


@pytest.mark.parametrize("count", [-1, 1.5, "2", True])
def test_a_count_must_be_a_whole_number_not_below_zero(count: object) -> None:
    with pytest.raises(PlanError, match=re.escape("1g.5gb must be a whole number")):
        plan_gpu(A100, {"1g.5gb": count})  # type: ignore[dict-item]


def test_compute_slices_are_checked_for_tables_where_memory_does_not_bind() -> None:
    greedy = [replace(p, slices=4) if p.name == "1g.5gb" else p for p in A100]
    with pytest.raises(PlanError) as error:
        plan_gpu(greedy, {"1g.5gb": 2})
    assert str(error.value) == (
        "the layout needs 8 compute slices and the GPU has 7: 1g.5gb ×2 (4 each)"  # noqa: RUF001
    )


def test_start_rules_read_as_words() -> None:
    table = {p.name: p for p in A100}
    assert explain_starts(table["2g.10gb"]) == "2g.10gb can start only at memory slices 0, 2 or 4"
    assert explain_starts(table["1g.5gb"]) == "1g.5gb can start only at memory slices 0-6"
    assert explain_starts(table["3g.20gb"]) == "3g.20gb can start only at memory slices 0 or 4"
    assert explain_starts(table["7g.40gb"]) == "7g.40gb can start only at memory slice 0"


def test_a_placement_failure_lists_every_blocking_instance_by_profile() -> None:
    with pytest.raises(PlanError) as error:
        plan_gpu(A100, {"2g.10gb": 3, "1g.5gb": 2})
    assert str(error.value) == (
        "no place for 1g.5gb: it can start only at memory slices 0-6, "
        "but 2g.10gb ×3 take 0-1, 2-3 and 4-5, and 1g.5gb takes 6"  # noqa: RUF001
    )


def test_a_profile_the_gpu_offers_no_placement_for_says_so() -> None:
    homeless = [replace(p, starts=()) if p.name == "4g.20gb" else p for p in A100]
    with pytest.raises(PlanError) as error:
        plan_gpu(homeless, {"4g.20gb": 1})
    assert str(error.value) == "no place for 4g.20gb: it has no legal start on this GPU"
