"""`plan`: the most accurate model for a speed-up on this machine, choosing per block among keep,
delete, MoD and narrow, and saying why.

1. Choices (`modify.study.choices`): every residual block discovery finds may be kept, deleted,
   made a MoD block at k = C/2, C/4, C/8, or narrowed to the same shares of its inner widths. A
   MoD block is built with one fixed set of k channels, those the block reads most ("static
   MoD", `PlanConfig.mod`), unless the config asks for the paper's per-image Channel Selector
   (`PlanConfig.for_selection("dynamic")`): after the same brief fine-tune the fixed set ended
   closer to the original (`modify.study.plan_records.DEFAULT_MOD`).
2. Latency (`modify.study.latency`): each choice's saving, measured in the whole model, in the
   setting the speed-up is for (batch, threads, input size, engine), interleaved with the original.
3. Sensitivity (`modify.study.sensitivity`): each choice alone, after its cheap repair
   (block-local distillation of MoD and narrowed blocks, BatchNorm re-estimation), scored by its
   KL divergence to the original on calibration images held out from the training data.
4. Solve (`modify.study.knapsack`): the choices with the least summed KL whose summed savings
   reach the target, exactly, by dynamic programming.
5. Measure (`modify.study.plan_search`): the planned model is built and timed against the
   original; a plan that measures below the target asks the solver for more saving (by what the
   sums missed), one that meets it is bisected towards the cheapest that still does. Its joint
   KL, after the same repair, is measured beside the sum.
6. Finalists (`modify.study.finalists`): the cheap repair's KL understates how well a brief
   fine-tune mends some changes (deleted late blocks most), so the solver's plan, the best plan
   of each single action and the plans without one of its choices that meet the target are each
   fine-tuned briefly (``tune_steps``); of those whose KL after it is within ``tune_margin``
   of the least, the fastest is picked.

The plan is a version-2 recipe (`PlanResult.recipe`; `modify.study.plan_file` writes it with every
block's numbers as comments), which `modify.convert` applies. Seeds fix every draw, so the same
data, model and machine give the same plan up to timing noise.

Its records (`PlanConfig`, `ChoiceRow`, `ChoiceTable`, `Attempt`, `PlanResult`) live in
`modify.study.plan_records` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from modify.conversion.init import collapse_dead_selectors
from modify.conversion.pipeline import traced_sites
from modify.errors import ModifyError, NoBlocksError, PlanError
from modify.layers.options import Selection
from modify.study.candidates import Candidate, build_candidate
from modify.study.choices import Choice, block_choices, choice_recipe
from modify.study.finalists import brief_finetune, run_finalists
from modify.study.latency import Timing, time_savings
from modify.study.plan_records import (
    DEFAULT_MOD as DEFAULT_MOD,
    DYNAMIC_MOD as DYNAMIC_MOD,
    Attempt as Attempt,
    ChoiceRow as ChoiceRow,
    ChoiceTable as ChoiceTable,
    Finalist as Finalist,
    PlanConfig as PlanConfig,
    PlanResult as PlanResult,
)
from modify.study.plan_search import option_table, runner_ups, search, speedup_spread
from modify.study.sensitivity import Score, calibration_batch, calibration_split, reference_outputs, repair, score

__all__ = [
    "PlanConfig",
    "ChoiceRow",
    "ChoiceTable",
    "Attempt",
    "Finalist",
    "PlanResult",
    "plan",
    "measure_choices",
    "retime_choices",
    "build_plan",
    "DEFAULT_MOD",
    "DYNAMIC_MOD",
]

Event = Callable[[str, dict[str, Any]], None]


def _candidate(recipe: dict[str, Any], config: PlanConfig) -> Candidate:
    return Candidate("mixed", "plan", recipe=recipe, init=config.init, zero_update=config.zero_update)


def build_plan(
    original: nn.Module,
    recipe: Mapping[str, Any],
    config: PlanConfig,
    *,
    weights: bool,
    repair_set: Dataset | None = None,
) -> nn.Module:
    """A model of ``recipe`` built from ``original``: the architecture alone (``weights=False``),
    or initialised as the plan says and given its cheap repair on ``repair_set`` (whose first
    images also scale the MoD selectors' prior and decide which selectors the repair left dead,
    to collapse into the set they pick; the calibration images are only ever scored on)."""
    candidate = _candidate(dict(recipe), config)
    prior = None
    if weights and repair_set is not None:
        prior = calibration_batch(Subset(repair_set, range(min(256, len(repair_set)))))  # type: ignore[arg-type]
    model, _ = build_candidate(candidate, original, input_size=config.setting.input_size, calib=prior, weights=weights)
    if prior is not None and repair_set is not None:
        repair(
            model,
            original,
            repair_set,
            distill_steps=config.distill_steps,
            images=config.repair_images,
            bn_batches=config.bn_batches,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        collapse_dead_selectors(model, prior)  # selectors the repair's distillation killed: their fixed set
    return model.eval()


def _blocks(original: nn.Module, size: int) -> dict[str, int]:
    try:
        _, sites = traced_sites(original, (torch.zeros(1, 3, size, size),))
    except NoBlocksError as e:
        raise PlanError(f"nothing to plan: {e}") from None
    blocks = {s.name: s.channels for s in sites if s.convertible}
    if not blocks:
        raise PlanError(
            "nothing to plan: no residual block of this model can be changed (`modify blocks MODEL` says why)."
        )
    return blocks


def _time_choices(
    original: nn.Module, options: dict[str, list[Choice]], channels: dict[str, int], config: PlanConfig, emit: Event
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Each choice's timing (key -> Timing), and the choices that could not be built (key -> why)."""
    groups: dict[str, dict[str, nn.Module]] = {}
    failed: dict[str, str] = {}
    for block, choices in options.items():
        groups[block] = {}
        for c in choices[1:]:  # keep is the original
            try:
                groups[block][c.key] = build_plan(
                    original, choice_recipe([c], channels, config.mod), config, weights=False
                )
            except ModifyError as e:
                failed[c.key] = str(e)
    emit("stage", {"name": "timing", "total": len(groups), "setting": config.setting.describe()})
    timings = time_savings(
        original,
        groups,
        config.setting,
        rounds=config.rounds,
        seconds=config.seconds,
        on_group=lambda block: emit("timed", {"block": block}),
    )
    return timings, failed


