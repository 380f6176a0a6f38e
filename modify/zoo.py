"""Model names -> modules: the paper's MoD architectures and every torchvision model.

Nothing here downloads unless a caller asks for torchvision weights by name; then a failure to
reach the network is reported as such, with the way to load weights from a file instead.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from modify.errors import ModifyError, UnknownModelError
from modify.models import list_mod_models, mod_model_builder

__all__ = ["get_model", "list_models", "is_known_model", "resolve_model"]


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def list_models() -> list[str]:
    """Every name `get_model` accepts: the MoD architectures, then torchvision's models."""
    return list_mod_models() + sorted(_torchvision_names())


def is_known_model(name: str) -> bool:
    return mod_model_builder(name) is not None or name in _torchvision_names()


def get_model(name: str, *, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Builds a model by name, with random weights unless ``weights`` names torchvision weights.

    Args:
        name: a MoD architecture (``"resnet50_mod"``, see `list_models`) or a torchvision model
            name (``"resnet50"``).
        weights: torchvision weights for a torchvision model (``"DEFAULT"``,
            ``"IMAGENET1K_V2"``); these are downloaded, so they need the network.
        **kwargs: passed to the builder (``num_classes=10``, ``c=32``, ...).

    Raises:
        UnknownModelError: the name is neither; the message lists close matches.

    Example:
        >>> get_model("resnet50_mod").layer1[1].k
        4
    """
    builder = mod_model_builder(name)
    if builder is not None:
        if weights is not None:
            raise ModifyError(
                f"There are no published weights for {name!r}; build it without weights= and "
                "load a state_dict of your own, or convert a pretrained torchvision model instead."
            )
        return builder(**kwargs)
    if name not in _torchvision_names():
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model {name!r}.{hint} Run `modify models` to list every name.")
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except OSError as e:  # URLError and friends: torchvision fetches named weights
        raise ModifyError(
            f"Could not download the weights {weights!r} for {name!r} ({e}). Without network access, "
            "build the model without weights and pass a state_dict file (`--weights FILE`)."
        ) from e


def resolve_model(spec: str | nn.Module, **kwargs: Any) -> tuple[nn.Module, str]:
    """What the CLI's MODEL argument names -> (module, label).

    Accepts a module as it is, or a model name (see `get_model`).
    """
    if isinstance(spec, nn.Module):
        return spec, type(spec).__name__
    return get_model(spec, **kwargs), spec
