"""`modify convert MODEL`: surgery by recipe, a report, and optionally a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from modify.cli.plan import BatchOpt, EngineOpt, ThreadsOpt
from modify.cli._common import (
    INIT_HELP,
    ClassesOpt,
    WeightsOpt,
    check_output,
    fail,
    load_base,
    parse_init,
    parse_k,
    quiet_torch_logs,
    user_errors,
)

app = typer.Typer()

RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", "-r", help="A recipe file or shipped name (every_other, all, late_stages).")]
KOpt = Annotated[Optional[str], typer.Option("-k", help="Channels per converted block (16) or a fraction of its width (0.25).")]
COpt = Annotated[Optional[int], typer.Option("-c", help="The paper's capacity: k = max(1, C // c).", min=1)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Full skip reasons in the table instead of below it.")]
SizeOpt = Annotated[int, typer.Option("--input-size", help="Input height and width for tracing and MACs.", min=8)]
LeafOpt = Annotated[Optional[list[str]], typer.Option("--leaf", help="A module (qualified name) fx must not trace into; repeatable.")]


def run_conversion(model, recipe, k, c, weights, num_classes, input_size, leaf, init="scratch"):
    """Shared by `convert` and `blocks`: (original, result, label)."""
    from modify.conversion.pipeline import convert as convert_model

    if sum(v is not None for v in (recipe, k, c)) > 1:
        raise fail("give at most one of --recipe, -k and -c.")
    original, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
    result = convert_model(
        original, recipe=recipe, k=parse_k(k), c=c, input_size=input_size, leaf_modules=tuple(leaf or ()), init=init
    )
    return original, result, label


@app.command()
@user_errors
def convert(
    model: Annotated[str, typer.Argument(help="A torchvision name, timm:NAME, package.module:factory, or a checkpoint.")],
    recipe: RecipeOpt = None,
    k: KOpt = None,
    c: COpt = None,
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = 224,
    leaf: LeafOpt = None,
    init: Annotated[Optional[str], typer.Option("--init", help=INIT_HELP + " [scratch, or the recipe's]")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the converted model here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    verbose: VerboseOpt = False,
    speedup: Annotated[Optional[float], typer.Option("--speedup", help="Plan first (modify plan) for this measured speed-up; needs --data.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="With --speedup: the training images to plan and repair with.")] = None,
    batch: BatchOpt = 1,
    threads: ThreadsOpt = 1,
    engine: EngineOpt = "eager",
) -> None:
    """Convert MODEL's residual blocks into MoD blocks and report what changed; with --speedup, plan
    per block first (keep, delete, MoD, narrow) and convert by the plan."""
    from modify.io.checkpoint import save
    from modify.measure.report import summarize

    if output is not None:
        check_output(output, force=force)
    parse_init(init)
    if speedup is not None or data is not None:
        _convert_by_plan(model, speedup, data, output, force=force, weights=weights, num_classes=num_classes,
                         input_size=input_size, given=(recipe, k, c), batch=batch, threads=threads, engine=engine)  # fmt: skip
        return
    original, result, label = run_conversion(model, recipe, k, c, weights, num_classes, input_size, leaf, init)
    summary = summarize(original, result, input_size=input_size)
    written = save(result, output, force=force) if output is not None else None
    if as_json:
        data = summary.as_dict()
        data.update(model=label, output=str(written) if written else None, recipe=result.recipe.to_dict())
        typer.echo(json.dumps(data))
        return
    from modify.cli.render import console, conversion_tables

    out = console()
    for table in conversion_tables(label, summary, verbose=verbose):
        out.print(table)
    if written is not None:
        out.print(f"wrote {written}")


def _convert_by_plan(model: str, speedup: float | None, data: str | None, output: Path | None, *, force: bool,
                     weights: Path | None, num_classes: int | None, input_size: int, given: tuple, batch: int, threads: int,
                     engine: str) -> None:  # fmt: skip
    """`modify convert MODEL --speedup S --data DATA`: `modify plan`, then the planned model built,
    repaired (block-local distillation, BatchNorm re-estimation) and written with its plan beside it."""
    from modify.cli.plan import plan_options, run_plan

    if speedup is None or data is None:
        raise fail("--speedup and --data go together: the plan is measured on this machine and scored on your training images.")
    if any(v is not None for v in given):
        raise fail("--speedup plans the blocks itself; drop --recipe, -k and -c (or drop --speedup to convert by them).")
    if output is None:
        raise fail("--speedup builds a planned model; give -o FILE for it (its plan is written beside it).")
    quiet_torch_logs()
    from modify.study.plan_report import paths_beside

    plan_path = output.with_suffix(".plan.yaml")
    for path in paths_beside(plan_path).values():
        check_output(path, force=True)
    options = plan_options(speedup, batch, threads, engine, "0.5,0.25,0.125", "delete,mod,narrow")
    size = input_size if input_size != 224 else None  # convert's default size means "the data's" here
    original, result, label, train = run_plan(model, data, options, weights=weights, num_classes=num_classes, input_size=size,
                                       data_dir=None, limit=None, calib_images=1024, distill_steps=200, rounds=7,
                                       quiet=False)  # fmt: skip
    from modify.io.checkpoint import save
    from modify.study.plan_report import write_plan
    from modify.study.planner import build_plan
    from modify.study.sensitivity import calibration_split

    repair_set, _ = calibration_split(train, calib_images=result.config.calib_images, seed=result.config.seed)
    planned = build_plan(original, result.recipe, result.config, weights=True, repair_set=repair_set)
    written = save(planned, output, force=force)
    paths = write_plan(result, plan_path, model=label, force=True)
    from modify.cli.render import console, plan_summary, plan_table

    out = console()
    out.print(plan_table(result))
    for line in plan_summary(result):
        out.print(line, highlight=False)
    out.print(f"wrote {written} (planned, repaired; fine-tune it with modify finetune) and its plan {paths['yaml']}", highlight=False)


blocks_app = typer.Typer()


@blocks_app.command()
@user_errors
def blocks(
    model: Annotated[str, typer.Argument(help="A torchvision name, timm:NAME, package.module:factory, or a checkpoint.")],
    recipe: RecipeOpt = None,
    k: KOpt = None,
    c: COpt = None,
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = 224,
    leaf: LeafOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Every residual block found: whether the recipe converts it, with which k, MACs before and after (the
    conversion runs on a copy in memory; nothing is written)."""
    from modify.measure.report import summarize

    original, result, label = run_conversion(model, recipe, k, c, weights, num_classes, input_size, leaf)
    summary = summarize(original, result, input_size=input_size)
    if as_json:
        typer.echo(json.dumps(dict(summary.as_dict(), model=label)))
        return
    from modify.cli.render import blocks_table, console, reasons_text

    out = console()
    out.print(blocks_table(label, summary, verbose=verbose))
    reasons = None if verbose else reasons_text(summary)
    if reasons is not None:
        out.print(reasons)