def _score_choices(
    original: nn.Module,
    options: dict[str, list[Choice]],
    channels: dict[str, int],
    config: PlanConfig,
    failed: dict[str, str],
    repair_set: Dataset,
    calib: torch.Tensor,
    emit: Event,
) -> dict[str, Score]:
    reference = reference_outputs(original, calib)
    todo = [c for choices in options.values() for c in choices[1:] if c.key not in failed]
    emit("stage", {"name": "scoring", "total": len(todo)})
    scores: dict[str, Score] = {}
    for c in todo:
        try:
            model = build_plan(
                original,
                choice_recipe([c], channels, config.mod),
                config,
                weights=True,
                repair_set=repair_set,
            )
        except ModifyError as e:
            failed[c.key] = str(e)
            continue
        scores[c.key] = score(model, calib, reference)
        emit("scored", {"key": c.key, "kl": scores[c.key].kl, "agreement": scores[c.key].agreement})
    return scores


def _rows(
    options: dict[str, list[Choice]],
    channels: dict[str, int],
    timings: dict[str, Timing],
    scores: dict[str, Score],
    failed: dict[str, str],
    static: bool,
) -> list[ChoiceRow]:
    rows = []
    for block, choices in options.items():
        for c in choices:
            base = dict(
                block=block,
                channels=channels[block],
                action=c.action,
                fraction=c.fraction,
                label=c.label(channels[block], static=static),
            )
            if c.action == "keep":
                rows.append(ChoiceRow(**base, saving_ms=0.0, spread_ms=0.0, kl=0.0, agreement=1.0))
            elif c.key in failed or c.key not in scores:
                rows.append(ChoiceRow(**base, error=failed.get(c.key, "not measured")))
            else:
                t, s = timings[c.key], scores[c.key]
                rows.append(
                    ChoiceRow(**base, saving_ms=t.saving_ms, spread_ms=t.spread_ms, kl=s.kl, agreement=s.agreement)
                )
    return rows


def _measure(original: nn.Module, recipe: dict[str, Any], config: PlanConfig) -> Timing:
    model = build_plan(original, recipe, config, weights=False)
    return time_savings(
        original, {"plan": {"plan": model}}, config.setting, rounds=config.rounds, seconds=config.seconds
    )["plan"]


