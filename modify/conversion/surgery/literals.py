"""Channel counts written into a block's code, rescaled to width k: splits (MixNet's mixed
kernels, Res2Net's scales), channel slices (GhostNet's ``out[:, :self.out_chs]``) and reshape
sizes (NF-ResNet's weight standardisation, ``self.weight.reshape(1, self.out_channels, -1)``).

A block that splits its channels into fixed parts (``torch.split(x, [12, 12], 1)``, or
``torch.split(x, 14, 1)`` into equal chunks) and concatenates what its parts produce hard-codes
sizes that must change with the width. Before a cut block is shrunk, `plan_splits` reads every
split and every concatenation of convolutions in it and decides the reduced sizes, so that:

- each split keeps its number of parts, at sizes proportional to the original ones (equal parts
  stay equal where the width allows: a split total is reduced to the sum of its reduced parts,
  which is what lets Res2Net's ``sp + spx[i]`` add parts of equal width);
- convolutions whose outputs are concatenated into the block's output (or into a split) get
  output widths that partition the reduced width, so the block still ends at exactly k channels
  (elsewhere the layer after the concatenation takes whatever width arrives).

A split into more parts than the reduced width has channels cannot be scaled; the block is then
refused with that reason, named, instead of failing inside torch.

Example:
    >>> scale_parts([12, 12], 3)
    [2, 1]
    >>> scale_parts([8, 8, 8, 8], 8)
    [2, 2, 2, 2]
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from modify.conversion.graph import argument, shape_of, split_sizes
from modify.errors import SplitError

__all__ = [
    "SplitPlan",
    "SplitError",
    "scale_parts",
    "plan_splits",
    "split_sizes",
    "rescale_split",
    "rescale_slice",
    "rescale_shape",
    "is_reshape",
]


def scale_parts(parts: Sequence[int], total: int) -> list[int]:
    """``parts`` scaled to sum to ``total``, each at least 1 (largest remainders get the rest).

    Raises:
        SplitError: ``total`` is smaller than the number of parts.
    """
    original = sum(parts)
    if total < len(parts):
        raise SplitError(
            f"splits {original} channels into {len(parts)} fixed parts {list(parts)}, and {total} channels cannot "
            f"fill them: give the block a larger k (at least {len(parts)} channels here)"
        )
    exact = [p * total / original for p in parts]
    sizes = [max(1, int(e)) for e in exact]
    order = sorted(range(len(parts)), key=lambda i: (exact[i] - int(exact[i]), -i), reverse=True)
    i = 0
    while sum(sizes) < total:
        sizes[order[i % len(parts)]] += 1
        i += 1
    while sum(sizes) > total:  # the max(1, .) floors overshot: take from the largest
        j = max(range(len(sizes)), key=lambda j: sizes[j])
        sizes[j] -= 1
    return sizes


_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)


def _cat_of_convs(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node] | None:
    """The inputs of ``torch.cat([...], 1)`` if each is a (non-depthwise) convolution module."""
    if node.op != "call_function" or node.target not in _CAT_FUNCTIONS:
        return None
    tensors, dim = node.args[0], argument(node, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or dim not in (1, -3):
        return None
    convs = []
    for t in tensors:
        module = gm.get_submodule(str(t.target)) if isinstance(t, fx.Node) and t.op == "call_module" else None
        if not isinstance(module, nn.modules.conv._ConvNd) or (
            module.groups > 1 and module.groups == module.in_channels
        ):
            return None
        convs.append(t)
    return convs


def _is_width_setting(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A layer that sets its own output width (a convolution that is not depthwise, a linear)."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, nn.modules.conv._ConvNd):
            return not (module.groups > 1 and module.groups == module.in_channels)
        return isinstance(module, nn.Linear)
    return node.op == "call_function" and node.target in (
        nn.functional.linear,
        nn.functional.conv2d,
        nn.functional.conv1d,
    )


def _width_is_pinned(gm: fx.GraphModule, cat: fx.Node) -> bool:
    """Whether the concatenation's width reaches the block output or a split unchanged by any
    layer that sets its own width: then the parts must add up to exactly the reduced width."""
    seen, todo = {cat}, [cat]
    while todo:
        for user in todo.pop().users:
            if user.op == "output" or split_sizes(user) is not None:
                return True
            if user not in seen and not _is_width_setting(gm, user):
                seen.add(user)
                todo.append(user)
    return False


def _sliced_cat(node: fx.Node) -> tuple[int, list[int]] | None:
    """(b, the part widths) of ``torch.cat(parts, 1)[:, :b]`` with a literal b, else None."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None
    source, index = node.args
    if not isinstance(source, fx.Node) or source.op != "call_function" or source.target not in _CAT_FUNCTIONS:
        return None
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None) or not isinstance(index[1], slice):
        return None
    stop, tensors = index[1].stop, source.args[0]
    if index[1].start not in (None, 0) or not isinstance(stop, int) or argument(source, 1, "dim", 0) not in (1, -3):
        return None
    shapes = [shape_of(t) for t in tensors] if isinstance(tensors, (list, tuple)) else [None]
    if any(shape is None or len(shape) < 2 for shape in shapes):
        return None
    return stop, [shape[1] for shape in shapes if shape is not None]


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The reduced sizes a cut block's splits and concatenated convolutions take."""

    totals: dict[int, int]  # original channel count of a split's input -> its reduced count
    conv_outputs: dict[str, int]  # conv module target -> its reduced output width
    splits: tuple[str, ...]  # names of the split nodes planned


