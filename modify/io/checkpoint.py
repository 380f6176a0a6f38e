"""Saving and loading converted models without pickling a module.

A checkpoint is a plain dict, readable with ``torch.load(weights_only=True)``:

    format          "modify.checkpoint", and its version (3)
    modify_version  the version that wrote it
    source          how to rebuild the base architecture: a model name or an import path, with kwargs
    steps           every surgery since, in order (`modify.io.provenance.Step`): a conversion or a
                    plan (its resolved recipe, example input shape, leaf modules), a deletion (the
                    blocks), a pruning (the changed layer shapes)
    state_dict      every weight and buffer of the model

Loading rebuilds the base architecture, replays the steps (`modify.io.provenance.replay`), and
loads the state_dict strictly, so nothing in the file is executed; this module names no method.
Checkpoints of versions 1 and 2 ("conversion" and "baseline" entries) still load. Writes are
atomic: a temporary file in the same folder, renamed over the target, and an existing file is only
replaced when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modify._version import __version__
from modify.errors import CheckpointError, ModifyError, first_line
from modify.io import provenance
from modify.io.files import atomic_write
from modify.io.names import build_source, model_source
from modify.io.weights import safe_load
from modify.layers import MoDConfig

__all__ = ["save", "load", "read_checkpoint", "checkpoint_provenance", "FORMAT", "FORMAT_VERSION"]

FORMAT = "modify.checkpoint"
FORMAT_VERSION = 3  # 3: "source" + "steps"; 2 had "conversion" + "baseline", 1 "conversion" alone


def _plain(value: Any) -> Any:
    """Builder kwargs as plain data (a MoDConfig becomes a tagged dict)."""
    if isinstance(value, MoDConfig):
        return {"__mod_config__": value.as_dict()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise CheckpointError(
        f"cannot store the builder argument {value!r} ({type(value).__name__}) in a checkpoint; use plain values."
    )


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__mod_config__"}:
            return MoDConfig(**value["__mod_config__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def save(result_or_model: Any, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Writes a converted model (a `ConversionResult` or its ``.model``) as a checkpoint.

    The model must have been built by `modify.get_model` / an import path (the CLI does both) so
    the checkpoint can say how to rebuild it.

    Example:
        >>> import modify, tempfile, os
        >>> result = modify.convert(modify.get_model("resnet18", num_classes=10), input_size=64)
        >>> path = modify.save(result, os.path.join(tempfile.mkdtemp(), "r18_mod.pt"))
        >>> type(modify.load(path).layer1[1]).__name__
        'MoDBlock'
    """
    model = getattr(result_or_model, "model", result_or_model)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save() takes a ConversionResult or an nn.Module, not {type(result_or_model).__name__}.")
    source = model_source(model)
    if source is None:
        raise CheckpointError(
            "this model does not say how to rebuild its architecture; build it with modify.get_model(name) "
            "or modify.io.names.from_import_path('package.module:factory') before converting."
        )
    history = provenance.of(model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modify_version": __version__,
        "source": {"kind": source["kind"], "name": source["name"], "kwargs": _plain(source.get("kwargs") or {})},
        "steps": [_plain(step.as_dict()) for step in history.steps],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True``: a pickled object is refused unrun."""
    p = Path(path)
    data = safe_load(
        p,
        what="checkpoint file",
        hint="save models with `modify.save` / `modify convert -o`, or load a plain state_dict with --weights.",
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a modify checkpoint (no 'format': {FORMAT!r}); a plain state_dict loads with --weights."
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} was written by a newer modify ({data.get('modify_version')}); upgrade modify."
        )
    return data


def checkpoint_provenance(data: dict[str, Any]) -> provenance.Provenance:
    """The history a checkpoint's dict describes, whatever its version."""
    source = dict(data["source"])
    source["kwargs"] = _unplain(source.get("kwargs") or {})
    if "steps" in data:
        steps = tuple(provenance.Step.from_dict(s) for s in data["steps"])
    else:  # versions 1 and 2: a conversion, then a baseline
        steps = ()
        if data.get("conversion") is not None:
            steps += (provenance.Step("convert", dict(data["conversion"])),)
        baseline = dict(data.get("baseline") or {})
        if baseline:
            steps += (provenance.Step(str(baseline.pop("method", "")), baseline),)
    return provenance.Provenance(source, steps)


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuilds the model a checkpoint describes and loads its weights (eval mode)."""
    data = read_checkpoint(path)
    history = checkpoint_provenance(data)
    model = build_source(dict(history.source or {}))
    for step in history.steps:
        try:
            model = provenance.replay(model, step)
        except ModifyError as e:
            raise CheckpointError(f"{str(path)!r} cannot be rebuilt ({step.method} step): {e}") from None
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{str(path)!r} does not match the model it describes: {first_line(e)}") from e
    return model.eval()
