"""MobileNetV2-MoD and MobileNetV2-MoD-L (Cakaj et al. 2024, Table 2 and Table 6).

Inside every stage [t, c, n, s], the blocks at odd indices become MoD blocks with k = C // 16
(c = 16 for MobileNetV2); stages with a single block get none. The reduced block is torchvision's
inverted residual at width k with the stage's expansion ratio t (1x1 k -> tk, depthwise 3x3,
linear 1x1 tk -> k, identity shortcut).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2

from modify.layers import BlockForm, MoDBlock, MoDConfig, capacity_to_k

__all__ = ["mobilenet_v2_mod", "reduced_inverted_residual", "MOBILENET_V2_SETTING", "MOBILENET_V2_L_SETTING"]

# [t, c, n, s] per stage: torchvision's (= the paper's "standard") and the paper's MoD-L widths.
MOBILENET_V2_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
MOBILENET_V2_L_SETTING = [
    [1, 16, 1, 1],
    [6, 32, 2, 2],
    [6, 64, 3, 2],
    [6, 96, 4, 2],
    [6, 128, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def reduced_inverted_residual(k: int, expand_ratio: int) -> InvertedResidual:
    """torchvision's inverted residual at width k, stride 1, so it keeps its identity shortcut."""
    return InvertedResidual(k, k, 1, expand_ratio)


def _init_like_mobilenet(module: nn.Module) -> None:
    # The initialisation torchvision's MobileNetV2.__init__ gives its own layers.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def mobilenet_v2_mod(
    *, large: bool = False, c: int = 16, config: MoDConfig | None = None, **kwargs: Any
) -> MobileNetV2:
    """Builds MobileNetV2-MoD, or MobileNetV2-MoD-L with ``large=True``.

    Example:
        >>> model = mobilenet_v2_mod()
        >>> sum(type(m).__name__ == "MoDBlock" for m in model.features)
        6
    """
    config = config or MoDConfig()
    setting = MOBILENET_V2_L_SETTING if large else MOBILENET_V2_SETTING
    model = MobileNetV2(inverted_residual_setting=setting, **kwargs)
    position = 1  # features[0] is the stem
    for t, channels, n, _ in setting:
        k = capacity_to_k(channels, c)
        for i in range(n):
            if i % 2 == 1:
                reduced = reduced_inverted_residual(k, t)
                _init_like_mobilenet(reduced)
                if config.form is BlockForm.BRANCH:
                    block = MoDBlock.from_config(channels, k, reduced.conv, config)
                else:
                    block = MoDBlock.from_config(channels, k, reduced, config)
                model.features[position + i] = block
        position += n
    return model
