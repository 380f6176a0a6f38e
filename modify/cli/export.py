"""`modify export CHECKPOINT --format onnx|torch-export|aoti`: a deployable file, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modify.cli._common import ClassesOpt, WeightsOpt, check_output, fail, load_base, user_errors

app = typer.Typer()


@app.command()
@user_errors
def export(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint from `modify convert -o`, or a model name.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="onnx, torch-export or aoti (an AOTInductor package; needs a C++ compiler)."
        ),
    ] = "onnx",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Default: CHECKPOINT with .onnx / .pt2 / .aoti.pt2.")
    ] = None,
    input_size: Annotated[int, typer.Option("--input-size", help="Input height and width.", min=8)] = 224,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Allow any batch size.")] = False,
    fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm into the convolutions first.")] = False,
    device: Annotated[str, typer.Option("--device", help="aoti only: compile for cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
) -> None:
    """Export for deployment, then run the export and compare it with PyTorch (batch 1 and 2)."""
    from modify.deploy.export import FORMATS, default_output, export_onnx, export_program

    if fmt not in FORMATS:
        raise fail(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    if device not in ("cpu", "cuda"):
        raise fail(f"--device {device!r} is not one of cpu, cuda.")
    if device != "cpu" and fmt != "aoti":
        raise fail(f"--device {device} applies to --format aoti only; {fmt} files are checked on the cpu.")
    target = output or default_output(checkpoint, fmt)
    check_output(target, force=force)
    if fmt == "aoti":
        from modify.deploy.aoti import check_toolchain

        check_toolchain(device)  # no C++ compiler or no GPU: say so before loading anything
    model, _ = load_base(checkpoint, weights=str(weights) if weights else None, num_classes=num_classes)
    if fold_bn:
        from modify.deploy.optimize import fold_batchnorm

        fold_batchnorm(model)
    if fmt == "aoti":
        from modify.deploy.aoti import export_aoti

        report = export_aoti(
            model, target, input_size=input_size, dynamic_batch=dynamic_batch, device=device, force=force
        )
    else:
        run = export_onnx if fmt == "onnx" else export_program
        report = run(model, target, input_size=input_size, dynamic_batch=dynamic_batch, force=force)
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    from modify.cli.render import console

    ops = f"; operators: {', '.join(report.operators)}" if report.operators else ""
    console().print(
        f"wrote {report.path} ({report.format}); max |export - PyTorch| = {report.max_abs_diff:.2e} "
        f"at batch {', '.join(map(str, report.batch_sizes))}{ops}",
        highlight=False,
    )
