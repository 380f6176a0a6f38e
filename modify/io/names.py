"""How to rebuild a model: import paths (``"package.module:factory"``), the source record
`get_model` and `from_import_path` attach to what they build (`model_source`), and the
architecture such a record names (`build_source`). Building by name lives in `modify.models`
(`get_model`, `list_models`, `timm_model`), re-exported here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modify.errors import ModifyError
from modify.io import provenance
from modify.models import (
    TIMM_PREFIX as TIMM_PREFIX,
    get_model as get_model,
    list_models as list_models,
    timm_model as timm_model,
)

__all__ = ["get_model", "list_models", "from_import_path", "model_source", "build_source", "timm_model", "TIMM_PREFIX"]


def model_source(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model``'s architecture, if `get_model` or `from_import_path` built it."""
    source = provenance.of(model).source
    return None if source is None else dict(source)


def from_import_path(path: str, **kwargs: Any) -> nn.Module:
    """Builds a model from ``"package.module:factory"``, calling ``factory(**kwargs)``.

    Example:
        >>> from_import_path("torchvision.models:resnet18", num_classes=10).fc.out_features
        10
    """
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModifyError(f"{path!r} is not an import path; expected 'package.module:factory'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModifyError(f"Cannot import {module_name!r} for {path!r} ({e}); is it installed or on PYTHONPATH?") from e
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModifyError(f"{module_name!r} has no attribute {attr!r}; expected a factory returning an nn.Module.")
    if callable(factory) and not isinstance(factory, nn.Module) and not isinstance(factory, type(importlib)):
        try:
            model = factory(**kwargs)
        except TypeError as e:
            shown = f" with {kwargs}" if kwargs else " with no arguments"
            raise ModifyError(
                f"{path!r} could not be called{shown} ({e}); expected a factory that builds an nn.Module, "
                "such as 'torchvision.models:resnet18'."
            ) from None
    else:
        model = factory
    if not isinstance(model, nn.Module):
        raise ModifyError(f"{path!r} returned a {type(model).__name__}, not an nn.Module.")
    # How to rebuild its architecture (its `Provenance`); `modify.save` stores it.
    return provenance.attach(model, provenance.Provenance(source={"kind": "import", "name": path, "kwargs": kwargs}))


def build_source(source: dict[str, Any]) -> nn.Module:
    """The architecture a `model_source` record describes, with fresh weights."""
    kwargs = dict(source.get("kwargs") or {})
    if source.get("kind") == "import":
        return from_import_path(source["name"], **kwargs)
    if source.get("kind") == "timm":
        return timm_model(source["name"], **kwargs)
    return get_model(source["name"], **kwargs)
