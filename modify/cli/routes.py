"""`modify routes CHECKPOINT --data DATA`: which channels each MoD block selects, as a heatmap and JSON."""

from __future__ import annotations

from typing import Annotated

import typer

from modify.cli._common import check_output, load_model, quiet_torch_logs, user_errors

app = typer.Typer()


@app.command()
@user_errors
def routes(
    checkpoint: Annotated[str, typer.Argument(help="A converted model: a modify checkpoint, or a MoD model's name.")],
    data: Annotated[str, typer.Option("--data", help="'fashion-mnist' or an image folder (ROOT/CLASS/IMG).")],
    out: Annotated[str, typer.Option("-o", "--out", help="Folder for routes.png and routes.json.")] = "routes_out",
    split: Annotated[str, typer.Option("--split", help="Which split of DATA: test or train.")] = "test",
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N images.", min=1)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.", min=1)] = 256,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image side (image folders: 224; fashion-mnist: 32).", min=1)
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder of the data set files (fashion-mnist: the IDX files).")
    ] = None,
) -> None:
    """Record every MoD block's channel selections over a data set: heatmap, entropy, per-class differences."""
    check_output(out, kind="folder")
    quiet_torch_logs()
    from torch.utils.data import DataLoader

    from modify.measure.routes import routes as record_routes, write_routes
    from modify.train.data import load_dataset

    model, label = load_model(checkpoint)
    dataset = load_dataset(data, split=split, data_dir=data_dir, limit=limit, size=image_size)
    report = record_routes(model, DataLoader(dataset, batch_size=batch_size))
    paths = write_routes(report, out)
    from modify.cli.render import console, routes_table

    console().print(routes_table(label, report))
    typer.echo(f"wrote {paths['plot']} and {paths['json']}")
