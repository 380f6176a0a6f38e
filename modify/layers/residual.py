"""`ReducedBlock`: a residual block rebuilt from its branch, y = post(x + branch(x)).

Surgery builds a converted block's "whole" form from the original block's own branch and
post-add operation shrunk to width k, so the reduced block computes what the original block
computes, only on k channels.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ReducedBlock"]


class ReducedBlock(nn.Module):
    """A residual block with an identity shortcut: ``post(x + branch(x))``.

    Args:
        branch: the residual branch, (N, k, H, W) -> (N, k, H, W).
        post: what follows the skip-add (a ReLU for ResNets); identity if None.
        source: the class name of the block it was made from, for reports.

    Example:
        >>> import torch
        >>> block = ReducedBlock(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        >>> block(torch.randn(1, 4, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    def __init__(self, branch: nn.Module, post: nn.Module | None = None, *, source: str = "") -> None:
        super().__init__()
        self.branch = branch
        self.post = post if post is not None else nn.Identity()
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        return self.post(x + self.branch(x))  # (N, k, H, W)

    def extra_repr(self) -> str:
        return f"source={self.source}" if self.source else ""
