"""`modify bench MODEL --vs OTHER [--engine ENGINE]`: both models timed interleaved in one process,
in the engine they will be deployed with; the table says how far its figures can be trusted."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from modify.cli._common import (
    ENGINE_HELP,
    ENGINES,
    ClassesOpt,
    WeightsOpt,
    fail,
    load_base,
    quiet_torch_logs,
    user_errors,
)

app = typer.Typer()


def _parse_cases(specs: list[str]):
    from modify.measure.benchmark import BenchCase

    cases = []
    for spec in specs:
        try:
            batch, threads = (int(v) for v in spec.split("x"))
            if batch < 1 or threads < 0:
                raise ValueError
        except ValueError:
            raise fail(f"--case {spec!r} is not BATCHxTHREADS (e.g. 1x1, 32x0 where 0 = all cores).") from None
        cases.append(BenchCase(batch_size=batch, threads=threads))
    return cases


@app.command()
@user_errors
def bench(
    model: Annotated[str, typer.Argument(help="The model to time (resnet50_mod, ...).")],
    vs: Annotated[str, typer.Option("--vs", help="The baseline timed beside it (resnet50).")],
    input_size: Annotated[int, typer.Option("--input-size", help="Input height and width.", min=1)] = 224,
    case: Annotated[
        list[str] | None,
        typer.Option("--case", help="BATCHxTHREADS, repeatable; 0 threads = all cores. Default: 1x1 and 32x0."),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Alternating rounds per setting.", min=1)] = 7,
    min_run_time: Annotated[float, typer.Option("--min-run-time", help="Seconds per model per round.", min=0.0)] = 0.5,
    engine: Annotated[
        str, typer.Option("--engine", help=f"{ENGINE_HELP} Compiling is done before the timing.")
    ] = "eager",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
) -> None:
    """Time MODEL against the baseline (eval, fp32), interleaved; print medians, speed-ups and their spread."""
    if engine not in ENGINES:
        raise fail(f"--engine {engine!r} is not one of {', '.join(ENGINES)}.")
    quiet_torch_logs()
    from modify.measure.benchmark import DEFAULT_CASES, bench as run_bench

    cases = _parse_cases(case) if case else list(DEFAULT_CASES)
    module, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
    baseline, baseline_label = load_base(vs, weights=None, num_classes=num_classes)
    report = run_bench(
        module,
        baseline,
        cases=cases,
        input_size=input_size,
        rounds=rounds,
        min_run_time=min_run_time,
        labels=(label, baseline_label),
        engine=engine,
    )
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    from modify.cli.render import bench_lines, bench_table, console

    console().print(bench_table(report))
    for line in bench_lines(report):
        console().print(line, highlight=False, soft_wrap=True)
