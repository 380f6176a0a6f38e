"""The selector's hidden units on real inputs: which never fire, and reviving them.

The Channel Selector (`modify.layers.ChannelSelector`) is ``sigmoid(W2 relu(W1 pool(x)))`` with
no biases and C // 16 hidden units (4 for a 64-channel ResNet block, 1 for a 24-channel
MobileNetV2 block). A block's input is often a ReLU output, so every pooled channel is >= 0 and
the pooled vectors of different images point much the same way: a hidden unit whose fresh
weights make ``W1[j] . pool(x)`` negative for one image make it negative for nearly all. Such a
unit outputs 0 for every input and gets no gradient (the ReLU's slope is 0), so it never
recovers; when every unit of a selector is dead, every score is sigmoid(0) = 0.5, top-k ranks
ties, and the "MoD" block is a fixed channel set scaled by one half that no fine-tune can make
input-dependent. Seen on the converged ResNet-18 of the per-block tables (layer1.0, init copy:
every score 0.500, before and after the fine-tune; ``benchmarks/results/block_probe_r18_layer1.0``).

`revive_selectors` flips the sign of every hidden unit's weights that is dead on a calibration
batch (``W1[j] <- -W1[j]``). The fresh weights are drawn from a distribution symmetric about
zero, so the flipped row is as likely a draw as the original; on inputs of one sign it then
fires wherever the original was silent. `dead_units` only counts, for diagnostics. A live start
is not a live end: block-local distillation at the selector's full learning rate kills every unit
again on that ResNet-18, because one fixed channel set fits the original block better than
per-image sets (`modify.train.distill.distill_blocks`'s ``selector_lr_scale``;
``benchmarks/selector_fate.py``).

Only the ReLU scorer (the paper's, the default) has dead units. Under ``activation``
"leaky_relu" or "gelu" (`modify.layers.options.ScorerActivation`) a unit that is negative on
every image still has a gradient and still changes the scores: `dead_units` counts such units
(negative on all of the data) for diagnostics, and the other two functions leave them alone.

`collapse_selectors` turns a selector that is dead for good (every unit silent on the data, after
training) into what it computes: a `StaticSelector` with score 0.5 holding the set it picks, in the
order it picks it. The outputs stay the same wherever the units stay silent, without the scoring
(a whole ResNet-18 at 32x32, batch 1, one thread: no difference this machine resolves,
``benchmarks/collapse_timing.py``), and the set no longer depends on how a runtime breaks ties
(the CPU's topk picks the highest indices, ONNX Runtime's the lowest: a dead selector failed
`modify.deploy.export_onnx`'s parity check).

Example:
    >>> import torch, torchvision, modify
    >>> net = torchvision.models.resnet18(num_classes=10).eval()
    >>> result = modify.convert(net, k=0.5, input_size=32, init="copy")
    >>> blocks = [m for m in result.model.modules() if isinstance(m, modify.layers.MoDBlock)]
    >>> sel = blocks[0].selector
    >>> with torch.no_grad():
    ...     _ = sel.fc1.weight.copy_(-sel.fc1.weight.abs())  # every unit negative on inputs >= 0
    >>> data = torch.randn(8, 3, 32, 32)
    >>> dead_units(result.model, blocks, data)[0]
    (4, 4)
    >>> revived = revive_selectors(result.model, blocks, data)
    >>> revived[0], dead_units(result.model, blocks, data)[0]
    (4, (0, 4))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modify.io import provenance
from modify.layers import ChannelSelector, MoDBlock, ScorerActivation, StaticSelector

__all__ = ["block_inputs", "dead_units", "revive_selectors", "collapse_selectors", "replay_collapse"]

DEAD_SCORE = 0.5  # sigmoid(0): every channel's score when no hidden unit fires


def block_inputs(
    model: nn.Module, blocks: Sequence[nn.Module], data: Tensor, reduce: Callable[[Tensor], Tensor]
) -> list[Tensor]:
    """Runs ``data`` (N, 3, H, W) through ``model`` in eval mode without gradients and returns,
    for each of ``blocks``, ``reduce`` of its input (N, C, h, w), concatenated over calls. The
    model's training flag is restored."""
    seen: dict[int, list[Tensor]] = {id(b): [] for b in blocks}

    def hook(block: nn.Module, args: tuple[Any, ...]) -> None:
        seen[id(block)].append(reduce(args[0]))

    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(data)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [torch.cat(seen[id(b)]) if seen[id(b)] else torch.empty(0) for b in blocks]


