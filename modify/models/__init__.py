"""The paper's MoD architectures, built directly, under registered names (``resnet75_mod``, ...),
and the registry that builds every model by name (`get_model`: these, torchvision's, ``timm:NAME``).

Example:
    >>> from modify.models import get_model
    >>> get_model("resnet18", num_classes=10).fc.out_features
    10
"""

from __future__ import annotations

from functools import partial

from modify.models.mobilenetv2_mod import mobilenet_v2_mod
from modify.models.registry import (
    PAPER_BASELINES as PAPER_BASELINES,
    TIMM_PREFIX as TIMM_PREFIX,
    get_model as get_model,
    list_mod_models as list_mod_models,
    list_models as list_models,
    mod_model_builder as mod_model_builder,
    register_model as register_model,
    timm_model as timm_model,
)
from modify.models.resnet_mod import RESNET_MOD_LAYERS, resnet_mod
from modify.models.vgg_mod import vgg_bn, vgg_bn_mod

__all__ = [
    "register_model",
    "list_mod_models",
    "mod_model_builder",
    "PAPER_BASELINES",
    "get_model",
    "list_models",
    "timm_model",
    "TIMM_PREFIX",
]

_RESNET_BASELINE = {
    18: "resnet18",
    26: "resnet18",
    34: "resnet34",
    42: "resnet34",
    50: "resnet50",
    75: "resnet50",
    86: "resnet50",
    101: "resnet101",
    152: "resnet101",
}
for _depth in RESNET_MOD_LAYERS:
    register_model(f"resnet{_depth}_mod", partial(resnet_mod, _depth), baseline=_RESNET_BASELINE[_depth])
register_model("mobilenet_v2_mod", mobilenet_v2_mod, baseline="mobilenet_v2")
register_model("mobilenet_v2_mod_l", partial(mobilenet_v2_mod, large=True), baseline="mobilenet_v2")
for _depth in (16, 19):
    register_model(f"vgg{_depth}_bn_cifar", partial(vgg_bn, _depth))
    register_model(f"vgg{_depth}_bn_mod_cifar", partial(vgg_bn_mod, _depth), baseline=f"vgg{_depth}_bn_cifar")
