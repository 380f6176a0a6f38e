"""Hand-written blocks, and helpers for them, shared by several test files."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b); a projection shortcut forks after bn1/relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def randomise_norms(module: nn.Module, scale: tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Non-trivial BatchNorm statistics, scales (uniform in ``scale``) and shifts, so eval mode is
    not an identity and rankings by scale mean something; returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(*scale)
            m.bias.data.uniform_(-0.2, 0.2)
    return module
