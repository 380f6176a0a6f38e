"""The paper's MoD architectures, built directly, under registered names (``resnet75_mod``, ...).

Use `modify.get_model`, which also accepts every torchvision model name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from functools import partial

from torch import nn

from modify.models.mobilenetv2_mod import mobilenet_v2_mod
from modify.models.resnet_mod import RESNET_MOD_LAYERS, resnet_mod
from modify.models.vgg_mod import vgg_bn, vgg_bn_mod

__all__ = ["register_model", "list_mod_models", "mod_model_builder", "PAPER_BASELINES"]

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
    return _REGISTRY.get(name)


_RESNET_BASELINE = {18: "resnet18", 26: "resnet18", 34: "resnet34", 42: "resnet34", 50: "resnet50",
                    75: "resnet50", 86: "resnet50", 101: "resnet101", 152: "resnet101"}  # fmt: skip
for _depth in RESNET_MOD_LAYERS:
    register_model(f"resnet{_depth}_mod", partial(resnet_mod, _depth), baseline=_RESNET_BASELINE[_depth])
register_model("mobilenet_v2_mod", mobilenet_v2_mod, baseline="mobilenet_v2")
register_model("mobilenet_v2_mod_l", partial(mobilenet_v2_mod, large=True), baseline="mobilenet_v2")
for _depth in (16, 19):
    register_model(f"vgg{_depth}_bn_cifar", partial(vgg_bn, _depth))
    register_model(f"vgg{_depth}_bn_mod_cifar", partial(vgg_bn_mod, _depth), baseline=f"vgg{_depth}_bn_cifar")
