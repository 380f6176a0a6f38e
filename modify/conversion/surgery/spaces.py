"""Channel spaces of a cut residual branch: which channel dimensions must change together.

A *space* is one set of channels that flows through the branch: produced by a convolution or a
linear layer (its output rows), carried through per-channel layers (BatchNorm, activations,
depthwise convolutions, a layer scale), and consumed by the next convolution or linear layer (its
input columns). Cutting or reordering a space means cutting or reordering every tensor dimension
attached to it, and nothing else. `ChannelSpaces` finds them by walking the fx graph with the
shapes tracing recorded, the way a dependency graph does for channel pruning (Torch-Pruning's
DepGraph), within one block.

A space is *frozen* when it must keep every channel in its order: the block's input and output
(the shortcut adds them), and any space the walk cannot follow exactly (a concatenation, a
channel slice, a grouped convolution, a group norm, a functional convolution, an operation it does
not know). Freezing is the safe answer: the space is left whole.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks, locate
    >>> from modify.conversion.surgery.cut import cut
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> g = locate(gm, find_blocks(gm)[1])
    >>> spaces = ChannelSpaces(cut(gm, g.fork, g.branch, g.branch_operand))
    >>> [(s.size, s.producers, sorted(t for t, _ in s.tensors)) for s in spaces.prunable()]
    [(64, ['conv1'], ['bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.weight', 'conv1.weight', 'conv2.weight'])]
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.conversion.graph import shape_of

__all__ = ["Space", "ChannelSpaces"]

_PERMUTES = ("permute",)
_FREEZING_FUNCTIONS = {
    torch.cat,
    torch.concat,
    torch.stack,
    torch.split,
    torch.chunk,
    torch.tensor_split,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.linear,
    F.group_norm,
    torch.matmul,
    torch.bmm,
    torch.einsum,
}
_FREEZING_METHODS = {
    "split",
    "chunk",
    "tensor_split",
    "matmul",
    "bmm",
    "transpose",
    "view_as",
    "gather",
    "index_select",
}
_BATCH_NORMS = {F.batch_norm, F.instance_norm}


@dataclasses.dataclass
class Space:
    """One set of channels of the branch, and every tensor dimension that holds it."""

    size: int  # channels in it
    frozen: bool = False  # must stay whole and in order (the block's input or output, or not followed)
    producers: list[str] = dataclasses.field(default_factory=list)  # layers (module targets) whose outputs are it
    tensors: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (parameter or buffer name, dim)
    why: str = ""  # why it is frozen


@dataclasses.dataclass(frozen=True)
class _Value:
    """What the walk knows of a node's value: its channel axis and space, or a parameter."""

    axis: int | None = None  # the channel dimension of a tensor value
    space: int | None = None  # its space (an index into ChannelSpaces.spaces, before unions)
    parameter: str | None = None  # a get_attr tensor (or a reshape of one): its name in the branch


