"""Residual blocks rebuilt by surgery: `ReducedBlock`, y = post(x + branch(x)), and `Shortcut`,
y = post(skip(x)), a block without its branch.

Surgery builds a converted block's "whole" form from the original block's own branch and
post-add operation shrunk to width k, so the reduced block computes what the original block
computes, only on k channels; a narrowed block is the same form at full width with a thinner
branch. A deleted block keeps its shortcut and what follows its add.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ReducedBlock", "Shortcut"]


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


class Shortcut(nn.Module):
    """A deleted residual block: ``post(skip(x))``, its shortcut and its post-add ops.

    Example:
        >>> import torch
        >>> block = Shortcut(post=nn.ReLU())
        >>> block(torch.tensor([[-1.0, 2.0]])).tolist()
        [[0.0, 2.0]]
    """

    def __init__(self, skip: nn.Module | None = None, post: nn.Module | None = None) -> None:
        super().__init__()
        self.skip = skip if skip is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.skip(x))  # (N, C, H, W)
