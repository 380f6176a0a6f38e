"""`MoDBlock`: the unit a conversion installs (Cakaj et al. 2024, Fig. 1).

    x (N, C, H, W) -> selector -> top-k scores s (N, k), indices i (N, k)
                   -> gather x[:, i] (N, k, H, W) -> reduced block -> * s -> fuse into x

Only the k selected channels pass through the reduced block; the other C - k channels skip it,
so different channels see different depths. The output has the input's shape and the graph has
no control flow on tensor values: it traces with torch.fx and exports with torch.export.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from modify.layers.channel_weights import channel_weight_branch
from modify.layers.fusion import Fusion, expand_index
from modify.layers.options import (
    BlockForm,
    FusionSlot,
    MoDConfig,
    ReducedWeights,
    ScorerActivation,
    Selection,
    SelectionOrder,
)
from modify.layers.selector import ChannelSelector, StaticSelector

__all__ = ["MoDBlock", "capacity_to_k", "gather_channels"]


def gather_channels(x: Tensor, indices: Tensor) -> Tensor:
    """The channels ``indices`` (N, k) of each sample of ``x`` (N, C, H, W) -> (N, k, H, W).

    On a contiguous ``x`` it copies k whole H x W planes per sample (``index_select`` over the
    flattened N * C planes: one memcpy a plane, and an ONNX ``Gather``); on other layouts
    (channels_last) it gathers element by element. Either way only the k channels are written.

    Example:
        >>> x = torch.arange(8.0).view(2, 4, 1, 1)
        >>> gather_channels(x, torch.tensor([[3, 0], [1, 2]])).flatten().tolist()
        [3.0, 0.0, 5.0, 6.0]
    """
    n, c, h, w = x.shape
    if not x.is_contiguous():
        return torch.gather(x, 1, expand_index(indices, x))  # (N, k, H, W)
    offsets = torch.arange(0, n * c, c, device=x.device).unsqueeze(1)  # (N, 1): the first plane of each sample
    planes = (indices + offsets).view(-1)  # (N * k,)
    return x.view(n * c, h, w).index_select(0, planes).view(n, -1, h, w)  # (N, k, H, W)


# torch.fx records the gather as one call (its layout test needs a real tensor).
fx.wrap("gather_channels")


def capacity_to_k(channels: int, c: int) -> int:
    """The paper's k = max(1, C // c) for a block of C channels and capacity c.

    Example:
        >>> capacity_to_k(1024, 64)
        16
    """
    if c < 1:
        raise ValueError(f"capacity c={c} must be at least 1.")
    return max(1, channels // c)


class MoDBlock(nn.Module):
    """A CNN Mixture-of-Depths block.

    Args:
        channels: C, the block's input (and output) channel count.
        k: how many channels the reduced block processes.
        block: the reduced block, mapping (N, k, H, W) to (N, k, H, W). In the ``"whole"`` form
            it is the architecture's own block at width k (its shortcut and final activation
            included); in the ``"branch"`` form only its residual branch.
        form: ``"whole"`` (default) or ``"branch"``.
        post: in the ``"branch"`` form, what the original block applies after its skip-add
            (ResNet's final ReLU); it follows the fusion. Must be None in the ``"whole"`` form.
        fusion: the slot, ``"first"`` (default), ``"last"`` or ``"original"``.
        order: order of the selected channels, ``"score"`` (default) or ``"index"``.
        scale: multiply the block output by the selected scores (the paper always does; it is
            how the selector gets its gradient). False only for baselines and identity checks.
        reduction: the selector's bottleneck ratio r.
        selection: ``"dynamic"`` (the Channel Selector, default) or ``"static"`` (the same k
            channels for every sample, `StaticSelector`).
        activation: the Channel Selector's hidden activation, ``"relu"`` (the paper's, default),
            ``"leaky_relu"`` or ``"gelu"`` (`ScorerActivation`).
        weights: ``"slot"`` (default: the reduced block's weights per slot, whatever channel an image
            puts there) or ``"channel"`` (each selected channel its own: ``block``, a branch, is
            widened by `modify.layers.channel_weights.channel_weight_branch`; branch form and the
            ``"original"`` fusion only).

    Example:
        >>> from torchvision.models.resnet import BasicBlock
        >>> mod = MoDBlock(64, 4, BasicBlock(4, 4))
        >>> mod(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        k: int,
        block: nn.Module,
        *,
        form: BlockForm | str = BlockForm.WHOLE,
        post: nn.Module | None = None,
        fusion: FusionSlot | str = FusionSlot.FIRST,
        order: SelectionOrder | str = SelectionOrder.SCORE,
        scale: bool = True,
        reduction: int = 16,
        selection: Selection | str = Selection.DYNAMIC,
        activation: ScorerActivation | str = ScorerActivation.RELU,
        weights: ReducedWeights | str = ReducedWeights.SLOT,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.k = k
        self.form = BlockForm.from_str(form)
        if self.form is BlockForm.WHOLE and post is not None:
            raise ValueError("post= applies to the 'branch' form only; in the 'whole' form nothing follows the fusion.")
        self.scale = scale
        if Selection.from_str(selection) is Selection.STATIC:
            self.selector: nn.Module = StaticSelector(channels, k)
        else:
            self.selector = ChannelSelector(channels, k, reduction=reduction, order=order, activation=activation)
        self.weights = ReducedWeights.from_str(weights)
        if self.weights is ReducedWeights.CHANNEL:
            MoDConfig(form=self.form, fusion=fusion, weights=self.weights)  # raises if they do not go together
            block = channel_weight_branch(block, channels)
        self.block = block
        self.fusion = Fusion(channels, k, fusion)
        self.post = post if post is not None else nn.Identity()

    @classmethod
    def from_config(
        cls, channels: int, k: int, block: nn.Module, config: MoDConfig, *, post: nn.Module | None = None
    ) -> MoDBlock:
        """Builds a block with the options of a `MoDConfig`."""
        return cls(
            channels,
            k,
            block,
            form=config.form,
            post=post,
            fusion=config.fusion,
            order=config.order,
            scale=config.scale,
            reduction=config.reduction,
            selection=config.selection,
            activation=config.activation,
            weights=config.weights,
        )

    def forward(self, x: Tensor) -> Tensor:
        scores, indices = self.selector(x)  # (N, k), (N, k)
        picked = gather_channels(x, indices)  # (N, k, H, W)
        own = self.weights is ReducedWeights.CHANNEL  # each channel brings its weights: the block takes the indices
        y = self.block(picked, indices) if own else self.block(picked)  # (N, k, H, W)
        out = self.fusion(x, y, indices, scores if self.scale else None)  # (N, C, H, W): y * scores fused in
        return self.post(out) if self.form is BlockForm.BRANCH else out  # "whole": nothing follows the fusion

    def extra_repr(self) -> str:
        extra = ", weights=channel" if self.weights is ReducedWeights.CHANNEL else ""
        return f"channels={self.channels}, k={self.k}, form={self.form.value}, scale={self.scale}{extra}"