class ChannelSpaces:
    """The channel spaces of ``sub``, a block cut with `modify.conversion.surgery.cut` (its nodes carry shapes)."""

    def __init__(self, sub: fx.GraphModule) -> None:
        self.sub = sub
        self.spaces: list[Space] = []
        self._parent: list[int] = []
        self._values: dict[fx.Node, _Value] = {}
        for node in sub.graph.nodes:
            self._visit(node)

    # -- union-find over spaces ---------------------------------------------------------------

    def _new(self, size: int, *, frozen: bool = False, why: str = "") -> int:
        self.spaces.append(Space(size, frozen, why=why))
        self._parent.append(len(self._parent))
        return len(self.spaces) - 1

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _union(self, a: int, b: int) -> int:
        a, b = self._find(a), self._find(b)
        if a == b:
            return a
        self._parent[b] = a
        sa, sb = self.spaces[a], self.spaces[b]
        if sa.size != sb.size:
            sa.frozen, sa.why = True, sa.why or f"added to a space of {sb.size} channels"
        sa.frozen = sa.frozen or sb.frozen
        sa.why = sa.why or sb.why
        sa.producers += sb.producers
        sa.tensors += sb.tensors
        return a

    def _freeze(self, i: int | None, why: str) -> None:
        if i is not None:
            space = self.spaces[self._find(i)]
            if not space.frozen:
                space.frozen, space.why = True, why

    def _attach(self, i: int, name: str, dim: int) -> None:
        self.spaces[self._find(i)].tensors.append((name, dim))

    def root(self, i: int) -> Space:
        return self.spaces[self._find(i)]

    def prunable(self) -> list[Space]:
        """The spaces a narrow may cut: not frozen, made by convolutions or linear layers only."""
        roots = sorted({self._find(i) for i in range(len(self.spaces))})
        return [self.spaces[r] for r in roots if not self.spaces[r].frozen and self.spaces[r].producers]

    # -- the walk -----------------------------------------------------------------------------

    def _visit(self, node: fx.Node) -> None:
        shape = shape_of(node)
        if node.op == "placeholder":
            assert shape is not None and len(shape) >= 2, "a cut branch's input carries its shape"
            self._values[node] = _Value(1, self._new(shape[1], frozen=True, why="the block input"))
        elif node.op == "get_attr":
            self._values[node] = _Value(parameter=str(node.target))
        elif node.op == "output":
            out = self._values.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            self._freeze(out.space if out else None, "the block output")
        elif node.op == "call_module":
            self._module(node, shape)
        else:
            self._function(node, shape)

    def _input(self, node: fx.Node) -> tuple[fx.Node | None, _Value | None]:
        for arg in (*node.args, *node.kwargs.values()):
            if isinstance(arg, fx.Node) and arg in self._values and self._values[arg].space is not None:
                return arg, self._values[arg]
        return None, None

    def _unknown(self, node: fx.Node, shape: tuple[int, ...] | None, why: str) -> None:
        """An operation the walk cannot follow: its inputs and output stay whole."""
        for arg in node.all_input_nodes:
            value = self._values.get(arg)
            if value is not None:
                self._freeze(value.space, why)
        if shape is not None and len(shape) >= 2:
            self._values[node] = _Value(1, self._new(shape[1], frozen=True, why=why))

    def _follow(self, node: fx.Node, shape: tuple[int, ...] | None, source: fx.Node, value: _Value) -> None:
        """``node``'s value holds ``value``'s channels where its shape keeps them whole, else the walk stops."""
        before = shape_of(source)
        axis = _kept_axis(before, value.axis, shape)
        if axis is None:
            self._unknown(node, shape, f"{node.name} reshapes the channels")
        else:
            self._values[node] = _Value(axis, value.space)

    def _module(self, node: fx.Node, shape: tuple[int, ...] | None) -> None:
        target = str(node.target)
        module = self.sub.get_submodule(target)
        source, value = self._input(node)
        if source is None or value is None or value.space is None or value.axis is None:
            self._unknown(node, shape, f"{target} reads no followed input")
            return
        s = value.space
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and value.axis == 1:
            if module.groups == 1:
                self._attach(s, f"{target}.weight", 1)
                self._produce(node, target, module.out_channels, axis=1, bias=module.bias is not None)
            elif module.groups == module.in_channels == module.out_channels:  # depthwise: one filter per channel
                self._attach(s, f"{target}.weight", 0)
                if module.bias is not None:
                    self._attach(s, f"{target}.bias", 0)
                self._values[node] = _Value(1, s)
            else:
                self._unknown(node, shape, f"{target} is a grouped convolution")
            return
        if isinstance(module, nn.Linear) and shape is not None and value.axis == len(shape) - 1:
            self._attach(s, f"{target}.weight", 1)
            self._produce(node, target, module.out_features, axis=value.axis, bias=module.bias is not None)
            return
        if isinstance(module, nn.GroupNorm):
            self._unknown(node, shape, f"{target} normalises groups of channels")
            return
        size = self.root(s).size
        state = [(n, t) for n, t in (*module.named_parameters(), *module.named_buffers()) if t.numel() > 1]
        if all(t.dim() == 1 and t.shape[0] == size for _, t in state):  # per-channel state: norms, affine, PReLU
            for name, _ in state:
                self._attach(s, f"{target}.{name}", 0)
            self._follow(node, shape, source, value)
        else:
            self._unknown(node, shape, f"{target} ({type(module).__name__}) holds state the walk cannot follow")

    def _produce(self, node: fx.Node, target: str, size: int, *, axis: int, bias: bool) -> None:
        t = self._new(size)
        self.spaces[t].producers.append(target)
        self._attach(t, f"{target}.weight", 0)
        if bias:
            self._attach(t, f"{target}.bias", 0)
        self._values[node] = _Value(axis, t)

    def _function(self, node: fx.Node, shape: tuple[int, ...] | None) -> None:
        fn = node.target
        if shape is None:  # x.size(), a shape's getitem: no tensor, no channels
            return
        inputs = [(a, self._values[a]) for a in node.all_input_nodes if a in self._values]
        tensors = [(a, v) for a, v in inputs if v.space is not None]
        params = [(a, v) for a, v in inputs if v.parameter is not None]
        if not tensors:
            if params and len(params) == 1:  # a parameter reshaped (ConvNeXt's gamma.reshape(1, -1, 1, 1))
                self._values[node] = params[0][1]
            return
        if fn in _FREEZING_FUNCTIONS or (node.op == "call_method" and fn in _FREEZING_METHODS):
            self._unknown(node, shape, f"{node.name} ({getattr(fn, '__name__', fn)}) mixes or splits channels")
            return
        if fn is operator.getitem:
            self._unknown(node, shape, f"{node.name} slices the tensor")
            return
        source, value = tensors[0]
        if (node.op == "call_method" and fn in _PERMUTES) or fn is torch.permute:
            rest = node.args[1:]
            dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
            if value.axis is not None and len(dims) == len(shape) and all(isinstance(d, int) for d in dims):
                self._values[node] = _Value(dims.index(value.axis % len(shape)), value.space)
            else:
                self._unknown(node, shape, f"{node.name} permutes in a way the walk cannot follow")
            return
        if fn in _BATCH_NORMS:
            for _, p in params:
                self._attach(value.space, p.parameter, 0)  # running stats, weight, bias: (C,)
            self._follow(node, shape, source, value)
            return
        if fn is F.layer_norm:
            normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
            if value.axis == len(shape) - 1 and isinstance(normalized, (list, tuple)) and len(normalized) == 1:
                for _, p in params:
                    self._attach(value.space, p.parameter, 0)
                self._follow(node, shape, source, value)
            else:
                self._unknown(node, shape, f"{node.name} normalises over more than the channels")
            return
        self._broadcast(node, shape, tensors, params)

    def _broadcast(
        self,
        node: fx.Node,
        shape: tuple[int, ...],
        tensors: list[tuple[fx.Node, _Value]],
        params: list[tuple[fx.Node, _Value]],
    ) -> None:
        """An element-wise operation: the full-rank operands share one space, and a parameter
        that broadcasts along the channels (a layer scale) joins it."""
        source, value = max(tensors, key=lambda item: len(shape_of(item[0]) or ()))
        before = shape_of(source)
        if before is None or value.axis is None or len(before) != len(shape) or before[value.axis] != shape[value.axis]:
            self._unknown(node, shape, f"{node.name} changes the shape of its operand")
            return
        axis, space = value.axis, value.space
        size = shape[axis]
        for other, v in tensors:
            theirs = shape_of(other)
            if other is source or theirs is None or v.axis is None:
                continue
            aligned = v.axis + len(shape) - len(theirs)
            if theirs[v.axis] == 1:
                continue  # broadcast along the channels: one value for all
            if aligned == axis and theirs[v.axis] == size:
                space = self._union(space, v.space)
            else:
                self._unknown(node, shape, f"{node.name} combines tensors whose channels do not line up")
                return
        for p_node, p in params:
            attached = self._parameter_dim(p_node, p, shape, axis, size)
            if attached is None:
                self._unknown(node, shape, f"{node.name} reads a parameter the walk cannot place")
                return
            if attached >= 0:
                self._attach(space, p.parameter, attached)
        self._values[node] = _Value(axis, space)

    def _parameter_dim(self, node: fx.Node, value: _Value, shape: tuple[int, ...], axis: int, size: int) -> int | None:
        """The dim of the parameter behind ``node`` that lines up with the channels; -1 when it has
        none (a scalar or one value per channel); None when it cannot be placed."""
        seen = shape_of(node)
        tensor = _get(self.sub, value.parameter)
        if seen is None or tensor is None:
            return None
        aligned = axis - (len(shape) - len(seen))  # the dim of the parameter's value that meets the channels
        if aligned < 0 or seen[aligned] == 1:
            return -1  # one value for every channel
        if seen[aligned] != size:
            return None
        dims = [i for i, d in enumerate(tensor.shape) if d == size]
        others_one = all(d == 1 for i, d in enumerate(tensor.shape) if i not in dims)
        return dims[0] if len(dims) == 1 and others_one else None


def _get(root: nn.Module, name: str | None) -> torch.Tensor | None:
    if name is None:
        return None
    owner, _, leaf = name.rpartition(".")
    try:
        value = getattr(root.get_submodule(owner) if owner else root, leaf)
    except AttributeError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def _kept_axis(before: tuple[int, ...] | None, axis: int | None, after: tuple[int, ...] | None) -> int | None:
    """Where the channel axis ``axis`` of a value of shape ``before`` is in a result of shape
    ``after``, when the result keeps it whole (same size, the same number of elements before it:
    pooling, flattening of trailing ones, reductions over spatial dims); None otherwise."""
    if before is None or axis is None or after is None:
        return None
    size, leading = before[axis], math.prod(before[:axis])
    for j, d in enumerate(after):
        if d == size and math.prod(after[:j]) == leading:
            return j
    return None


def describe_spaces(spaces: ChannelSpaces) -> list[dict[str, Any]]:
    """The spaces as plain data, for messages and tests."""
    roots = sorted({spaces._find(i) for i in range(len(spaces.spaces))})
    return [dataclasses.asdict(spaces.spaces[r]) for r in roots]
