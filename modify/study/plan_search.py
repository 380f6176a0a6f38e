"""Step 5 of `modify.study.planner`: solve the knapsack against measurements. The solver's answer
is built and timed (``measure``); a plan that measures below the target asks for more saving, one
that meets it is bisected towards the cheapest plan that still does, since changes to several
blocks save less together than alone. Also each chosen block's runner-up.

Example:
    >>> from modify.study.plan_records import ChoiceRow
    >>> rows = [ChoiceRow("b", 8, "keep", None, "keep", 0.0, 0.0, 0.0, 1.0),
    ...         ChoiceRow("b", 8, "delete", None, "delete", 1.0, 0.1, 0.2, 0.9)]
    >>> blocks, grouped, options = option_table(rows)
    >>> blocks, [o.saving for o in options[0]]
    (['b'], [0.0, 1.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from modify.errors import PlanError
from modify.study.choices import choice_recipe
from modify.study.knapsack import Option, max_saving, solve
from modify.study.latency import Timing
from modify.study.plan_records import Attempt, ChoiceRow, PlanConfig

__all__ = ["option_table", "search", "runner_ups", "speedup_spread"]


def option_table(rows: Sequence[ChoiceRow]) -> tuple[list[str], list[list[ChoiceRow]], list[list[Option]]]:
    """The blocks, their usable rows (built and measured) and those rows as the solver's options."""
    blocks: list[str] = []
    by_block: dict[str, list[ChoiceRow]] = {}
    for r in rows:
        if r.error is None:
            by_block.setdefault(r.block, []).append(r)
            if r.block not in blocks:
                blocks.append(r.block)
    grouped = [by_block[b] for b in blocks]
    options = [[Option(r.label, float(r.saving_ms or 0.0), float(r.kl or 0.0)) for r in group] for group in grouped]
    return blocks, grouped, options


def search(
    grouped: list[list[ChoiceRow]],
    options: list[list[Option]],
    channels: dict[str, int],
    original_ms: float,
    config: PlanConfig,
    *,
    measure: Callable[[dict[str, Any]], Timing],
    emit: Callable[[str, dict[str, Any]], None],
) -> tuple[list[int], list[Attempt], Timing]:
    """Solves for the saving the target needs and measures the plan; while it measures below the
    target, asks for more saving; once a plan meets it, bisects the saving asked between the last
    plan that fell short and the first that met it, to find the cheapest plan that still meets it
    by measurement (changes to several blocks save less together than alone, so the sums alone
    over- or undershoot). At most ``max_repairs + 1`` plans are timed."""
    target = config.speedup
    needed = original_ms - original_ms / target
    step = needed / config.resolution
    reachable = max_saving(options)
    measured: dict[tuple[int, ...], Timing] = {}
    attempts: list[Attempt] = []
    low, high = None, None  # the saving asked of the last plan that fell short, and of the first that met the target
    required = needed
    for _ in range(config.max_repairs + 1):
        solution = solve(options, min(required, reachable), resolution=config.resolution)
        if solution is None:
            break
        if solution.choice not in measured:
            keys = tuple(grouped[i][j].choice.key for i, j in enumerate(solution.choice))
            recipe = choice_recipe([grouped[i][j].choice for i, j in enumerate(solution.choice)], channels, config.mod)
            timing = measured[solution.choice] = measure(recipe)
            predicted = original_ms / (original_ms - solution.saving)
            attempts.append(Attempt(required, keys, predicted, timing.speedup, speedup_spread(timing)))
            emit("attempt", dataclasses.asdict(attempts[-1]))
        timing = measured[solution.choice]
        if config.meets(timing.speedup):
            high = required
            if low is None and required <= needed:
                break  # the sums' own answer meets the target: nothing cheaper to look for
        else:
            low = required
            if required >= reachable:
                break  # the fastest plan there is falls short
        if high is None:
            # Short of the target: ask for the saving needed times the share the sums overstated
            # this plan by, and at least one step more than it had.
            measured_saving = max(1e-9, original_ms - original_ms / timing.speedup)
            required = max(
                needed * solution.saving / measured_saving,
                required + (needed - measured_saving),
                solution.saving + step,
            )
        else:
            if low is None or high - low <= 2 * step:
                break
            required = (low + high) / 2
    return _best_attempt(options, measured, attempts, original_ms, reachable, config)


def _best_attempt(
    options: list[list[Option]],
    measured: dict[tuple[int, ...], Timing],
    attempts: list[Attempt],
    original_ms: float,
    reachable: float,
    config: PlanConfig,
) -> tuple[list[int], list[Attempt], Timing]:
    """The measured plan with the least summed KL among those that met the target, else the fastest."""
    if not measured:
        fastest = original_ms / max(1e-9, original_ms - reachable)
        raise PlanError(
            f"speed-up {config.speedup:g}x is out of reach in "
            f"{config.setting.describe()}: the fastest choices together predict "
            f"{fastest:.2f}x ({original_ms:.2f} ms now). Ask for at most "
            f"{fastest:.2f}x, or allow more actions or smaller fractions."
        )

    def cost(choice: tuple[int, ...]) -> float:
        return sum(options[i][j].cost for i, j in enumerate(choice))

    met = [c for c, t in measured.items() if config.meets(t.speedup)]
    choice = min(met, key=cost) if met else max(measured, key=lambda c: measured[c].speedup)
    return list(choice), attempts, measured[choice]


def speedup_spread(timing: Timing) -> float:
    from modify.measure.benchmark import spread

    return spread(list(timing.round_speedups))


def runner_ups(
    grouped: list[list[ChoiceRow]], options: list[list[Option]], picks: list[int], required: float, config: PlanConfig
) -> list[tuple[str, str, float | None]]:
    """Per block: what it would be if its chosen option were not allowed, and the KL that adds."""
    base = sum(options[i][j].cost for i, j in enumerate(picks))
    out = []
    for b, j in enumerate(picks):
        without = [[o for k, o in enumerate(opts) if not (i == b and k == j)] for i, opts in enumerate(options)]
        kept = [[k for k in range(len(opts)) if not (i == b and k == j)] for i, opts in enumerate(options)]
        if not without[b]:
            out.append((grouped[b][j].block, "-", None))
            continue
        solution = solve(without, required, resolution=config.resolution)
        if solution is None:
            out.append((grouped[b][j].block, "none reaches the target", None))
            continue
        label = grouped[b][kept[b][solution.choice[b]]].label
        out.append((grouped[b][j].block, label, solution.cost - base))
    return out