def measure_choices(
    model: nn.Module, data: Dataset, config: PlanConfig, *, on_event: Event | None = None
) -> ChoiceTable:
    """Steps 1-3 of the module docstring: every (block, choice) of ``config`` timed and scored
    (the speed-up of ``config`` only decides whether the fastest choices can reach it at all)."""
    repair_set, _, calib = _split(data, config)
    return _measure_choices(model.eval(), repair_set, calib, config, on_event or (lambda kind, info: None))


def _measure_choices(
    original: nn.Module, repair_set: Dataset, calib: torch.Tensor, config: PlanConfig, emit: Event
) -> ChoiceTable:
    """`measure_choices` on a calibration split already made (`plan` makes it once for both)."""
    channels = _blocks(original, config.setting.input_size)
    choices = block_choices(channels, actions=config.actions, fractions=config.fractions)
    timings, failed = _time_choices(original, choices, channels, config, emit)
    original_ms = _original_ms(timings)
    _check_reachable(original, choices, channels, timings, failed, config)
    scores = _score_choices(original, choices, channels, config, failed, repair_set, calib, emit)
    rows = _rows(choices, channels, timings, scores, failed, static=config.mod.selection is Selection.STATIC)
    return ChoiceTable(config.setting, original_ms, tuple(rows), config.calib_images, config.seed, config.mod_build())


def _check_build(table: ChoiceTable, config: PlanConfig) -> None:
    """Refuses a table whose MoD rows were built otherwise than ``config`` builds MoD blocks."""
    if dict(table.mod_build) != config.mod_build() and any(r.action == "mod" for r in table.rows):
        raise PlanError(
            f"the measured choices built MoD blocks as {dict(table.mod_build)}, this plan as "
            f"{config.mod_build()}; plan again without them, or build MoD as they did (--selection dynamic "
            "for a table written before static MoD became the default)."
        )


def retime_choices(
    model: nn.Module, table: ChoiceTable, config: PlanConfig, *, on_event: Event | None = None
) -> ChoiceTable:
    """``table``'s choices timed again in ``config.setting`` (another batch, thread count or
    engine), their KL and agreement kept: a choice's effect on the outputs does not depend on
    how the model is run, its saving does (what is cheap at batch 1 on one thread may not be at
    batch 32 on every core). The images' size must stay: the scores were measured at it.

    Raises:
        PlanError: the table was measured at another input size, or on other calibration images,
            or its MoD blocks were built otherwise than ``config`` builds them.

    Example:
        >>> import torchvision, torch
        >>> from torch.utils.data import TensorDataset
        >>> from modify.study.latency import Setting
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> data = TensorDataset(torch.randn(96, 3, 32, 32), torch.zeros(96, dtype=torch.long))
        >>> small = dict(calib_images=32, repair_images=32, distill_steps=2, bn_batches=1, rounds=2, seconds=0.02,
        ...              fractions=(0.25,), actions=("delete",))
        >>> table = measure_choices(net, data, PlanConfig(speedup=1.2, setting=Setting(input_size=32), **small))
        >>> wide = retime_choices(net, table, PlanConfig(speedup=1.2, setting=Setting(batch=4, input_size=32), **small))
        >>> wide.setting.batch, [r.kl for r in wide.rows] == [r.kl for r in table.rows]
        (4, True)
    """
    emit: Event = on_event or (lambda kind, info: None)
    _check_build(table, config)
    if table.setting.input_size != config.setting.input_size or (table.calib_images, table.seed) != (
        config.calib_images,
        config.seed,
    ):
        raise PlanError(
            f"the measured choices are for {table.setting.input_size}x{table.setting.input_size} images and "
            f"{table.calib_images} calibration images (seed {table.seed}), not {config.setting.input_size}x"
            f"{config.setting.input_size} and {config.calib_images} (seed {config.seed}); plan again without them."
        )
    original = model.eval()
    channels = {r.block: r.channels for r in table.rows}
    measured = [r for r in table.rows if r.error is None and r.action != "keep"]
    options: dict[str, list[Choice]] = {}
    for r in table.rows:
        options.setdefault(r.block, [Choice(r.block, "keep", None)])
    for r in measured:
        options[r.block].append(r.choice)
    timings, failed = _time_choices(original, options, channels, config, emit)
    rows = []
    for r in table.rows:
        if r.choice.key in timings:
            t = timings[r.choice.key]
            rows.append(dataclasses.replace(r, saving_ms=t.saving_ms, spread_ms=t.spread_ms))
        else:
            rows.append(dataclasses.replace(r, error=failed[r.choice.key]) if r.choice.key in failed else r)
    return ChoiceTable(
        config.setting, _original_ms(timings), tuple(rows), table.calib_images, table.seed, table.mod_build
    )


