"""The Channel Selector of CNN MoD (Cakaj et al. 2024, Sec. 3.1): score every channel, keep the top k.

A squeeze-and-excitation style scorer: global average pool, FC C -> max(1, C // r) without
bias, ReLU, FC back to C without bias, sigmoid. The paper states neither the hidden activation
nor the biases; bias-free is the only choice whose parameter counts reproduce its ResNet75/86/
101/152-MoD tables exactly, and ReLU is what SE uses (the default). Under it, a hidden unit that
stops firing on a block's non-negative inputs never gets a gradient again; ``activation``
"leaky_relu" or "gelu" (`modify.layers.options.ScorerActivation`) keep one, with the same
parameters.

The forward calls the operators directly (``F.linear`` on ``fc1.weight`` and ``fc2.weight``, an
in-place ReLU, ``torch.sigmoid``) rather than through submodules: the same operators, so the same
numbers, without a module call per step, which at batch 1 on small activations costs about as much
as the arithmetic. The selector itself is still one module call (hooks on it see its output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modify.layers.options import LEAKY_SLOPE, ScorerActivation, SelectionOrder

__all__ = ["ChannelSelector", "StaticSelector"]


class ChannelSelector(nn.Module):
    """Scores the C channels of each sample and returns the k best with their scores.

    Args:
        channels: C, the number of input channels.
        k: how many channels to keep, 1 <= k <= C.
        reduction: the bottleneck ratio r of the scorer (hidden width max(1, C // r)).
        order: ``"score"`` (highest first, ``torch.topk``'s order) or ``"index"``.
        activation: the hidden activation, ``"relu"`` (default), ``"leaky_relu"`` or ``"gelu"``.

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
        activation: ScorerActivation | str = ScorerActivation.RELU,
    ) -> None:
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"k={k} must lie in 1..{channels} (the channel count).")
        if reduction < 1:
            raise ValueError(f"reduction={reduction} must be at least 1.")
        self.channels = channels
        self.k = k
        self.order = SelectionOrder.from_str(order)
        self.activation = ScorerActivation.from_str(activation)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def squeeze(self, x: Tensor) -> Tensor:
        """The global average pool: (N, C, H, W) -> (N, C)."""
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, C)

    def excite(self, pooled: Tensor) -> Tensor:
        """FC, activation (ReLU unless told), FC, sigmoid: (N, C) -> scores (N, C) in (0, 1)."""
        hidden = F.linear(pooled, self.fc1.weight)  # (N, C // r)
        if self.activation is ScorerActivation.RELU:
            hidden = hidden.relu_()
        elif self.activation is ScorerActivation.LEAKY_RELU:
            hidden = F.leaky_relu(hidden, LEAKY_SLOPE, inplace=True)
        else:
            hidden = F.gelu(hidden)
        return torch.sigmoid(F.linear(hidden, self.fc2.weight))  # (N, C)

    def scores(self, x: Tensor) -> Tensor:
        """Per-sample channel scores in (0, 1): (N, C, H, W) -> (N, C)."""
        return self.excite(self.squeeze(x))  # (N, C)

    def select(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """The k best of scores ``s`` (N, C): their scores (N, k) and channel indices (N, k)."""
        values, indices = torch.topk(s, self.k, dim=1)  # (N, k), (N, k), by descending score
        if self.order is SelectionOrder.INDEX:
            indices, _ = torch.sort(indices, dim=1)  # (N, k) ascending channel index
            values = torch.gather(s, 1, indices)  # (N, k)
        return values, indices

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the selected scores (N, k) and channel indices (N, k)."""
        return self.select(self.scores(x))  # (N, k), (N, k)

    def extra_repr(self) -> str:
        act = "" if self.activation is ScorerActivation.RELU else f", activation={self.activation.value}"
        return f"channels={self.channels}, k={self.k}, order={self.order.value}{act}"


class StaticSelector(nn.Module):
    """The same k channels for every sample, each with the same score (1 unless told): a MoD
    block without its input-dependent choice ("static MoD"), the control that says what the
    selector is worth.

    The channels are a buffer (saved with the model); `modify.conversion.init` sets them to the
    block's most important ones, `set_channels` to any. A Channel Selector whose hidden units
    never fire scores every channel sigmoid(0) = 0.5 and picks one set for every sample:
    `modify.conversion.selector_units.collapse_selectors` replaces it by
    ``StaticSelector(C, k, score=0.5)`` holding that set in the order it was picked, which gives
    the same outputs without scoring.

    Example:
        >>> sel = StaticSelector(8, k=2)
        >>> sel.set_channels(torch.tensor([5, 1]))
        >>> scores, idx = sel(torch.randn(3, 8, 4, 4))
        >>> scores.tolist()[0], idx.tolist()[0]
        ([1.0, 1.0], [1, 5])
        >>> half = StaticSelector(8, k=2, score=0.5)
        >>> half.set_channels(torch.tensor([5, 1]), keep_order=True)
        >>> [t.tolist()[0] for t in half(torch.randn(3, 8, 4, 4))]
        [[0.5, 0.5], [5, 1]]
    """

    def __init__(self, channels: int, k: int, *, score: float = 1.0) -> None:
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"k={k} must lie in 1..{channels} (the channel count).")
        self.channels = channels
        self.k = k
        self.score = float(score)
        self.register_buffer("indices", torch.arange(k))  # (k,) the channels, in the order the block reads them

    def set_channels(self, indices: Tensor, *, keep_order: bool = False) -> None:
        """Selects these k distinct channels: in ascending order, or as given (``keep_order``),
        the order in which the reduced block reads them and the fusion adds them back."""
        given = torch.as_tensor(indices).flatten()
        chosen = given.unique()  # sorted, distinct
        if chosen.numel() != self.k or given.numel() != self.k or chosen.min() < 0 or chosen.max() >= self.channels:
            raise ValueError(f"expected {self.k} distinct channels in 0..{self.channels - 1}, got {given.tolist()}.")
        self.indices.copy_((given if keep_order else chosen).to(self.indices.device))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (N, k), all ``score``, and the fixed indices (N, k)."""
        n = x.shape[0]
        indices = self.indices.unsqueeze(0).expand(n, -1)  # (N, k)
        return torch.full((n, self.k), self.score, dtype=x.dtype, device=x.device), indices  # (N, k), (N, k)

    def extra_repr(self) -> str:
        extra = f", score={self.score:g}" if self.score != 1.0 else ""
        return f"channels={self.channels}, k={self.k}{extra}"
