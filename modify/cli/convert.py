"""`modify convert MODEL`: surgery by recipe, a report, and optionally a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modify.cli._common import (
    INIT_HELP,
    ClassesOpt,
    COpt,
    KOpt,
    LeafOpt,
    RecipeOpt,
    SizeOpt,
    VerboseOpt,
    WeightsOpt,
    check_output,
    fail,
    parse_init,
    quiet_torch_logs,
    run_conversion,
    user_errors,
)
from modify.cli.plan import BatchOpt, EngineOpt, ThreadsOpt

app = typer.Typer()


@app.command()
@user_errors
def convert(
    model: Annotated[
        str, typer.Argument(help="A torchvision name, timm:NAME, package.module:factory, or a checkpoint.")
    ],
    recipe: RecipeOpt = None,
    k: KOpt = None,
    c: COpt = None,
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = 224,
    leaf: LeafOpt = None,
    init: Annotated[str | None, typer.Option("--init", help=INIT_HELP + " [scratch, or the recipe's]")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the converted model here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    verbose: VerboseOpt = False,
    speedup: Annotated[
        float | None,
        typer.Option("--speedup", help="Plan first (modify plan) for this measured speed-up; needs --data."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="With --speedup: the training images to plan and repair with.")
    ] = None,
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
        _convert_by_plan(
            model,
            speedup,
            data,
            output,
            force=force,
            weights=weights,
            num_classes=num_classes,
            input_size=input_size,
            given=(recipe, k, c),
            batch=batch,
            threads=threads,
            engine=engine,
        )
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


def _convert_by_plan(
    model: str,
    speedup: float | None,
    data: str | None,
    output: Path | None,
    *,
    force: bool,
    weights: Path | None,
    num_classes: int | None,
    input_size: int,
    given: tuple,
    batch: int,
    threads: int,
    engine: str,
) -> None:
    """`modify convert MODEL --speedup S --data DATA`: `modify plan`, then the planned model built,
    repaired (block-local distillation, BatchNorm re-estimation) and written with its plan beside it."""
    from modify.cli.plan import plan_options, run_plan

    if speedup is None or data is None:
        raise fail(
            "--speedup and --data go together: the plan is measured on this machine and scored on your training images."
        )
    if any(v is not None for v in given):
        raise fail(
            "--speedup plans the blocks itself; drop --recipe, -k and -c (or drop --speedup to convert by them)."
        )
    if output is None:
        raise fail("--speedup builds a planned model; give -o FILE for it (its plan is written beside it).")
    quiet_torch_logs()
    from modify.study.plan_report import paths_beside

    plan_path = output.with_suffix(".plan.yaml")
    for path in paths_beside(plan_path).values():
        check_output(path, force=True)
    options = plan_options(speedup, batch, threads, engine, "0.5,0.25,0.125", "delete,mod,narrow")
    size = input_size if input_size != 224 else None  # convert's default size means "the data's" here
    original, result, label, train = run_plan(
        model,
        data,
        options,
        weights=weights,
        num_classes=num_classes,
        input_size=size,
        data_dir=None,
        limit=None,
        calib_images=1024,
        distill_steps=200,
        rounds=7,
        quiet=False,
    )
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
    out.print(
        f"wrote {written} (planned, repaired; fine-tune it with modify finetune) and its plan {paths['yaml']}",
        highlight=False,
    )
