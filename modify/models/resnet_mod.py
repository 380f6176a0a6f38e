"""ResNet-MoD (Cakaj et al. 2024, Sec. 4.1, Table 5): torchvision ResNets whose blocks at odd
indices inside every stage are MoD blocks with k = max(1, C // c), c = 64.

Block 0 of each stage (the one that downsamples or changes width) always stays standard, so a
MoD block always has stride 1 and C_in = C_out. The reduced block is torchvision's own block at
width k: a Bottleneck k -> k/4 -> k/4 -> k (the expansion of 4 kept), a BasicBlock k -> k.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from modify.layers import BlockForm, MoDBlock, MoDConfig, capacity_to_k

__all__ = [
    "resnet_mod",
    "reduced_basic_block",
    "reduced_bottleneck",
    "RESNET_MOD_LAYERS",
]

# Blocks per stage of the paper's ResNet-MoD models (Table 5).
RESNET_MOD_LAYERS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    26: (BasicBlock, [2, 2, 3, 4]),
    34: (BasicBlock, [3, 4, 6, 3]),
    42: (BasicBlock, [3, 3, 6, 6]),
    50: (Bottleneck, [3, 4, 6, 3]),
    75: (Bottleneck, [3, 4, 14, 3]),
    86: (Bottleneck, [3, 4, 18, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def reduced_basic_block(k: int) -> BasicBlock:
    """torchvision's BasicBlock at width k: 3x3 k -> k, 3x3 k -> k, identity shortcut, ReLU."""
    return BasicBlock(k, k)


def reduced_bottleneck(k: int) -> Bottleneck:
    """torchvision's Bottleneck at width k: 1x1 k -> k/4, 3x3, 1x1 k/4 -> k, identity shortcut.

    The inner width is max(1, k // 4); where 4 does not divide k the last 1x1 still returns k
    channels, so the identity shortcut holds.
    """
    inner = max(1, k // 4)
    block = Bottleneck(k, inner)
    if inner * Bottleneck.expansion != k:
        block.conv3 = nn.Conv2d(inner, k, kernel_size=1, bias=False)
        block.bn3 = nn.BatchNorm2d(k)
    return block


def _branch_of(block: BasicBlock | Bottleneck) -> nn.Sequential:
    """The residual branch of a torchvision ResNet block, without its skip-add and final ReLU."""
    if isinstance(block, Bottleneck):
        parts = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2, nn.ReLU(inplace=True)]
        return nn.Sequential(*parts, block.conv3, block.bn3)
    return nn.Sequential(block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2)


def _init_like_resnet(module: nn.Module) -> None:
    # The initialisation torchvision's ResNet.__init__ gives its own layers.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def resnet_mod(depth: int, *, c: int = 64, config: MoDConfig | None = None, **kwargs: Any) -> ResNet:
    """Builds the paper's ResNet{depth}-MoD.

    Args:
        depth: one of 18, 26, 34, 42, 50, 75, 86, 101, 152.
        c: the capacity; k = max(1, C // c) in every MoD block (the paper: 64).
        config: how the MoD blocks are built (form, fusion slot, ...); the paper's defaults if None.
        **kwargs: passed to torchvision's ``ResNet`` (``num_classes``, ``zero_init_residual``, ...).

    Example:
        >>> model = resnet_mod(50)
        >>> type(model.layer3[1]).__name__, model.layer3[1].k
        ('MoDBlock', 16)
    """
    if depth not in RESNET_MOD_LAYERS:
        raise ValueError(
            f"depth={depth} is not a ResNet-MoD of the paper; expected one of {sorted(RESNET_MOD_LAYERS)}."
        )
    config = config or MoDConfig()
    block_type, layers = RESNET_MOD_LAYERS[depth]
    make_reduced = reduced_bottleneck if block_type is Bottleneck else reduced_basic_block
    model = ResNet(block_type, layers, **kwargs)
    for stage, planes in zip(
        (model.layer1, model.layer2, model.layer3, model.layer4), (64, 128, 256, 512), strict=True
    ):
        channels = planes * block_type.expansion
        k = capacity_to_k(channels, c)
        for i in range(1, len(stage), 2):
            reduced = make_reduced(k)
            _init_like_resnet(reduced)
            if config.form is BlockForm.BRANCH:
                stage[i] = MoDBlock.from_config(channels, k, _branch_of(reduced), config, post=nn.ReLU(inplace=True))
            else:
                stage[i] = MoDBlock.from_config(channels, k, reduced, config)
    return model
