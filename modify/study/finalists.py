"""Step 6 of `modify.study.planner`: the finalists. The solver ranks plans by their choices' KL
summed, each measured after the cheap repair; a brief fine-tune repairs some changes far better
than that KL says. Deleting late blocks most: on the converged ResNet-18, deleting layer2.1,
layer3.1 and layer4.1 starts at KL 0.115, against 0.027 for the 1.8x plan of mostly narrowed
blocks, and ends 0.11 points more accurate after `modify compare`'s fine-tune. After 200 steps of
that fine-tune the KLs rank the 16 compared models by their final accuracy with Spearman 0.88,
against 0.44 before it (benchmarks/results/finalists_r18).

So the solver's plan (of the plans the measured search timed that met the target, the least
summed KL) is not taken on trust. Its contenders are the best plan of each single action
(deletion only, narrowing only, MoD only), each found by a measured search of its own, then the
plans without one of the solver's choices; every one is timed against the original, and those
that meet the target are fine-tuned briefly (distillation from the original on the repair images,
as `modify compare` fine-tunes, for ``tune_steps`` steps) and scored on the held-out calibration
images. The plans whose KL after it is within ``tune_margin`` of the least (10%: the KL after 200
steps moves by about that much with the fine-tune's data order alone) cannot be told apart by it,
and the fastest of them is taken (`pick`).

Example:
    >>> from modify.study.knapsack import Option
    >>> options = [[Option("keep", 0, 0), Option("delete", 2, 0.3), Option("narrow 1/4", 1.5, 0.05)],
    ...            [Option("keep", 0, 0), Option("delete", 1, 0.1), Option("narrow 1/4", 0.6, 0.02)]]
    >>> actions = [["keep", "delete", "narrow"]] * 2
    >>> for source, picks in contenders(options, actions, (2, 2), 2.0, limit=4, names=["a", "b"]):
    ...     print(source, picks)
    the solver's plan (2, 2)
    deletion only (1, 0)
    without b's narrow 1/4 (2, 1)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modify.errors import PlanError
from modify.study.choices import choice_recipe
from modify.study.knapsack import Option, solve
from modify.study.latency import Timing
from modify.study.plan_records import ChoiceRow, Finalist, PlanConfig
from modify.study.plan_search import search
from modify.study.sensitivity import Score, score

__all__ = ["contenders", "run_finalists", "pick", "brief_finetune", "FAMILIES"]

# The single-action plans, in the order they join the finalists.
FAMILIES = (("delete", "deletion only"), ("narrow", "narrowing only"), ("mod", "MoD only"))


def contenders(
    options: Sequence[Sequence[Option]],
    actions: Sequence[Sequence[str]],
    best: tuple[int, ...],
    required: float,
    *,
    limit: int,
    resolution: int = 1000,
    names: Sequence[str] | None = None,
    search_within: Callable[[Callable[[int, int], bool]], tuple[int, ...] | None] | None = None,
) -> list[tuple[str, tuple[int, ...]]]:
    """Up to ``limit`` distinct plans, each as (how it was found, its option per block): ``best``
    first, then the best plan of each single action, then the best plan without one of ``best``'s
    choices (in the order of the summed KL they add), each of the last reaching ``required``.

    ``actions[b][j]`` is the action of ``options[b][j]``; ``names`` name the blocks in messages.
    ``search_within(allowed)`` finds a single action's plan among the options ``allowed(block,
    index)`` lets through (the planner passes its measured search: one kind of choice's savings add
    up differently from another's, so a family needs its own saving asked, not ``best``'s); by
    default the solver at ``required``."""
    names = names or [f"layer {b}" for b in range(len(options))]

    def restricted(allowed: Callable[[int, int], bool]) -> tuple[int, ...] | None:
        kept = [[j for j in range(len(opts)) if allowed(b, j)] for b, opts in enumerate(options)]
        if any(not k for k in kept):
            return None
        solution = solve([[options[b][j] for j in k] for b, k in enumerate(kept)], required, resolution=resolution)
        return None if solution is None else tuple(kept[b][j] for b, j in enumerate(solution.choice))

    out: list[tuple[str, tuple[int, ...]]] = [("the solver's plan", tuple(best))]

    def full(source: str, picks: tuple[int, ...] | None) -> bool:
        """Adds a new plan; whether the list is full."""
        if picks is not None and picks not in [p for _, p in out]:
            out.append((source, picks))
        return len(out) >= limit

    if len(out) >= limit:
        return out
    for action, source in FAMILIES:
        if not any(action in acts for acts in actions):
            continue  # no block may take it
        if full(source, (search_within or restricted)(lambda b, j, a=action: actions[b][j] in ("keep", a))):
            return out
    without = []
    for b, j in enumerate(best):
        if actions[b][j] != "keep":
            picks = restricted(lambda bb, jj, b=b, j=j: (bb, jj) != (b, j))
            if picks is not None:
                cost = sum(options[i][k].cost for i, k in enumerate(picks))
                without.append((cost, f"without {names[b]}'s {options[b][j].name}", picks))
    for _, source, picks in sorted(without, key=lambda t: t[0]):
        if full(source, picks):
            break
    return out


def run_finalists(
    grouped: list[list[ChoiceRow]],
    options: list[list[Option]],
    best: Sequence[int],
    timing: Timing,
    required: float,
    channels: dict[str, int],
    original_ms: float,
    config: PlanConfig,
    *,
    measure: Callable[[dict[str, Any]], Timing],
    evaluate: Callable[[dict[str, Any]], tuple[Score, Score]],
    emit: Callable[[str, dict[str, Any]], None],
) -> tuple[list[Finalist], dict[tuple[str, ...], Timing]]:
    """The contenders of ``best`` (the solver's plan, which measured ``timing`` and met the target;
    each single action's plan found by a measured search of its own), each timed (``measure`` a
    recipe); those meeting the target are scored after the cheap repair and after the brief
    fine-tune (``evaluate`` a recipe); `pick` marks the one taken. Returns every finalist, and the
    timing of each that met the target by its choice keys."""
    known: dict[str, Timing] = {}  # recipe -> timing: a plan the searches meet again is not timed again
    best_recipe = choice_recipe([grouped[b][j].choice for b, j in enumerate(best)], channels, config.mod)
    known[json.dumps(best_recipe, sort_keys=True)] = timing
    actions = [[r.action for r in group] for group in grouped]

    def measure_once(recipe: dict[str, Any]) -> Timing:
        key = json.dumps(recipe, sort_keys=True)
        if key not in known:
            known[key] = measure(recipe)
        return known[key]

    def search_within(allowed: Callable[[int, int], bool]) -> tuple[int, ...] | None:
        """The measured search (`modify.study.plan_search.search`) among the options allowed."""
        kept = [[j for j in range(len(group)) if allowed(b, j)] for b, group in enumerate(grouped)]
        if any(not k for k in kept):
            return None
        try:
            picks, _, measured = search(
                [[grouped[b][j] for j in k] for b, k in enumerate(kept)],
                [[options[b][j] for j in k] for b, k in enumerate(kept)],
                channels,
                original_ms,
                config,
                measure=measure_once,
                emit=lambda kind, info: None,
            )
        except PlanError:
            emit("family", {"speedup": None})
            return None  # out of reach with these options alone
        emit("family", {"speedup": measured.speedup})
        return tuple(kept[b][j] for b, j in enumerate(picks))

    emit("stage", {"name": "families", "total": sum(any(a in acts for acts in actions) for a, _ in FAMILIES)})

    found = contenders(
        options,
        actions,
        tuple(best),
        required,
        limit=config.finalists,
        resolution=config.resolution,
        names=[group[0].block for group in grouped],
        search_within=search_within,
    )
    emit("stage", {"name": "finalists", "total": len(found)})
    out: list[Finalist] = []
    timings: dict[tuple[str, ...], Timing] = {}
    for source, picks in found:
        rows = [grouped[b][j] for b, j in enumerate(picks)]
        keys = tuple(r.choice.key for r in rows)
        recipe = choice_recipe([r.choice for r in rows], channels, config.mod)
        measured = measure_once(recipe)  # the searches timed most of them already
        saving = sum(float(r.saving_ms or 0.0) for r in rows)
        finalist = Finalist(
            source,
            keys,
            original_ms / max(1e-9, original_ms - saving),
            measured.speedup,
            sum(float(r.kl or 0.0) for r in rows),
        )
        if config.meets(measured.speedup):
            timings[keys] = measured
            repaired, tuned = evaluate(recipe)
            finalist = dataclasses.replace(
                finalist,
                kl=repaired.kl,
                agreement=repaired.agreement,
                tuned_kl=tuned.kl,
                tuned_agreement=tuned.agreement,
            )
        out.append(finalist)
        emit("finalist", dataclasses.asdict(finalist))
    winner = pick(out, config.tune_margin)
    return [dataclasses.replace(f, picked=f is winner) for f in out], timings


def pick(finalists: Sequence[Finalist], margin: float) -> Finalist:
    """The fastest of the scored finalists whose KL after the brief fine-tune is within ``margin``
    of the least (those the score cannot tell apart); of equal speeds, the first (the solver's plan
    comes first). Fidelity the score cannot separate is taken as equal, and then more measured
    speed is worth having: a plan the solver's summed KL passed over for damage the fine-tune
    repairs (on the converged ResNet-18 at 1.8x, deleting three late blocks: the same KL after 200
    steps as the solver's plan, 1.99x against 1.82x) is not left out for a difference in the noise.

    Example:
        >>> a = Finalist("the solver's plan", ("x:narrow:0.5",), 1.9, 1.82, 0.03, tuned_kl=0.0118)
        >>> b = Finalist("deletion only", ("x:delete",), 2.4, 1.99, 0.07, tuned_kl=0.0117)
        >>> c = Finalist("MoD only", ("x:mod:0.5",), 2.1, 2.05, 0.05, tuned_kl=0.0140)
        >>> pick([a, b, c], margin=0.1).source
        'deletion only'
        >>> pick([a, b, c], margin=0.25).source  # a wider margin: c's KL too is "the same"
        'MoD only'
    """
    scored = [f for f in finalists if f.tuned_kl is not None]
    if not scored:
        return finalists[0]
    least = min(float(f.tuned_kl or 0.0) for f in scored)
    tied = [f for f in scored if (1 - margin) * float(f.tuned_kl or 0.0) <= least]
    return max(tied, key=lambda f: f.measured_speedup)  # max keeps the first of equal speeds


def brief_finetune(
    model: nn.Module,
    original: nn.Module,
    data: Dataset,
    calib: torch.Tensor,
    reference: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seed: int,
) -> Score:
    """``model`` fine-tuned in place for ``steps`` steps as `modify compare` fine-tunes (distillation
    from ``original``, its learning rate and schedule) on ``data``, then scored against the
    original on ``calib`` (whose log-probabilities are ``reference``)."""
    from modify.study.sweep import CompareConfig
    from modify.train.finetune import finetune

    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    config = dataclasses.replace(CompareConfig().finetune, seed=seed)
    finetune(model, loader, teacher=original, config=config, steps=steps)
    for m in (model, original):
        m.cpu()  # the fine-tune may have used a GPU; the calibration images are on the CPU
    return score(model.eval(), calib, reference)
