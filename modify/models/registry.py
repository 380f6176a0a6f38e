"""The model registry, as torchvision's ``models/_api.py`` and timm's ``_registry.py`` keep
theirs: the paper's MoD architectures registered by name (`register_model`), and `get_model`,
which builds those, every torchvision model and ``timm:NAME`` by name.

Nothing here downloads unless a caller asks for torchvision weights by name; then a failure to
reach the network is reported as such, with the way to load weights from a file instead.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from modify.conversion.inplace import enable_inplace_fusion
from modify.errors import ModifyError, UnknownModelError
from modify.io import provenance

__all__ = [
    "register_model",
    "list_mod_models",
    "mod_model_builder",
    "PAPER_BASELINES",
    "get_model",
    "list_models",
    "timm_model",
    "TIMM_PREFIX",
    "TIMM_HINT",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# The baseline the paper times each architecture against (Sec. 4).
PAPER_BASELINES: dict[str, str] = {}


def register_model(name: str, builder: Callable[..., nn.Module], *, baseline: str | None = None) -> None:
    """Adds a builder under ``name``; a name already taken is refused."""
    if name in _REGISTRY:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = builder
    if baseline is not None:
        PAPER_BASELINES[name] = baseline


def list_mod_models(pattern: str = "*") -> list[str]:
    """The registered names matching a glob, sorted.

    Example:
        >>> list_mod_models("resnet1*")
        ['resnet101_mod', 'resnet152_mod', 'resnet18_mod']
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def mod_model_builder(name: str) -> Callable[..., nn.Module] | None:
    """The builder registered under ``name``; None for a name no one registered."""
    return _REGISTRY.get(name)


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
        return provenance.attach(model, provenance.Provenance(source={"kind": "name", "name": name, "kwargs": kwargs}))
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
    return provenance.attach(model, provenance.Provenance(source={"kind": "name", "name": name, "kwargs": kwargs}))


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
        raise UnknownModelError(
            f'timm has no model {name!r}.{hint} `python -c "import timm; print(timm.list_models())"` lists them.'
        )
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModifyError(f"timm could not build {name!r} with {kwargs} ({e}).") from None
    return provenance.attach(model, provenance.Provenance(source={"kind": "timm", "name": name, "kwargs": kwargs}))