def _pre_activations(model: nn.Module, blocks: Sequence[MoDBlock], data: Tensor) -> list[Tensor | None]:
    """Each block's selector hidden pre-activations ``W1 pool(x)`` (N, hidden); None for a
    block without a scoring selector (static MoD) or one the data never reached."""
    pooled = block_inputs(model, blocks, data, lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1))  # (N, C) each
    out: list[Tensor | None] = []
    for block, p in zip(blocks, pooled, strict=True):
        sel = block.selector
        usable = isinstance(sel, ChannelSelector) and p.numel() > 0
        out.append(F.linear(p.to(sel.fc1.weight.dtype), sel.fc1.weight) if usable else None)  # (N, hidden)
    return out


def _relu(block: MoDBlock) -> bool:
    """Whether the block's selector scores through a ReLU, the one activation with dead units."""
    sel = block.selector
    return isinstance(sel, ChannelSelector) and sel.activation is ScorerActivation.RELU


def dead_units(model: nn.Module, blocks: Sequence[MoDBlock], data: Tensor) -> list[tuple[int, int]]:
    """(hidden units that fire on none of ``data``, hidden units) of each block's selector;
    (0, 0) for a static selector. For a leaky or smooth activation, the units whose input is
    negative on all of ``data`` (not dead: they keep a gradient)."""
    pre = _pre_activations(model, blocks, data)
    return [(0, 0) if z is None else (int((z <= 0).all(0).sum()), z.shape[1]) for z in pre]


def revive_selectors(model: nn.Module, blocks: Sequence[MoDBlock], data: Tensor) -> list[int]:
    """Flips the fc1 row of every selector hidden unit that is dead on ``data`` (N, 3, H, W)
    where that makes it fire on some image; returns how many units were flipped per block.

    ``blocks`` in model order: a flipped selector scores differently, which changes its block's
    output and so the inputs of the blocks after it; each block is measured after every change
    before it (one forward per block flipped, and one more). Only ReLU selectors have dead units;
    the others are left."""
    flipped = [0] * len(blocks)
    start = 0
    with torch.no_grad():
        while start < len(blocks):
            pre = _pre_activations(model, blocks[start:], data)
            for i, z in enumerate(pre, start):
                live = z is not None and _relu(blocks[i])
                rows = ((z <= 0).all(0) & (z < 0).any(0)).nonzero().flatten() if live else None
                if rows is not None and rows.numel():  # dead, and alive once flipped
                    blocks[i].selector.fc1.weight[rows] *= -1
                    flipped[i] = int(rows.numel())
                    start = i + 1
                    break
            else:
                break
    return flipped


def collapse_selectors(model: nn.Module, blocks: Sequence[tuple[str, MoDBlock]], data: Tensor) -> list[str]:
    """Replaces the selector of every block in ``blocks`` ((module path, block) pairs of
    ``model``) whose hidden units all fire on none of ``data`` (N, 3, H, W) by the
    `StaticSelector` it amounts to: score 0.5, and the channels its top-k picks from equal scores
    on this device, in that order. Returns the paths collapsed and records them as a provenance
    step (``collapse``), so the model saves and loads.

    Exact on every input on which the units stay silent (all of ``data``); a unit that would fire
    on some other input is given up there. Blocks with a live unit, a static selector, or a
    scorer activation other than the ReLU (never constant) are left.
    """
    pre = _pre_activations(model, [b for _, b in blocks], data)
    done: list[str] = []
    for (path, block), z in zip(blocks, pre, strict=True):
        if z is None or not _relu(block) or bool((z > 0).any()):
            continue
        sel = block.selector
        ties = torch.full((1, sel.channels), DEAD_SCORE, dtype=sel.fc1.weight.dtype, device=sel.fc1.weight.device)
        _, picked = sel.select(ties)  # (1, k): what the dead selector returns for every input
        block.selector = _static(block, picked[0], sel.fc1.weight.device)
        done.append(path)
    if done:
        provenance.record(model, "collapse", {"blocks": done, "score": DEAD_SCORE})
    return done


def replay_collapse(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """A recorded `collapse_selectors` run again on the rebuilt model (the channels come with
    the state_dict)."""
    for path in data["blocks"]:
        block = model.get_submodule(path)
        device = block.selector.fc1.weight.device  # the rebuilt block's fresh Channel Selector
        block.selector = _static(block, None, device, float(data["score"]))
    return model


def _static(block: MoDBlock, picked: Tensor | None, device: torch.device, score: float = DEAD_SCORE) -> StaticSelector:
    static = StaticSelector(block.channels, block.k, score=score).to(device)
    if picked is not None:
        static.set_channels(picked, keep_order=True)
    return static
