"""Loading a user's weights file into a model, safely (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from modify.errors import CheckpointError

__all__ = ["load_state_dict_file", "safe_load", "first_mismatch"]

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


def _unwrap(data: object) -> object:
    """The state_dict inside the containers training scripts write: ``{"state_dict": ...}``,
    ``{"model": ...}``, ``{"model_state_dict": ...}`` (and timm's ``state_dict_ema`` beside it)."""
    for key in _NESTED_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return data[key]
    return data


_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel; torch.compile


def _strip_prefixes(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Keys without the wrapper prefixes every key carries and the model's own keys lack."""
    own = model.state_dict().keys()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def first_mismatch(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """The first key of ``state`` that does not fit ``model``, in words; None when all fit.

    Example:
        >>> first_mismatch({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, nn.Linear(3, 4))
        "'weight' has shape (2, 3) in the file and (4, 3) in the model"
    """
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            return f"{key!r} is in the file but not in the model"
        if tuple(own[key].shape) != tuple(value.shape):
            return f"{key!r} has shape {tuple(value.shape)} in the file and {tuple(own[key].shape)} in the model"
    missing = [key for key in own if key not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"{missing[0]!r}{more} is in the model but not in the file"
    return None


def _read(p: Path) -> object:
    if p.suffix == ".safetensors":  # timm's and the Hugging Face hub's format
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{str(p)!r} is a safetensors file; install it with: pip install safetensors"
            ) from None
        try:
            return load_file(str(p))
        except Exception as e:
            raise CheckpointError(f"{str(p)!r} is not a readable safetensors file ({type(e).__name__}).") from e
    return safe_load(p, what="weights file", hint="save the weights with torch.save(model.state_dict(), path).")


def load_state_dict_file(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads a user's weights file into ``model``, strictly.

    Accepts a plain ``state_dict`` (``torch.save(model.state_dict(), f)``), a dict holding one under
    ``state_dict`` / ``model`` / ``model_state_dict`` / ``model_state`` (training scripts, timm's
    train.py), keys prefixed ``module.`` (DDP) or ``_orig_mod.`` (torch.compile), and
    ``.safetensors`` files (timm, the Hugging Face hub).

    Raises:
        CheckpointError: the file is missing, holds pickled objects, or does not fit the model;
            the message names the first key that does not fit.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save({"state_dict": {f"module.{k}": v for k, v in nn.Linear(3, 4).state_dict().items()}}, path)
        >>> load_state_dict_file(nn.Linear(3, 4), path).out_features
        4
    """
    p = Path(path)
    data = _unwrap(_read(p))
    if isinstance(data, dict) and data.get("format") == "modify.checkpoint":
        raise CheckpointError(f"{str(p)!r} is a modify checkpoint; pass it as MODEL, not as --weights.")
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{str(p)!r} does not hold a state_dict (a dict of tensors).")
    state = _strip_prefixes(data, model)
    problem = first_mismatch(state, model)
    if problem is not None:
        raise CheckpointError(
            f"{str(p)!r} does not fit {type(model).__name__}: {problem}. Check the model name and --num-classes."
        )
    model.load_state_dict(state, strict=True)
    return model
