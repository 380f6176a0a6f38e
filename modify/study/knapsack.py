"""The planner's solver: a multiple-choice knapsack, exact by dynamic programming.

Every block takes exactly one of its options (keep, delete, MoD at some k, narrow at some share),
each with a measured latency saving and a measured sensitivity. The plan is the choice per block
that minimises the summed sensitivity while the summed saving reaches what the speed-up target
needs (NetAdapt's and HALP's additive model; the planner then measures the combination, because
the sums are an approximation).

Savings are discretised to steps of ``required / resolution`` (rounded to the nearest step, so
the summed saving of an accepted plan is within half a step per block of what it needs, far
below what timing can resolve); the dynamic programme over the discretised savings is exact,
and ties go to the larger saving, then to the earlier option, so the answer is deterministic.
Torch-free.

Example:
    >>> blocks = [
    ...     [Option("keep", 0.0, 0.0), Option("delete", 2.0, 0.30), Option("mod", 1.0, 0.05)],
    ...     [Option("keep", 0.0, 0.0), Option("delete", 1.5, 0.10), Option("narrow", 1.2, 0.02)],
    ... ]
    >>> plan = solve(blocks, required=2.0)
    >>> [blocks[i][j].name for i, j in enumerate(plan.choice)], round(plan.saving, 2), round(plan.cost, 2)
    (['mod', 'narrow'], 2.2, 0.07)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

__all__ = ["Option", "Solution", "solve", "max_saving", "steps"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One choice for one block."""

    name: str  # for messages: "keep", "delete", "mod k=16", "narrow 0.25"
    saving: float  # measured latency saving (any unit, the same for every option)
    cost: float  # measured sensitivity (>= 0 for a sensible measure; smaller is better)


@dataclasses.dataclass(frozen=True)
class Solution:
    """The option chosen for every block, and what the sums say of it."""

    choice: tuple[int, ...]  # per block, the index of its chosen option
    saving: float  # the chosen options' summed saving (undiscretised)
    cost: float  # their summed cost


def max_saving(blocks: Sequence[Sequence[Option]]) -> float:
    """The largest summed saving any choice reaches (each block's best option)."""
    return sum(max(o.saving for o in options) for options in blocks)


def solve(blocks: Sequence[Sequence[Option]], required: float, *, resolution: int = 1000) -> Solution | None:
    """The cheapest choice (one option per block) whose discretised savings reach ``required``;
    None when no choice does.

    Args:
        blocks: per block, its options (include a "keep" option of saving 0 and cost 0 where
            keeping is allowed).
        required: the summed saving the plan needs; <= 0 means any choice will do.
        resolution: discretisation steps in ``required``; the solver is exact on savings
            rounded to the nearest multiple of ``required / resolution``.

    Raises:
        ValueError: a block without options, or a resolution below 1.
    """
    if resolution < 1:
        raise ValueError(f"resolution={resolution} must be at least 1.")
    if any(not options for options in blocks):
        raise ValueError("every block needs at least one option (keep, say).")
    if required <= 0:
        choice = tuple(min(range(len(o)), key=lambda j, o=o: (o[j].cost, -o[j].saving, j)) for o in blocks)  # type: ignore[misc]
        return _solution(blocks, choice)
    unit = required / resolution
    weights = [[steps(o.saving, unit) for o in options] for options in blocks]
    # State s = summed discretised saving, capped at `resolution`, shifted by `low` so that
    # negative savings (an option slower than keeping) stay exact.
    low = sum(min(0, min(w)) for w in weights)
    size = resolution - low + 1
    inf = math.inf
    best = [inf] * size  # best[s - low]: the least cost reaching saving s so far
    best[-low] = 0.0
    picks: list[list[int]] = []  # picks[b][s - low]: the option block b took to reach s
    previous: list[list[int]] = []  # and the state it came from
    for b, options in enumerate(blocks):
        new = [inf] * size
        pick = [-1] * size
        came = [-1] * size
        for s in range(size):
            if best[s] == inf:
                continue
            for j, o in enumerate(options):
                t = min(s + weights[b][j], size - 1)
                cost = best[s] + o.cost
                # Ties: the larger real saving, then the earlier option, so the answer is deterministic.
                if cost < new[t] - 1e-12 or (
                    abs(cost - new[t]) <= 1e-12 and _better(blocks, b, j, pick[t], s, came[t], picks, previous)
                ):
                    new[t], pick[t], came[t] = cost, j, s
        best = new
        picks.append(pick)
        previous.append(came)
    target = size - 1  # saving >= required
    if best[target] == inf:
        return None
    choice = [0] * len(blocks)
    state = target
    for b in reversed(range(len(blocks))):
        choice[b] = picks[b][state]
        state = previous[b][state]
    return _solution(blocks, tuple(choice))


def steps(saving: float, unit: float) -> int:
    """``saving`` in whole steps of ``unit``, rounded to the nearest (halves up).

    Example:
        >>> steps(1.0, 0.0015), steps(0.5, 0.0015), steps(-0.2, 0.1)
        (667, 333, -2)
    """
    return math.floor(saving / unit + 0.5)


def _better(
    blocks: Sequence[Sequence[Option]],
    b: int,
    j: int,
    other_j: int,
    s: int,
    other_s: int,
    picks: list[list[int]],
    previous: list[list[int]],
) -> bool:
    """Between two equal-cost ways into one state: the one with the larger real saving so far."""
    if other_j < 0:
        return True
    mine = blocks[b][j].saving + _real_saving(blocks, b, s, picks, previous)
    theirs = blocks[b][other_j].saving + _real_saving(blocks, b, other_s, picks, previous)
    if abs(mine - theirs) > 1e-12:
        return mine > theirs
    return j < other_j


def _real_saving(
    blocks: Sequence[Sequence[Option]], b: int, state: int, picks: list[list[int]], previous: list[list[int]]
) -> float:
    """The undiscretised saving of the path that reached ``state`` after blocks 0..b-1."""
    total = 0.0
    for i in reversed(range(b)):
        j = picks[i][state]
        total += blocks[i][j].saving
        state = previous[i][state]
    return total


def _solution(blocks: Sequence[Sequence[Option]], choice: tuple[int, ...]) -> Solution:
    return Solution(
        choice,
        sum(blocks[i][j].saving for i, j in enumerate(choice)),
        sum(blocks[i][j].cost for i, j in enumerate(choice)),
    )
