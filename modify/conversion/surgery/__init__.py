"""Building the width-k copy of a residual block, layer by layer.

A discovered block is cut out of the traced graph (its residual branch, and the element-wise
operations that follow its skip-add), copied, and every channel dimension in it is scaled by
k / C: the block's own width C becomes k, an inner width d becomes max(1, round(d * k / C)). So
a ResNet Bottleneck 256 -> 64 -> 256 at k = 4 becomes 4 -> 1 -> 4 (the paper's reduced block),
a MobileNetV2 block with expansion 6 keeps its ratio (k -> 6k -> k), and an SE squeeze of width s
becomes max(1, round(s * k / C)).

Shrinking is driven by shapes: the copy is run once, layer by layer, on a (1, k, H, W) input, and
each layer is rebuilt for the input it actually receives (its input width) and the scaled width
it produces (its output width). Groups follow the width (a depthwise convolution stays
depthwise), dilation, padding and strides are kept, a parameter read through ``get_attr``
(ConvNeXt's layer scale, shape (C, 1, 1)) is sliced to the shape its consumer broadcasts
against, and functional layers (``F.layer_norm`` with a constant normalized shape, as
torchvision's LayerNorm2d traces to; ``F.conv2d(x, self.weight)``) get their constants and
parameters rewritten the same way.

Each module type has a shrinker in `SHRINKERS`, each functional layer a rule in
`FUNCTIONAL_SHRINKERS`; `register_shrinker` (and `register_functional_shrinker`) adds one for a
layer type of your own. A module that holds channel-sized state and has no shrinker, a layer that
would degenerate at width k (a LayerNorm over one channel), or a block that does not run at width
k makes the block unconvertible: `SurgeryError`, whose message is the reason the conversion
report shows. A block is never half-converted.

Training-time randomness written functionally (torchvision's ``stochastic_depth(x, p, mode,
self.training)``, ``F.dropout(x, p, training=self.training)``) is traced with ``training`` frozen
to a constant; in the reduced block it becomes the equivalent module (``StochasticDepth``,
``nn.Dropout``) so it follows the MoD block's own train/eval mode again.

The package, in the order a block goes through it: `rules` (one rule per layer type, `Widths`),
`literals` (channel counts written into the code: splits, slices, reshape sizes), `cut` (the
block's subgraph as a module of its own), `shrink` (the pass at width k, `reduced_parts`).
"""

from __future__ import annotations

from modify.conversion.surgery.cut import cut as cut, get_attribute as get_attribute
from modify.conversion.surgery.rules import (
    FUNCTIONAL_SHRINKERS as FUNCTIONAL_SHRINKERS,
    SHRINKERS as SHRINKERS,
    FunctionalCall as FunctionalCall,
    LayerInput as LayerInput,
    Shrinker as Shrinker,
    Widths as Widths,
    register_functional_shrinker as register_functional_shrinker,
    register_shrinker as register_shrinker,
)
from modify.conversion.surgery.shrink import (
    check_shape as check_shape,
    reduced_parts as reduced_parts,
    shrink as shrink,
)
from modify.errors import SurgeryError as SurgeryError
from modify.layers.options import Init as Init

__all__ = [
    "SurgeryError",
    "Init",
    "Widths",
    "LayerInput",
    "Shrinker",
    "FunctionalCall",
    "cut",
    "get_attribute",
    "shrink",
    "check_shape",
    "reduced_parts",
    "SHRINKERS",
    "FUNCTIONAL_SHRINKERS",
    "register_shrinker",
    "register_functional_shrinker",
]
