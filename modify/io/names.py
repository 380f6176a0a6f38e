"""Model names -> modules: the paper's MoD architectures and every torchvision model.

Nothing here downloads unless a caller asks for torchvision weights by name; then a failure to
reach the network is reported as such, with the way to load weights from a file instead.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from modify.errors import ModifyError, UnknownModelError
from modify.io import provenance
from modify.models import list_mod_models, mod_model_builder
from modify.conversion.inplace import enable_inplace_fusion

__all__ = ["get_model", "list_models", "from_import_path", "model_source", "build_source",
           "timm_model", "TIMM_PREFIX"]


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def list_models() -> list[str]:
    """Every name `get_model` accepts: the MoD architectures, then torchvision's models."""
    return list_mod_models() + sorted(_torchvision_names())


def get_model(name: str, *, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Builds a model by name, with random weights unless ``weights`` names torchvision weights.

    Args:
        name: a MoD architecture (``"resnet50_mod"``, see `list_models`), a torchvision model
            name (``"resnet50"``) or a timm model as ``"timm:NAME"`` (``"timm:convnext_atto"``,
            random weights; timm must be installed).
        weights: torchvision weights for a torchvision model (``"DEFAULT"``,
            ``"IMAGENET1K_V2"``); these are downloaded, so they need the network.
        **kwargs: passed to the builder (``num_classes=10``, ``c=32``, ...).

    Raises:
        UnknownModelError: the name is neither; the message lists close matches.

    Example:
        >>> get_model("resnet50_mod").layer1[1].k
        4
    """
    if name.startswith(TIMM_PREFIX):
        if weights is not None:
            raise ModifyError(
                f"modify does not download timm weights ({name!r}, weights={weights!r}); save them once with "
                "timm and pass the file: `--weights FILE` (a state_dict, a timm checkpoint or .safetensors)."
            )
        return timm_model(name[len(TIMM_PREFIX) :], **kwargs)
    builder = mod_model_builder(name)
    if builder is not None:
        if weights is not None:
            raise ModifyError(
                f"There are no published weights for {name!r}; build it without weights= and "
                "load a state_dict of your own, or convert a pretrained torchvision model instead."
            )
        model = builder(**kwargs)
        enable_inplace_fusion(model)  # no full-tensor copy in the fusion at inference
        return _tag(model, {"kind": "name", "name": name, "kwargs": kwargs})
    if name not in _torchvision_names():
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model {name!r}.{hint} Run `modify models` to list every name.")
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except OSError as e:  # URLError and friends: torchvision fetches named weights
        raise ModifyError(
            f"Could not download the weights {weights!r} for {name!r} ({e}). Without network access, "
            "build the model without weights and pass a state_dict file (`--weights FILE`)."
        ) from e
    # Rebuilding it needs only the architecture: a checkpoint holds the weights.
    return _tag(model, {"kind": "name", "name": name, "kwargs": kwargs})


TIMM_PREFIX = "timm:"
TIMM_HINT = "pip install timm (or: pip install 'modify[timm]')"


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``: timm's architecture, random weights
    (load yours with `modify.io.weights.load_state_dict_file`); never downloads.

    Raises:
        UnknownModelError: timm has no model of that name; the message lists close ones.
        ModifyError: timm is not installed (with the line that installs it).

    Example:
        >>> timm_model("resnet18", num_classes=10).fc.out_features
        10
    """
    try:
        import timm
    except ImportError:
        raise ModifyError(f"timm:{name} needs timm, which is not installed: {TIMM_HINT}") from None
    known = timm.list_models()
    if name not in known and name.partition(".")[0] not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(f'timm:{c}' for c in close)}?" if close else ""
        raise UnknownModelError(f"timm has no model {name!r}.{hint} `python -c \"import timm; print(timm.list_models())\"` lists them.")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModifyError(f"timm could not build {name!r} with {kwargs} ({e}).") from None
    return _tag(model, {"kind": "timm", "name": name, "kwargs": kwargs})


def _tag(model: nn.Module, source: dict[str, Any]) -> nn.Module:
    """Records how to rebuild ``model``'s architecture (its `Provenance`); `modify.save` stores it."""
    return provenance.attach(model, provenance.Provenance(source=source))


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
    return _tag(model, {"kind": "import", "name": path, "kwargs": kwargs})


def build_source(source: dict[str, Any]) -> nn.Module:
    """The architecture a `model_source` record describes, with fresh weights."""
    kwargs = dict(source.get("kwargs") or {})
    if source.get("kind") == "import":
        return from_import_path(source["name"], **kwargs)
    if source.get("kind") == "timm":
        return timm_model(source["name"], **kwargs)
    return get_model(source["name"], **kwargs)
