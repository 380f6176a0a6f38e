"""Loading a user's weights file into a model, safely (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from modify.errors import CheckpointError

__all__ = ["load_state_dict_file", "safe_load"]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "model_state")


def safe_load(path: str | os.PathLike[str], *, what: str, hint: str) -> object:
    """``torch.load(weights_only=True)`` with one-line errors: a missing file, a file holding
    pickled Python objects (refused, nothing in it runs), or anything torch cannot read."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"No {what} at {str(p)!r}; check the path.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{str(p)!r} holds pickled Python objects, which modify refuses to load (nothing in it was run); {hint}"
        ) from e
    except Exception as e:  # zip, EOF and format errors from torch.load
        raise CheckpointError(f"{str(p)!r} is not a readable torch file ({type(e).__name__}).") from e


def load_state_dict_file(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads a state_dict file (or a dict holding one under 'state_dict' / 'model') strictly.

    Raises:
        CheckpointError: the file is missing, holds pickled objects, or does not fit the model.
    """
    p = Path(path)
    data = safe_load(p, what="weights file", hint="save the weights with torch.save(model.state_dict(), path).")
    if isinstance(data, dict) and data.get("format") == "modify.checkpoint":
        raise CheckpointError(f"{str(p)!r} is a modify checkpoint; pass it as MODEL, not as --weights.")
    for key in _NESTED_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{str(p)!r} does not hold a state_dict (a dict of tensors).")
    try:
        model.load_state_dict(data, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(
            f"{str(p)!r} does not fit {type(model).__name__}: {detail[:300]}. "
            "Check the model name and --num-classes."
        ) from e
    return model
