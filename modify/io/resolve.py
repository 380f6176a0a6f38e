"""What a command's MODEL argument names -> a module: a checkpoint file, ``timm:NAME``, an
import path, or a model name. Sits above `names` and `checkpoint` (each of which knows nothing
of the other's files).

Example:
    >>> model, label = resolve_model("resnet18", num_classes=10)
    >>> label, model.fc.out_features
    ('resnet18', 10)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modify.errors import ModifyError
from modify.io.names import TIMM_PREFIX, from_import_path, get_model

__all__ = ["resolve_model"]


def resolve_model(spec: str | nn.Module, **kwargs: Any) -> tuple[nn.Module, str]:
    """What the CLI's MODEL argument names -> (module, label).

    Accepts a module as it is, a checkpoint file written by `modify.save`, ``timm:NAME``, an
    import path ``package.module:factory``, or a model name (see `get_model`).
    """
    import os

    if isinstance(spec, nn.Module):
        return spec, type(spec).__name__
    if os.path.isfile(spec):
        from modify.io.checkpoint import load

        return load(spec), os.path.basename(spec)
    if spec.startswith(TIMM_PREFIX):
        return get_model(spec, **kwargs), spec
    if ":" in spec:
        return from_import_path(spec, **kwargs), spec
    if spec.endswith((".pt", ".pth", ".ckpt")):
        raise ModifyError(
            f"No checkpoint file at {spec!r}; check the path (MODEL is a file, a model name or package.module:factory)."
        )
    return get_model(spec, **kwargs), spec
