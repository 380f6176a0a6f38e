"""Saving and loading converted models without pickling a module.

A checkpoint is a plain dict, readable with ``torch.load(weights_only=True)``:

    format          "modify.checkpoint", and its version
    modify_version  the version that wrote it
    source          how to rebuild the base architecture: a model name or an import path, with kwargs
    conversion      the resolved recipe, the initialisation, the example input shape, the leaf
                    modules; None for a model saved without conversion
    baseline        for the baselines of `modify.baselines`: the deleted blocks ({"method":
                    "delete", ...}) or the pruned layer shapes ({"method": "prune", ...}); else None
    state_dict      every weight and buffer of the converted model

Loading rebuilds the base architecture, replays the conversion, and loads the state_dict
strictly, so nothing in the file is executed. Writes are atomic: a temporary file in the same
folder, renamed over the target, and an existing file is only replaced when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modify._version import __version__
from modify.errors import CheckpointError, ModifyError
from modify.layers import MoDConfig
from modify.io.weights import safe_load
from modify.io.files import atomic_write
from modify.io.names import build_source, model_source

__all__ = ["save", "load", "read_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "modify.checkpoint"
FORMAT_VERSION = 2  # 2 added "baseline"; a checkpoint without one is still written as version 1
CONVERSION_ATTRIBUTE = "modify_conversion"
# Set by modify.baselines.delete_blocks / prune_channels (their modules import torch_pruning lazily,
# so the names are spelled here rather than imported).
DELETION_ATTRIBUTE = "modify_deletion"
PRUNING_ATTRIBUTE = "modify_pruning"


def _baseline(model: nn.Module) -> dict[str, Any] | None:
    if hasattr(model, DELETION_ATTRIBUTE):
        return {"method": "delete", **getattr(model, DELETION_ATTRIBUTE)}
    if hasattr(model, PRUNING_ATTRIBUTE):
        return {"method": "prune", **getattr(model, PRUNING_ATTRIBUTE)}
    return None


def _replay_baseline(model: nn.Module, baseline: dict[str, Any]) -> nn.Module:
    method = baseline.get("method")
    if method == "delete":
        from modify.baselines.delete import delete_blocks

        return delete_blocks(model, blocks=baseline["blocks"], example_inputs=torch.zeros(baseline["input_shape"]),
                             leaf_modules=tuple(baseline.get("leaf_modules") or ())).model  # fmt: skip
    if method == "prune":
        from modify.baselines.prune import reshape_like

        return reshape_like(model, baseline)
    raise CheckpointError(f"the checkpoint's baseline method {method!r} is not known to this modify; upgrade modify.")


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
    raise CheckpointError(f"cannot store the builder argument {value!r} ({type(value).__name__}) in a checkpoint; use plain values.")


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
    baseline = _baseline(model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if baseline is not None else 1,  # older readers still read plain ones
        "modify_version": __version__,
        "source": {"kind": source["kind"], "name": source["name"], "kwargs": _plain(source.get("kwargs") or {})},
        "conversion": getattr(model, CONVERSION_ATTRIBUTE, None),
        "baseline": baseline,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True``: a pickled object is refused unrun."""
    p = Path(path)
    data = safe_load(
        p, what="checkpoint file",
        hint="save models with `modify.save` / `modify convert -o`, or load a plain state_dict with --weights.",
    )  # fmt: skip
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a modify checkpoint (no 'format': {FORMAT!r}); a plain state_dict loads with --weights."
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(p)!r} was written by a newer modify ({data.get('modify_version')}); upgrade modify.")
    return data


def _replay_conversion(model: nn.Module, conversion: dict[str, Any], path: str | os.PathLike[str]) -> nn.Module:
    """The recorded conversion, run again on the rebuilt architecture (its weights come after);
    a ``module`` entry (`modify.conversion.backbones.convert_backbone`) converts that submodule only."""
    from modify.conversion.pipeline import convert
    from modify.conversion.tracing import leaf_from_record

    try:
        leaves = tuple(leaf_from_record(r) for r in conversion.get("leaf_modules") or ())
    except ModifyError as e:
        raise CheckpointError(f"{str(path)!r} cannot be rebuilt: {e}") from None
    part_name = conversion.get("module")
    part = model.get_submodule(part_name) if part_name else model
    converted = convert(
        part, recipe=conversion["recipe"], example_inputs=torch.zeros(conversion["input_shape"]), leaf_modules=leaves,
    ).model  # fmt: skip
    if not part_name:
        return converted
    model.set_submodule(part_name, converted)
    model.modify_conversion = conversion
    return model


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuilds the model a checkpoint describes and loads its weights (eval mode)."""
    data = read_checkpoint(path)
    source = dict(data["source"])
    source["kwargs"] = _unplain(source.get("kwargs") or {})
    model = build_source(source)
    conversion = data.get("conversion")
    if conversion is not None:
        model = _replay_conversion(model, conversion, path)
    if data.get("baseline") is not None:
        model = _replay_baseline(model, data["baseline"])
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{str(path)!r} does not match the model it describes: {str(e).splitlines()[0]}") from e
    return model.eval()
