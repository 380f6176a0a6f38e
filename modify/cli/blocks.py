"""`modify blocks MODEL`: every residual block found, and what a recipe would do to it (nothing is written)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from modify.cli._common import (
    ClassesOpt,
    COpt,
    KOpt,
    LeafOpt,
    RecipeOpt,
    SizeOpt,
    VerboseOpt,
    WeightsOpt,
    run_conversion,
    user_errors,
)

app = typer.Typer()


@app.command()
@user_errors
def blocks(
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
