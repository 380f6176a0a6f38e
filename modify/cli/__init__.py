"""The `modify` command line: one file per command; only `render.py` imports rich.

Importing this package imports typer alone, so `modify --help` answers without loading torch.
"""

from __future__ import annotations

import warnings

import typer

from modify.cli import bench, compare, convert, export, finetune, models, profile, routes

__all__ = ["app", "main"]

# torchvision scripts a few ops at import; torch 2.14 calls torch.jit.script deprecated. Not ours
# to fix, and not the user's concern.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

app = typer.Typer(
    name="modify",
    help="Model surgery that turns CNNs into CNN Mixture-of-Depths networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _sub in (convert.app, convert.blocks_app, finetune.app, compare.app, routes.app, profile.app, bench.app, export.app, models.app):
    app.add_typer(_sub)


def main() -> None:
    """Console-script entry point."""
    app()
