"""State of an ``nn.Module`` that a stage changes for a moment and must put back: `kept_modes`
restores the train/eval flag of a module and every submodule (tracing, surgery's shape checks,
the trace in the other mode, evaluation all run a model in eval mode and leave its modes as
they found them).

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

__all__ = ["kept_modes"]


@contextlib.contextmanager
def kept_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Restores the train/eval mode of ``module`` and every submodule when the body ends."""
    modes = {m: m.training for m in module.modules()}
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training
