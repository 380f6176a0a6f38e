"""Two small things many stages need: running a module in another mode and putting every
module's mode back after (`kept_modes`), and fresh weights the way torchvision initialises its
CNNs (`fresh_conv_`), which the reduced blocks and the ``scratch`` init use.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout()).train()
    >>> with kept_modes(net):
    ...     _ = net.eval()
    >>> net[1].training
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["kept_modes", "fresh_conv_"]


@contextlib.contextmanager
def kept_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Restores the train/eval mode of ``module`` and every submodule when the body ends."""
    modes = {m: m.training for m in module.modules()}
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training


def fresh_conv_(conv: nn.modules.conv._ConvNd) -> nn.modules.conv._ConvNd:
    """torchvision's initialisation of a CNN's convolution: Kaiming-normal (fan-out, ReLU), bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
