"""`modify profile MODEL`: parameters, MACs and a per-block table."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from modify.cli._common import ClassesOpt, WeightsOpt, load_base, user_errors

app = typer.Typer()


@app.command()
@user_errors
def profile(
    model: Annotated[str, typer.Argument(help="A model name (resnet50, resnet50_mod, ...).")],
    input_size: Annotated[int, typer.Option("--input-size", help="Input height and width.", min=1)] = 224,
    compare: Annotated[str | None, typer.Option("--compare", help="A second model, profiled beside it.")] = None,
    num_classes: ClassesOpt = None,
    weights: WeightsOpt = None,
    depth: Annotated[int, typer.Option("--depth", help="Module depth of the per-block rows.", min=1)] = 2,
    latency: Annotated[
        bool, typer.Option("--latency", help="Also measure each block's time (batch 1, one thread) beside its MACs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Count parameters and MACs (fvcore convention, MoD operators included), per block."""
    from modify.measure.profiling import profile_model

    module, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
    report = profile_model(module, input_size=input_size, depth=depth, label=label, latency=latency)
    other = None
    if compare is not None:
        other_module, other_label = load_base(compare, weights=None, num_classes=num_classes)
        other = profile_model(other_module, input_size=input_size, depth=depth, label=other_label, latency=latency)
    if as_json:
        data = report.as_dict()
        if other is not None:
            data["compare"] = other.as_dict()
            data["ratios"] = {"params": other.params / report.params, "macs": other.macs / report.macs}
        typer.echo(json.dumps(data))
        return
    from modify.cli.render import compare_table, console, profile_tables

    out = console()
    for table in profile_tables(report):
        out.print(table)
    if other is not None:
        out.print(compare_table(report, other))
