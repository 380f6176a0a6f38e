"""Fresh weights the way torchvision initialises its CNNs (`fresh_conv_`), which the reduced
blocks and the ``scratch`` init use.

Example:
    >>> from torch import nn
    >>> conv = fresh_conv_(nn.Conv2d(3, 4, 3))
    >>> float(conv.bias.abs().sum())
    0.0
"""

from __future__ import annotations

from torch import nn

__all__ = ["fresh_conv_"]


def fresh_conv_(conv: nn.modules.conv._ConvNd) -> nn.modules.conv._ConvNd:
    """torchvision's initialisation of a CNN's convolution: Kaiming-normal (fan-out, ReLU), bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
