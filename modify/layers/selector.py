"""The Channel Selector of CNN MoD (Cakaj et al. 2024, Sec. 3.1): score every channel, keep the top k.

A squeeze-and-excitation style scorer: global average pool, FC C -> max(1, C // r) without
bias, ReLU, FC back to C without bias, sigmoid. The paper states neither the hidden activation
nor the biases; bias-free is the only choice whose parameter counts reproduce its ResNet75/86/
101/152-MoD tables exactly, and ReLU is what SE uses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modify.layers.options import SelectionOrder

__all__ = ["ChannelSelector"]


class ChannelSelector(nn.Module):
    """Scores the C channels of each sample and returns the k best with their scores.

    Args:
        channels: C, the number of input channels.
        k: how many channels to keep, 1 <= k <= C.
        reduction: the bottleneck ratio r of the scorer (hidden width max(1, C // r)).
        order: ``"score"`` (highest first, ``torch.topk``'s order) or ``"index"``.

    Example:
        >>> sel = ChannelSelector(64, k=4)
        >>> scores, idx = sel(torch.randn(2, 64, 8, 8))
        >>> scores.shape, idx.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        channels: int,
        k: int,
        *,
        reduction: int = 16,
        order: SelectionOrder | str = SelectionOrder.SCORE,
    ) -> None:
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"k={k} must lie in 1..{channels} (the channel count).")
        if reduction < 1:
            raise ValueError(f"reduction={reduction} must be at least 1.")
        self.channels = channels
        self.k = k
        self.order = SelectionOrder.from_str(order)
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.gate = nn.Sigmoid()

    def scores(self, x: Tensor) -> Tensor:
        """Per-sample channel scores in (0, 1): (N, C, H, W) -> (N, C)."""
        s = self.pool(x).flatten(1)  # (N, C)
        return self.gate(self.fc2(self.act(self.fc1(s))))  # (N, C)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the selected scores (N, k) and channel indices (N, k)."""
        s = self.scores(x)  # (N, C)
        values, indices = torch.topk(s, self.k, dim=1)  # (N, k), (N, k), by descending score
        if self.order is SelectionOrder.INDEX:
            indices, _ = torch.sort(indices, dim=1)  # (N, k) ascending channel index
            values = torch.gather(s, 1, indices)  # (N, k)
        return values, indices

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}, order={self.order.value}"
