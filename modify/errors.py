"""Typed errors of `modify`. Each message names the value, what was expected, and the next step."""

from __future__ import annotations

__all__ = [
    "ModifyError",
    "UnknownModelError",
    "RecipeError",
    "TraceError",
    "NoBlocksError",
    "ConversionError",
    "CheckpointError",
    "OutputPathError",
    "ChoiceError",
    "ExportError",
    "PlanError",
    "SurgeryError",
    "SplitError",
    "first_line",
]


class ModifyError(Exception):
    """Base class of every error `modify` raises on purpose; the CLI prints it as one line."""


class UnknownModelError(ModifyError, KeyError):
    """A model name that is neither a `modify` architecture nor a torchvision model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RecipeError(ModifyError, ValueError):
    """A recipe that does not validate: the message names the YAML path and the value."""


class TraceError(ModifyError, RuntimeError):
    """torch.fx could not trace a module; the message names it and suggests a leaf."""


class NoBlocksError(ModifyError, ValueError):
    """The model holds no residual Conv-Block that could be converted."""


class ConversionError(ModifyError, ValueError):
    """A conversion option that cannot apply to the model (k too large, say)."""


class CheckpointError(ModifyError, ValueError):
    """A checkpoint that cannot be read safely or was not written by `modify`."""


class OutputPathError(CheckpointError):
    """An output path that cannot be written: its folder is a file, cannot be made or is read-only,
    or the file exists. A `CheckpointError`, as `save` raised for an existing file before."""


class ChoiceError(ModifyError, ValueError):
    """A value outside a closed set of choices (an option's string); the message lists the valid ones."""


class PlanError(ModifyError, ValueError):
    """A speed-up the planner cannot plan for (below 1, or faster than any choice reaches), or data
    it cannot plan with; the message says what is reachable."""


class ExportError(ModifyError, RuntimeError):
    """The model cannot be exported, or the export does not reproduce PyTorch's output."""


# Internal: a block that cannot be rebuilt at width k. Never shown as an error: the conversion
# skips the block and reports the message as the block's reason.


class SurgeryError(Exception):
    """A block that cannot be shrunk; the message is the reason the block report shows."""


class SplitError(SurgeryError):
    """A channel split whose parts do not fit the reduced width (`modify.conversion.surgery.literals`)."""


def first_line(error: BaseException, *, limit: int | None = None, typed: bool = False) -> str:
    """The first line of ``error``'s message, stripped and cut to ``limit`` characters, for a
    message of one line about it; ``typed`` puts the exception's type in front. An empty
    message gives the type's name alone (never an IndexError).

    Example:
        >>> first_line(ValueError("  bad value\\nthe traceback of a nested error"))
        'bad value'
        >>> first_line(ValueError("bad value"), typed=True), first_line(RuntimeError(""))
        ('ValueError: bad value', 'RuntimeError')
    """
    lines = str(error).strip().splitlines()
    text = lines[0][:limit] if lines else ""
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text}" if typed else text
