"""`modify convert MODEL`: surgery by recipe, a report, and optionally a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from modify.cli._common import (
    INIT_HELP,
    check_output,
    fail,
    load_base,
    parse_init,
    parse_k,
    user_errors,
)

app = typer.Typer()

RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", "-r", help="A recipe file or shipped name (every_other, all, late_stages).")]
KOpt = Annotated[Optional[str], typer.Option("-k", help="Channels per converted block (16) or a fraction of its width (0.25).")]
COpt = Annotated[Optional[int], typer.Option("-c", help="The paper's capacity: k = max(1, C // c).", min=1)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Full skip reasons in the table instead of below it.")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Your weights for MODEL: a state_dict, a training checkpoint (state_dict / model / model_state_dict keys, module. prefixes) or .safetensors.")]
ClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the model's head.", min=1)]
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
    init: Annotated[str, typer.Option("--init", help=INIT_HELP)] = "scratch",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the converted model here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Convert MODEL's residual blocks into MoD blocks and report what changed."""
    from modify.io.checkpoint import save
    from modify.measure.report import summarize

    if output is not None:
        check_output(output, force=force)
    parse_init(init)
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