def plan_splits(gm: fx.GraphModule, widths: Callable[[int], int], channels: int) -> SplitPlan:
    """The `SplitPlan` of ``gm`` (a cut block carrying shapes), for the width map ``widths``.

    A split total other than the block's own width C becomes the sum of its reduced parts (C
    itself is pinned to k). Each concatenation of convolutions partitions the reduced width of
    its output among them, proportionally.
    """
    totals: dict[int, int] = {}
    names = []
    for node in gm.graph.nodes:
        found = split_sizes(node)
        if found is None:
            continue
        parts, _ = found
        names.append(node.name)
        total = sum(parts)
        if total != channels and total not in totals:
            totals[total] = sum(widths(p) for p in parts)

    def reduced(d: int) -> int:
        return totals.get(d, widths(d))

    for node in gm.graph.nodes:  # GhostNet: cat([x1, cheap(x1)])[:, :out] needs halves wide enough
        wide = _sliced_cat(node)
        if wide is None:
            continue
        stop, parts = wide
        target = reduced(stop)
        if sum(reduced(p) for p in parts) < target:
            for p in parts:
                if p != channels:
                    totals[p] = max(reduced(p), math.ceil(p * target / stop))

    outputs: dict[str, int] = {}
    for node in gm.graph.nodes:
        convs = _cat_of_convs(gm, node)
        if convs is None or not _width_is_pinned(gm, node):
            continue  # elsewhere the next layer takes whatever width the parts add up to
        sizes = [gm.get_submodule(str(c.target)).out_channels for c in convs]
        total = sum(sizes)
        try:
            parts = scale_parts(sizes, reduced(total))
        except SplitError:
            continue  # the concatenation's own width is too small: shrinking it reports that
        for conv, part in zip(convs, parts, strict=True):
            outputs[str(conv.target)] = part
    return SplitPlan(totals=totals, conv_outputs=outputs, splits=tuple(names))


def rescale_split(node: fx.Node, width: int) -> int | list[int] | None:
    """The size argument that splits ``width`` channels into the parts ``node`` had; None if
    ``node`` is not a channel split or needs no change.

    Raises:
        SplitError: ``width`` is smaller than the number of parts.
    """
    found = split_sizes(node)
    if found is None:
        return None
    parts, written = found
    if sum(parts) == width:
        return None
    new = scale_parts(parts, width)
    if isinstance(written, int) and len(set(new[:-1])) <= 1 and (len(new) == 1 or new[-1] <= new[0]):
        if sum(new) == width and new[0] * (len(new) - 1) < width <= new[0] * len(new):
            return new[0]  # still equal chunks of one size: keep the int form
    return new


def rescale_slice(node: fx.Node, index: Any, width: int, widths: Callable[[int], int]) -> Any:
    """The index of ``x[:, a:b]`` (``node`` a getitem on a channel-first tensor) for the reduced
    width ``width``: bounds scaled by ``widths``, the end clipped to the width; None if ``node``
    is no such slice or needs no change.

    Example: GhostNet's ``out[:, :12]`` over ``cat([x1, x2])`` of 2 x 6 channels becomes
    ``out[:, :widths(12)]``, which keeps the block at k channels however the halves rounded.
    """
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    before = shape_of(node.args[0])
    if before is None or len(before) < 3 or before[1] == width or not isinstance(index, tuple) or len(index) < 2:
        return None
    first, channel = index[0], index[1]
    if first != slice(None) or not isinstance(channel, slice) or channel.step not in (None, 1):
        return None
    start, stop = channel.start, channel.stop
    if not all(b is None or isinstance(b, int) and b >= 0 for b in (start, stop)):
        return None
    new_start = widths(start) if start else start
    new_stop = None if stop is None else min(widths(stop), width)  # a literal end pins the width, even a no-op one
    if (new_start, new_stop) == (start, stop):
        return None
    return (first, slice(new_start, new_stop, channel.step), *index[2:])


_RESHAPES = ("reshape", "view")


def is_reshape(node: fx.Node) -> bool:
    """``t.reshape(...)``, ``t.view(...)`` or ``torch.reshape(t, ...)``."""
    return (node.op == "call_method" and node.target in _RESHAPES) or (
        node.op == "call_function" and node.target is torch.reshape
    )


def rescale_shape(
    node: fx.Node, sizes: Sequence[Any], now: Sequence[int], *, batch_first: bool = True
) -> list[Any] | None:
    """The size arguments of ``t.reshape(...)`` / ``t.view(...)`` as written in the graph
    (``sizes``: ints, or nodes the graph computes), each int that was a non-batch dimension of
    ``t`` replaced by what that dimension is now (``now``, the reduced shape); None if ``node``
    is no such call or nothing changes. A data tensor's dim 0 is the batch and never matched
    (``batch_first``); a parameter's dim 0 is a channel count.

    Example: NF-ResNet's ``self.weight.reshape(1, self.out_channels, -1)`` on a (64, 32, 3, 3)
    weight cut to (4, 2, 3, 3) becomes ``reshape(1, 4, -1)``.
    """
    before = shape_of(node.args[0]) if node.args else None
    if not is_reshape(node) or before is None or len(before) != len(now) or tuple(before) == tuple(now):
        return None
    first = 1 if batch_first else 0
    changed = {b: n for b, n in zip(before[first:], now[first:], strict=True) if b != n}
    new = [changed.get(v, v) if isinstance(v, int) and v > 1 else v for v in sizes]
    return new if new != list(sizes) else None
