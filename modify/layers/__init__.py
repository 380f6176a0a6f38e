"""The three parts of a CNN MoD block: the Channel Selector, the fusion, and `MoDBlock` itself."""

from modify.layers.block import MoDBlock as MoDBlock, capacity_to_k as capacity_to_k
from modify.layers.fusion import Fusion as Fusion
from modify.layers.options import (
    BlockForm as BlockForm,
    FusionSlot as FusionSlot,
    MoDConfig as MoDConfig,
    SelectionOrder as SelectionOrder,
)
from modify.layers.selector import ChannelSelector as ChannelSelector

__all__ = [
    "BlockForm",
    "ChannelSelector",
    "Fusion",
    "FusionSlot",
    "MoDConfig",
    "MoDBlock",
    "SelectionOrder",
    "capacity_to_k",
]
