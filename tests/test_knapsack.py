"""The planner's multiple-choice knapsack against brute force, and its edges."""

from __future__ import annotations

import itertools
import random

import pytest

from modify.study.knapsack import Option, max_saving, solve, steps


def _brute(blocks: list[list[Option]], required: float, resolution: int) -> float | None:
    """The least summed cost over every choice whose savings, rounded as the solver rounds them, reach ``required``."""
    unit = required / resolution
    best = None
    for choice in itertools.product(*[range(len(o)) for o in blocks]):
        units = sum(steps(blocks[i][j].saving, unit) for i, j in enumerate(choice))
        if units >= resolution:
            cost = sum(blocks[i][j].cost for i, j in enumerate(choice))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_solver_finds_the_brute_force_optimum_on_random_tables(seed: int) -> None:
    rng = random.Random(seed)
    blocks = [
        [Option("keep", 0.0, 0.0)]
        + [Option(f"o{j}", rng.uniform(-0.2, 2.0), rng.uniform(0.0, 1.0)) for j in range(rng.randint(1, 4))]
        for _ in range(rng.randint(1, 5))
    ]
    required = rng.uniform(0.1, max(0.2, max_saving(blocks)))
    resolution = rng.choice([7, 50, 1000])
    plan = solve(blocks, required, resolution=resolution)
    expected = _brute(blocks, required, resolution)
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert plan.cost == pytest.approx(expected, abs=1e-9)
    assert plan.saving >= required - len(blocks) * required / resolution / 2 - 1e-9  # half a step per block at most
    assert plan.saving == pytest.approx(sum(blocks[i][j].saving for i, j in enumerate(plan.choice)))


def test_the_answer_is_deterministic_and_prefers_the_larger_saving_on_a_tie() -> None:
    blocks = [
        [Option("keep", 0, 0), Option("a", 1.0, 0.5), Option("b", 2.0, 0.5)],
        [Option("keep", 0, 0), Option("c", 1.0, 0.5)],
    ]
    first = solve(blocks, 1.0)
    assert first is not None and first.choice == (2, 0)
    assert all(solve(blocks, 1.0) == first for _ in range(5))


def test_an_unreachable_target_is_none_and_max_saving_says_what_is_reachable() -> None:
    blocks = [[Option("keep", 0, 0), Option("delete", 1.0, 0.1)], [Option("keep", 0, 0), Option("delete", 0.5, 0.1)]]
    assert solve(blocks, 1.6) is None
    assert max_saving(blocks) == 1.5
    assert solve(blocks, 1.5) is not None


def test_nothing_required_keeps_everything() -> None:
    blocks = [[Option("keep", 0, 0), Option("delete", 1.0, 0.1)]]
    plan = solve(blocks, 0.0)
    assert plan is not None and plan.choice == (0,) and plan.cost == 0


def test_an_option_slower_than_keeping_is_counted_exactly() -> None:
    # a MoD block that costs more time than it saves: taking it must be paid for by the others
    blocks = [[Option("keep", 0, 0), Option("slow", -0.5, 0.0)], [Option("keep", 0, 0), Option("delete", 1.0, 0.2)]]
    plan = solve(blocks, 1.0)
    assert plan is not None and plan.choice == (0, 1)
    assert solve(blocks, 1.0, resolution=3) == plan


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        solve([[]], 1.0)
    with pytest.raises(ValueError, match="resolution=0"):
        solve([[Option("keep", 0, 0)]], 1.0, resolution=0)
