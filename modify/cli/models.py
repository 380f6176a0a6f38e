"""`modify models`: every name the other commands accept."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer()


@app.command()
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Also list torchvision's models.")] = False,
) -> None:
    """List the paper's MoD architectures (and, with --all, torchvision's model names)."""
    from modify.cli.render import console, models_table
    from modify.models import PAPER_BASELINES, list_mod_models, list_models

    names = list_models() if all_models else list_mod_models()
    console().print(models_table(names, PAPER_BASELINES))
