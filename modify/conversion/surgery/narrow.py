"""Narrowing a residual block: its branch's inner widths cut to a share, its input and output kept.

The static counterpart of a MoD block, and the planner's ``narrow`` choice: where a MoD block
picks k channels per image and runs its block on those, a narrowed block keeps all C channels in
and out and thins what happens inside the residual branch (a ResNet BasicBlock 64 -> 64 -> 64 at a
quarter becomes 64 -> 16 -> 64; a MobileNetV2 block 24 -> 144 -> 24 becomes 24 -> 36 -> 24).

Each inner channel space (`modify.conversion.surgery.spaces`) keeps its most important channels:
ranked by the |scale| of the BatchNorm that normalises it, or the L1 norm of the filters that make
it where there is none (Li et al. 2017, "Pruning Filters for Efficient ConvNets"). The branch is
first reordered so those channels come first, which changes nothing it computes, and then cut by
the conversion's own shrink pass (`modify.conversion.surgery.shrink`) with each producing layer's
output width fixed and the block input at full width; every other layer follows the input it
receives, as in a conversion.

Example:
    >>> import torch, torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks, locate
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> site = find_blocks(gm)[1]
    >>> branch = narrowed_branch(gm, locate(gm, site), share=0.25, height=site.height, width=site.width)
    >>> branch.conv1.in_channels, branch.conv1.out_channels, branch.conv2.out_channels
    (64, 16, 64)
"""

from __future__ import annotations

import torch
from torch import fx, nn

from modify.conversion.graph import SiteGraph, shape_of
from modify.conversion.surgery.cut import cut, get_attribute
from modify.conversion.surgery.rules import Widths
from modify.conversion.surgery.shrink import check_shape, shrink
from modify.conversion.surgery.spaces import ChannelSpaces, Space
from modify.errors import SurgeryError
from modify.layers.options import Init

__all__ = ["narrowed_branch", "narrow_width", "rank_space", "reorder_by_importance"]


def narrow_width(size: int, share: float) -> int:
    """Channels a space of ``size`` keeps at ``share``: max(1, round(size * share)).

    Example:
        >>> narrow_width(64, 0.25), narrow_width(144, 0.125), narrow_width(8, 0.05)
        (16, 18, 1)
    """
    return max(1, min(size, round(size * share)))


def rank_space(sub: nn.Module, space: Space) -> torch.Tensor:
    """The channels of ``space``, most important first: by the |scale| of a BatchNorm attached
    to it, else by the L1 norm of its producers' filters (each producer's norms summed)."""
    for name, dim in space.tensors:
        owner, _, leaf = name.rpartition(".")
        module = sub.get_submodule(owner) if owner else sub
        if leaf == "weight" and dim == 0 and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            return torch.argsort(module.weight.detach().abs(), descending=True, stable=True)
    score = torch.zeros(space.size)
    for producer in space.producers:
        weight = sub.get_submodule(producer).weight.detach()
        rows = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
        score += rows / rows.sum().clamp_min(1e-12)  # each producer counts alike
    return torch.argsort(score, descending=True, stable=True)


def reorder_by_importance(sub: fx.GraphModule) -> dict[str, int]:
    """Reorders every prunable space of ``sub`` so its most important channels come first (the
    branch computes exactly what it did); returns each producing layer's target -> space size."""
    sizes: dict[str, int] = {}
    for space in ChannelSpaces(sub).prunable():
        order = rank_space(sub, space)
        with torch.no_grad():
            for name, dim in space.tensors:
                tensor = get_attribute(sub, name)
                tensor.data = tensor.data.index_select(dim, order.to(tensor.device))
        sizes.update({producer: space.size for producer in space.producers})
    return sizes


def narrowed_branch(gm: fx.GraphModule, graph: SiteGraph, *, share: float, height: int, width: int) -> fx.GraphModule:
    """The residual branch of one located block, its inner widths cut to ``share`` (in (0, 1];
    1 keeps every channel, reordered), input and output at the block's width, weights copied.

    Raises:
        SurgeryError: the branch has no inner width the walk can cut, or does not run narrowed;
            nothing of it is kept.
    """
    if not 0.0 < share <= 1.0:
        raise SurgeryError(f"narrow needs a share in (0, 1], not {share!r}")
    sub = cut(gm, graph.fork, graph.branch, graph.branch_operand)
    channels = _input_channels(sub)
    sizes = reorder_by_importance(sub)
    if not sizes:
        why = sorted(
            {
                s.why
                for s in ChannelSpaces(sub).spaces
                if s.frozen and s.why not in ("the block input", "the block output")
            }
        )
        raise SurgeryError("the branch has no inner width that can be narrowed" + (f" ({why[0]})" if why else ""))
    outputs = {target: narrow_width(size, share) for target, size in sizes.items()}
    shrink(sub, Widths(channels, channels), Init.COPY, outputs=outputs)
    check_shape(sub, channels, height, width)
    return sub


def _input_channels(sub: fx.GraphModule) -> int:
    placeholder = next(n for n in sub.graph.nodes if n.op == "placeholder")
    shape = shape_of(placeholder)
    if shape is None or len(shape) < 2:
        raise SurgeryError("the branch's input carries no shape; trace the model with modify's tracer")
    return shape[1]
