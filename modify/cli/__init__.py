"""The `modify` command line: one file per command; only the `render` package imports rich.

Importing this package imports typer alone, so `modify --help` answers without loading torch.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer
import typer.core

from modify.cli import (
    bench,
    blocks,
    compare,
    convert,
    export,
    finetune,
    models,
    plan,
    profile,
    routes,
)
from modify.cli._common import fail

try:  # typer 0.2x bundles its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

__all__ = ["app", "main"]

# torchvision scripts a few ops at import; torch 2.14 calls torch.jit.script deprecated. Not ours
# to fix, and not the user's concern.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


class _Group(typer.core.TyperGroup):
    """The root command: a usage error (missing argument, unknown option, a value of the wrong
    type) is one line and exit code 1, as every other user error, instead of click's usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:  # `modify` alone: the help, as click shows it
            e.show()
            result = 2
        except UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "modify"
            fail(f"{e.format_message()} (see `{where} --help`)")
            result = 1
        except typer.Abort:
            fail("aborted")
            result = 1
        except ClickException as e:  # any other error click reports (a file it cannot open, say)
            fail(e.format_message())
            result = 1
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="modify",
    help="Model surgery that turns CNNs into CNN Mixture-of-Depths networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _sub in (
    plan.app,
    convert.app,
    blocks.app,
    finetune.app,
    compare.app,
    routes.app,
    profile.app,
    bench.app,
    export.app,
    models.app,
):
    app.add_typer(_sub)


def main() -> None:
    """Console-script entry point."""
    app()
