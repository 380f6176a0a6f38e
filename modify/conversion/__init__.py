"""The conversion, one module per stage in data-flow order:

    tracing     model -> torch.fx graph with shapes (the one tracer of modify)
    discover    graph -> residual Conv-Blocks (`BlockSite`), with the reason a block cannot convert
    recipe      YAML / dict -> a validated `Recipe`;  families: the default capacity per block family
    plan        sites + recipe (or k / c) -> one `BlockPlan` per block
    surgery     a block's subgraph -> its reduced block at width k (cut, per-layer rules, shrink)
    rewrite     plans -> MoD blocks installed in the model
    init        how the MoD blocks start (scratch, copy, zero, importance)
    modes       blocks whose self.training branch the trace froze
    pipeline    `convert` and `convert_identity`: the stages above in one call
    backbones   the CNN backbone of a segmentation or detection model

Example:
    >>> import torchvision
    >>> from modify.conversion import convert
    >>> [b.name for b in convert(torchvision.models.resnet18(weights=None), input_size=64).converted]
    ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.conversion.backbones import convert_backbone as convert_backbone
    from modify.conversion.pipeline import (
        ConversionResult as ConversionResult,
        convert as convert,
        convert_identity as convert_identity,
        traced_sites as traced_sites,
    )

_LAZY = {
    "ConversionResult": "modify.conversion.pipeline",
    "convert": "modify.conversion.pipeline",
    "convert_identity": "modify.conversion.pipeline",
    "traced_sites": "modify.conversion.pipeline",
    "convert_backbone": "modify.conversion.backbones",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
