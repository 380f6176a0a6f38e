"""The three parts of a CNN MoD block: the Channel Selector, the fusion, and `MoDBlock` itself.

Names load on first use, so `modify.layers.options` (string enums, `MoDConfig`) can be imported
by torch-free code such as recipe validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr
from modify.layers.options import (
    BlockForm as BlockForm,
    FusionSlot as FusionSlot,
    Init as Init,
    MoDConfig as MoDConfig,
    ReducedWeights as ReducedWeights,
    ScorerActivation as ScorerActivation,
    Selection as Selection,
    SelectionOrder as SelectionOrder,
)

if TYPE_CHECKING:
    from modify.layers.block import MoDBlock as MoDBlock, capacity_to_k as capacity_to_k
    from modify.layers.channel_weights import ChannelConv2d as ChannelConv2d, ChannelNorm2d as ChannelNorm2d
    from modify.layers.fusion import Fusion as Fusion
    from modify.layers.residual import ReducedBlock as ReducedBlock, Shortcut as Shortcut
    from modify.layers.selector import ChannelSelector as ChannelSelector, StaticSelector as StaticSelector

_LAZY = {
    "MoDBlock": "modify.layers.block",
    "capacity_to_k": "modify.layers.block",
    "ChannelConv2d": "modify.layers.channel_weights",
    "ChannelNorm2d": "modify.layers.channel_weights",
    "Fusion": "modify.layers.fusion",
    "ReducedBlock": "modify.layers.residual",
    "Shortcut": "modify.layers.residual",
    "ChannelSelector": "modify.layers.selector",
    "StaticSelector": "modify.layers.selector",
}

__all__ = sorted(
    [
        *_LAZY,
        "BlockForm",
        "FusionSlot",
        "Init",
        "MoDConfig",
        "ReducedWeights",
        "ScorerActivation",
        "Selection",
        "SelectionOrder",
    ]
)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