def _split(data: Dataset, config: PlanConfig) -> tuple[Dataset, Dataset, torch.Tensor]:
    repair_set, calib_set = calibration_split(data, calib_images=config.calib_images, seed=config.seed)
    calib = calibration_batch(calib_set)  # (N, 3, H, W)
    if calib.shape[-1] != config.setting.input_size:
        raise PlanError(
            f"the data's images are {calib.shape[-1]}x{calib.shape[-2]} "
            f"and the plan is for {config.setting.input_size}x"
            f"{config.setting.input_size}; pass --input-size {calib.shape[-1]} (or data of the size you deploy at)."
        )
    return repair_set, calib_set, calib


def plan(
    model: nn.Module,
    *,
    speedup: float,
    data: Dataset,
    config: PlanConfig | None = None,
    table: ChoiceTable | None = None,
    on_event: Event | None = None,
    **options: Any,
) -> PlanResult:
    """Plans per block which choice makes ``model`` ``speedup`` times faster at the least measured
    loss (see the module docstring); ``model`` is left untouched.

    Args:
        model: a trained CNN that `modify.convert` takes (its residual blocks are the choices).
        speedup: the target, original time / planned time in the setting (`PlanConfig.setting`).
        data: training images (a dataset of (image, label); labels are not used). Calibration
            images are held out of it; pass no test images: the plan must not see them.
        config: every setting at once; or give `PlanConfig` fields as keyword ``options``
            (``setting=Setting(batch=32, threads=0)``, ``fractions=(0.25,)``, ...).
        table: the choices measured before (`measure_choices`, for the same model and data):
            plans for other targets or other allowed actions are solved from it without timing
            and scoring every choice again. Measured in another batch, thread count or engine,
            its choices are timed again in this one (`retime_choices`) and their scores kept.
            Its MoD rows must have been built as ``config`` builds them (`PlanConfig.mod_build`).
        on_event: called with ("stage" | "timed" | "scored" | "attempt", info) as it goes.

    Returns:
        A `PlanResult`: the version-2 recipe, every block's measured choices, the predicted and
        measured speed-ups and KL.

    Raises:
        PlanError: a speed-up not above 1 or out of reach (the message says the fastest
            reachable), data too small to hold out the calibration images, no block to plan, or
            a ``table`` whose MoD blocks were built otherwise.

    Example:
        >>> import torchvision, torch
        >>> from torch.utils.data import TensorDataset
        >>> from modify.study.latency import Setting
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> data = TensorDataset(torch.randn(96, 3, 32, 32), torch.zeros(96, dtype=torch.long))
        >>> result = plan(net, speedup=1.2, data=data, setting=Setting(input_size=32), calib_images=32,
        ...               repair_images=32, distill_steps=2, bn_batches=1, rounds=2, seconds=0.02, fractions=(0.25,),
        ...               tune_steps=2)
        >>> len(result.chosen), result.recipe["version"]
        (5, 2)
    """
    started = time.perf_counter()
    config = config or PlanConfig(speedup=speedup, **options)
    if config.speedup != speedup:
        config = dataclasses.replace(config, speedup=speedup)
    emit: Event = on_event or (lambda kind, info: None)
    original = model.eval()
    repair_set, _, calib = _split(data, config)
    if table is None:
        table = _measure_choices(original, repair_set, calib, config, emit)
    elif table.setting != config.setting:
        table = retime_choices(original, table, config, on_event=emit)  # which checks the build too
    else:
        _check_build(table, config)
    rows = table.allowed(config.actions, config.fractions)
    channels = {r.block: r.channels for r in table.rows}
    _, grouped, opts = option_table(rows)
    picks, attempts, timing = search(
        grouped, opts, channels, table.original_ms, config, measure=lambda r: _measure(original, r, config), emit=emit
    )
    chosen = [grouped[i][j] for i, j in enumerate(picks)]
    final = next(a for a in attempts if a.chosen == tuple(r.choice.key for r in chosen))  # the attempt that measured it
    predicted = final.predicted_speedup
    reference = reference_outputs(original, calib)
    finalists: list[Finalist] = []
    joint: Score | None = None
    if config.meets(timing.speedup) and config.tune_steps > 0 and config.finalists > 1:

        def evaluate(recipe: dict[str, Any]) -> tuple[Score, Score]:
            model = build_plan(original, recipe, config, weights=True, repair_set=repair_set)
            repaired = score(model, calib, reference)
            tune = dict(steps=config.tune_steps, batch_size=config.batch_size, seed=config.seed)
            return repaired, brief_finetune(model, original, repair_set, calib, reference, **tune)

        finalists, timings = run_finalists(
            grouped,
            opts,
            picks,
            timing,
            final.required_ms,
            channels,
            table.original_ms,
            config,
            measure=lambda r: _measure(original, r, config),
            evaluate=evaluate,
            emit=emit,
        )
        winner = next(f for f in finalists if f.picked)
        index = {r.choice.key: j for group in grouped for j, r in enumerate(group)}
        picks = [index[key] for key in winner.chosen]
        chosen = [grouped[i][j] for i, j in enumerate(picks)]
        timing = timings[winner.chosen]
        predicted = winner.predicted_speedup
        joint = Score(kl=float(winner.kl or 0.0), agreement=float(winner.agreement or 0.0))
    recipe = choice_recipe([r.choice for r in chosen], channels, config.mod)
    if joint is None:
        joint = score(build_plan(original, recipe, config, weights=True, repair_set=repair_set), calib, reference)
    emit("stage", {"name": "done"})
    return PlanResult(
        config=config,
        original_ms=table.original_ms,
        rows=tuple(rows),
        chosen=tuple(chosen),
        runner_up=tuple(runner_ups(grouped, opts, picks, final.required_ms, config)),
        predicted_speedup=predicted,
        measured_speedup=timing.speedup,
        measured_spread=speedup_spread(timing),
        predicted_kl=sum(float(r.kl or 0.0) for r in chosen),
        measured_kl=joint.kl,
        measured_agreement=joint.agreement,
        met=config.meets(timing.speedup),
        attempts=tuple(attempts),
        recipe=recipe,
        seconds=time.perf_counter() - started,
        table=table,
        finalists=tuple(finalists),
    )


