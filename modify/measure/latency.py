"""Measured time per block, to set beside each block's share of MACs.

The most common complaint about pruning tools is MACs that drop while latency does not; putting
each block's share of measured time next to its share of MACs shows where that happens (a MoD
block's selector, gather and fusion cost time that MACs barely show).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["block_latency"]


def block_latency(
    model: nn.Module,
    names: Sequence[str],
    *,
    input_size: int = 224,
    batch_size: int = 1,
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 3,
) -> tuple[float, dict[str, float]]:
    """Median wall time of the whole forward pass and of each named module, in milliseconds.

    Forward hooks take the time around each named module's call (eval mode, inference mode, one
    thread by default); the medians over ``repeats`` passes are returned.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        >>> total, per = block_latency(m, ["0", "1"], input_size=16, repeats=3)
        >>> sorted(per), total > 0
        (['0', '1'], True)
    """
    samples: dict[str, list[float]] = {name: [] for name in names}
    starts: dict[str, float] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def pre(_m, _inputs, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _inputs, _output, name=name):
            samples[name][-1] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    was_training = model.training
    previous_threads = torch.get_num_threads()
    totals = []
    try:
        model.eval()
        torch.set_num_threads(threads)
        x = torch.randn(batch_size, 3, input_size, input_size)
        with torch.inference_mode():
            for i in range(warmup + repeats):
                for name in names:
                    samples[name].append(0.0)  # a module called twice adds both calls
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    totals.append(time.perf_counter() - start)
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    per = {name: 1e3 * statistics.median(values[warmup:]) for name, values in samples.items()}
    return 1e3 * statistics.median(totals), per
