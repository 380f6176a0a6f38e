"""What every command shares: turning `ModifyError` into one line and exit code 1, and
resolving the MODEL argument."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from modify.layers.options import Init

F = TypeVar("F", bound=Callable[..., Any])


# Options every command that takes a MODEL shares.
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Your weights for MODEL: a state_dict, a training checkpoint (state_dict "
        "/ model / model_state_dict keys, module. prefixes) or .safetensors.",
    ),
]
ClassesOpt = Annotated[
    int | None, typer.Option("--num-classes", help="Classes of the model's head (a MODEL given by name).", min=1)
]


def fail(message: str) -> typer.Exit:
    """Prints ``error: message`` on stderr and returns the exit to raise."""
    from modify.cli.render import error_console

    error_console().print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


# modify.deploy.engines.Engine, without importing torch (a test keeps the two equal)
ENGINES = ("eager", "compile", "onnxruntime", "aoti")
ENGINE_HELP = "Where the model runs: eager, compile (torch.compile), onnxruntime or aoti (an AOTInductor package)."

INITS = tuple(i.value for i in Init)  # modify.layers.options imports no torch
INIT_HELP = "How the MoD blocks start: scratch (the paper), copy (the original's weights), zero, importance."


def parse_init(value: str | None) -> str | None:
    """``--init`` of either command: one of `INITS` (or None: leave the blocks as they are)."""
    if value is None:
        return None
    if value not in INITS:
        raise fail(f"--init {value!r} is not one of {', '.join(INITS)}.")
    return value


def check_output(path: Any, *, force: bool = False, kind: str = "file", option: str = "-o") -> None:
    """Refuses, before any work, an output path that cannot be written (`modify.io.files.check_output_path`):
    one line that names the path and the option to change."""
    from modify.errors import ModifyError
    from modify.io.files import check_output_path

    try:
        check_output_path(path, force=force, kind=kind, option=option)  # type: ignore[arg-type]
    except ModifyError as e:
        raise fail(str(e)) from None


def user_errors(func: F) -> F:
    """Decorates a command: a `ModifyError` (bad input) ends it with one line, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modify.errors import ModifyError

        try:
            return func(*args, **kwargs)
        except ModifyError as e:
            raise fail(str(e)) from None

    return wrapper  # type: ignore[return-value]


def quiet_torch_logs() -> None:
    """torch.utils.benchmark warns on import that this CPU machine has no CUDA runtime."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def load_model(spec: str, *, num_classes: int | None = None) -> tuple[Any, str]:
    """MODEL argument -> (module, label)."""
    from modify.io.resolve import resolve_model

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return resolve_model(spec, **kwargs)


def parse_k(value: str | None) -> int | float | None:
    """``-k 16`` is a channel count, ``-k 0.25`` a fraction of each block's width."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise fail(f"-k {value!r} is neither a channel count (16) nor a fraction of the width (0.25).") from None


def load_base(spec: str, *, weights: str | None, num_classes: int | None) -> tuple[Any, str]:
    """MODEL (+ --weights FILE) -> (module, label) for conversion."""
    module, label = load_model(spec, num_classes=num_classes)
    if weights is not None:
        from modify.io.weights import load_state_dict_file

        load_state_dict_file(module, weights)
    return module, label


# -- modify convert and modify blocks

RecipeOpt = Annotated[
    str | None, typer.Option("--recipe", "-r", help="A recipe file or shipped name (every_other, all, late_stages).")
]
KOpt = Annotated[
    str | None, typer.Option("-k", help="Channels per converted block (16) or a fraction of its width (0.25).")
]
COpt = Annotated[int | None, typer.Option("-c", help="The paper's capacity: k = max(1, C // c).", min=1)]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Full skip reasons in the table instead of below it.")
]
SizeOpt = Annotated[int, typer.Option("--input-size", help="Input height and width for tracing and MACs.", min=8)]
LeafOpt = Annotated[
    list[str] | None, typer.Option("--leaf", help="A module (qualified name) fx must not trace into; repeatable.")
]


def run_conversion(model, recipe, k, c, weights, num_classes, input_size, leaf, init="scratch"):
    """The conversion `modify convert` and `modify blocks` run: (original, result, label)."""
    from modify.conversion.pipeline import convert as convert_model

    if sum(v is not None for v in (recipe, k, c)) > 1:
        raise fail("give at most one of --recipe, -k and -c.")
    original, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
    result = convert_model(
        original, recipe=recipe, k=parse_k(k), c=c, input_size=input_size, leaf_modules=tuple(leaf or ()), init=init
    )
    return original, result, label