def _original_ms(timings: Mapping[str, Timing]) -> float:
    import statistics

    if not timings:
        raise PlanError(
            "no choice could be built for any block, so there is nothing to plan (`modify blocks MODEL` says why)."
        )
    return statistics.median(t.original_ms for t in timings.values())


def _check_reachable(
    original: nn.Module,
    choices: dict[str, list[Choice]],
    channels: dict[str, int],
    timings: dict[str, Timing],
    failed: dict[str, str],
    config: PlanConfig,
) -> None:
    """Refuses, before the sensitivity work, a target the fastest choices cannot reach: every block
    at its fastest choice, built and timed together (the choices' savings summed overlap, and on a
    busy machine can add up to more than the whole model)."""
    fastest: list[Choice] = []
    for cs in choices.values():
        usable = [c for c in cs if c.key in timings and c.key not in failed and timings[c.key].saving_ms > 0]
        if usable:
            fastest.append(max(usable, key=lambda c: timings[c.key].saving_ms))
    measured = _measure(original, choice_recipe(fastest, channels, config.mod), config) if fastest else None
    speedup = measured.speedup if measured is not None else 1.0
    if not config.meets(speedup):
        now = f" ({measured.original_ms:.2f} ms now)" if measured is not None else ""
        raise PlanError(
            f"speed-up {config.speedup:g}x is out of reach in "
            f"{config.setting.describe()}: every block at its fastest choice "
            f"measures {speedup:.2f}x{now}. "
            f"Ask for at most {speedup:.2f}x, or allow more actions "
            "(--actions) or smaller fractions (--fractions)."
        )
