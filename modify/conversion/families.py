"""The default capacity c of a model, chosen by the family of its residual blocks.

The paper fixes one c per network, "the maximal number of input channels in the first
Conv-Block": c = 64 for every ResNet and c = 16 for MobileNetV2 (Cakaj et al. 2024, Sec. 3.2).
The shipped ``every_other`` recipe says c = 64, which suits ResNets but gives k = 1 to every
24..127-channel block of a MobileNet or EfficientNet. So when `modify.convert` is given neither
a recipe nor k nor c, it asks `default_capacity` for the c of the model's block family:

| family | block classes | c | why |
|---|---|---|---|
| ResNet (ResNeXt, Wide-ResNet, quantizable; timm's Res2Net, ResNeSt, SK/SE/NF-ResNet, ResNet-V2, DarkNet, DLA, CSPNet, Xception) | BasicBlock, Bottleneck, ... | 64 | the paper's value for every ResNet; the first stage has 64 channels |
| RegNet (X and Y) | ResBottleneckBlock | 64 | a ResNet design (Bottleneck with group convs, ReLU after the add); first stages of 24..528 channels |
| MobileNetV2/V3 (quantizable too; timm's MobileNetV4, GhostNet) | InvertedResidual, UniversalInvertedResidual, GhostBottleneck | 16 | the paper's value for MobileNetV2; V3 has the same block and 16..160-channel stages |
| MNASNet | _InvertedResidual | 16 | MobileNetV2's inverted residual, stages of 16..192 channels |
| EfficientNet (V1, V2; timm's DepthwiseSeparableConv, EdgeResidual) | MBConv, FusedMBConv | 16 | MobileNetV2's inverted residual plus SE, stages of 16..640 channels |
| ConvNeXt (timm's V1/V2, InceptionNeXt) | CNBlock, ConvNeXtBlock, MetaNeXtBlock | 16 | its channel-last LayerNorm needs k >= 2 (at k = 1 it outputs a constant); c = 16 gives k = C/16 >= 6 |

This module is pure: block class names in, a number and a sentence out; no torch.

Example:
    >>> choice = default_capacity(["InvertedResidual"] * 10)
    >>> choice.c, choice.family
    (16, 'MobileNet')
    >>> default_capacity(["MyBlock"]) is None
    True
"""  # noqa: E501 (a Markdown table keeps one row per line)

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

__all__ = ["Family", "FAMILIES", "DefaultCapacity", "family_of", "default_capacity"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of residual blocks that shares one default capacity."""

    name: str  # for messages ("ResNet")
    block_types: tuple[str, ...]  # class names of its blocks, as `BlockSite.block_type` holds them
    c: int  # the default capacity: k = max(1, C // c)
    why: str  # the reason, for the conversion report


FAMILIES: tuple[Family, ...] = (
    Family(
        "ResNet",
        (
            "BasicBlock",
            "Bottleneck",
            "QuantizableBasicBlock",
            "QuantizableBottleneck",
            # timm's ResNet relatives: Res2Net, ResNeSt, SK-, SE- and NF-ResNets, pre-activation ResNet-V2,
            # byobnet's and CSPNet's bottlenecks, DarkNet, DLA, aligned Xception
            "Bottle2neck",
            "ResNestBottleneck",
            "SelectiveKernelBasic",
            "SelectiveKernelBottleneck",
            "SEResNetBlock",
            "SEResNetBottleneck",
            "SEResNeXtBottleneck",
            "NormFreeBlock",
            "PreActBasic",
            "PreActBottleneck",
            "BottleneckBlock",
            "DarkBlock",
            "DlaBasic",
            "DlaBottleneck",
            "XceptionModule",
        ),
        64,
        "the paper's c for every ResNet (Sec. 3.2)",
    ),
    Family("RegNet", ("ResBottleneckBlock",), 64, "RegNet's block is a ResNet Bottleneck; the paper's ResNet c"),
    Family(
        "MobileNet",
        (
            "InvertedResidual",
            "QuantizableInvertedResidual",
            # timm's: MobileNetV4's universal block, GhostNet's (stages of 16..160 channels)
            "UniversalInvertedResidual",
            "GhostBottleneck",
        ),
        16,
        "the paper's c for MobileNetV2 (Sec. 3.2); c = 64 would give k = 1 to every block narrower than 128",
    ),
    Family("MNASNet", ("_InvertedResidual",), 16, "MobileNetV2's block, so the paper's MobileNetV2 c"),
    Family(
        "EfficientNet",
        ("MBConv", "FusedMBConv", "DepthwiseSeparableConv", "EdgeResidual"),  # torchvision's; timm's
        16,
        "MobileNetV2's block with SE, so the paper's MobileNetV2 c; "
        "c = 64 would give k = 1 to every block narrower than 128",
    ),
    Family(
        "ConvNeXt",
        ("CNBlock", "ConvNeXtBlock", "MetaNeXtBlock"),  # torchvision's; timm's ConvNeXt (V1, V2), InceptionNeXt
        16,
        "its channel-last LayerNorm needs k >= 2, and c = 16 keeps k = C/16 >= 6 (c = 64 gives k = 1 at 96 channels)",
    ),
)

_BY_TYPE = {block_type: family for family in FAMILIES for block_type in family.block_types}


def family_of(block_type: str) -> Family | None:
    """The family of a block class name, or None for a block `modify` has no default for.

    Example:
        >>> family_of("Bottleneck").c, family_of("inline")
        (64, None)
    """
    return _BY_TYPE.get(block_type)


@dataclasses.dataclass(frozen=True)
class DefaultCapacity:
    """The capacity `default_capacity` picked, and why."""

    c: int  # the capacity
    family: str  # the family it belongs to
    reason: str  # one sentence for the conversion report

    def __str__(self) -> str:
        return self.reason


def default_capacity(block_types: Iterable[str]) -> DefaultCapacity | None:
    """The default c for a model whose convertible blocks have these class names.

    The family of most of the blocks decides (on a tie, the smaller c, which keeps more channels
    per block); blocks of no known family do not vote. None when no block belongs to a known
    family: the caller keeps its own default (the ``every_other`` recipe's c = 64).

    Example:
        >>> default_capacity(["MBConv", "MBConv", "FusedMBConv"]).c
        16
        >>> print(default_capacity(["Bottleneck", "Bottleneck", "InvertedResidual"]))
        c=64, the default for ResNet blocks (BasicBlock, Bottleneck): the paper's c for every ResNet (Sec. 3.2); most of the model's blocks are ResNet blocks (also: MobileNet)
    """  # noqa: E501 (the sentence the example prints is one line)
    votes = collections.Counter(f.name for f in map(family_of, block_types) if f is not None)
    if not votes:
        return None
    by_name = {f.name: f for f in FAMILIES}
    name = max(votes, key=lambda n: (votes[n], -by_name[n].c))
    family = by_name[name]
    types = ", ".join(family.block_types[:2])
    reason = f"c={family.c}, the default for {family.name} blocks ({types}): {family.why}"
    if len(votes) > 1:
        others = ", ".join(sorted(n for n in votes if n != name))
        reason += f"; most of the model's blocks are {family.name} blocks (also: {others})"
    return DefaultCapacity(c=family.c, family=family.name, reason=reason)
