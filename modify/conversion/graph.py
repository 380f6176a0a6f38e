"""What a traced graph says, in the words discovery and surgery share: a node's shape
(`shape_of`), module (`module_of`) and short description (`describe`), which nodes carry data
(`data_nodes`), which ops are adds, convolutions, weight ops and element-wise ops, the module
stack a node was traced in, channel splits, and the fx nodes of one residual block (`SiteGraph`).
`modify.conversion.discover` reads these to find the blocks; `modify.conversion.surgery` to cut
and shrink them.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> conv = next(n for n in gm.graph.nodes if n.name == "layer1_0_conv1")
    >>> shape_of(conv), describe(gm, conv), add_form(conv), module_stack(conv)[-1][1]
    ((1, 64, 8, 8), 'Conv2d', None, 'layer1.0.conv1')
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.layers.block import MoDBlock

__all__ = [
    "SiteGraph",
    "add_form",
    "argument",
    "class_name",
    "data_nodes",
    "describe",
    "has_conv",
    "has_params",
    "is_elementwise",
    "is_noop",
    "is_weight_op",
    "module_calls",
    "module_of",
    "module_stack",
    "shape_of",
    "split_sizes",
]


@dataclasses.dataclass(frozen=True)
class SiteGraph:
    """The fx nodes of one residual block, as a rewrite needs them.

    ``branch`` and ``skip`` hold the nodes between the fork and each add operand, in graph
    (topological) order: the ops on the tensor values and the metadata ops they read off the
    fork (``x.size()`` and the ``getitem`` on it, in an SE block); ``get_attr`` nodes they read,
    such as ConvNeXt's layer scale, are not listed. `BlockSite.branch` describes the value ops only.

    Example:
        >>> import torchvision
        >>> from modify.conversion.tracing import trace
        >>> from modify.conversion.discover import find_blocks, locate
        >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=64)
        >>> g = locate(gm, find_blocks(gm)[0])
        >>> g.fork.name, g.add.name, [n.name for n in g.post], g.output.name
        ('maxpool', 'add', ['layer1_0_relu_1'], 'layer1_0_relu_1')
    """

    fork: fx.Node  # the block input: latest common data ancestor of both add operands
    add: fx.Node  # the residual add
    branch: tuple[fx.Node, ...]  # residual branch, fork excluded, ending with the add's branch operand
    skip: tuple[fx.Node, ...]  # shortcut path, fork excluded; empty for an identity shortcut
    post: tuple[fx.Node, ...]  # element-wise ops of the block on the sum (ResNet's final ReLU)
    output: fx.Node  # last post node, or the add
    users: tuple[fx.Node, ...] = ()  # nodes reading the block output (see the in-place note above)
    inplace: bool = False  # the add mutates its first operand (add_ / iadd)
    mutated: fx.Node | None = None  # that operand, for an in-place add

    @property
    def branch_operand(self) -> fx.Node:
        return self.branch[-1]

    @property
    def skip_operand(self) -> fx.Node:
        return self.skip[-1] if self.skip else self.fork


# ---------------------------------------------------------------------------------------------
# What counts as what


_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_)
_INPLACE_FUNCTIONS = (operator.iadd, torch.Tensor.add_)
_ADD_METHODS = ("add", "add_")

# Ops whose result depends on a tensor's metadata only, not on its values: data flow stops here.
_META_METHODS = frozenset(
    {
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "get_device",
        "type",
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
    }
)
_META_FUNCTIONS = (
    builtins.len,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
    torch.numel,
)
_META_ATTRIBUTES = frozenset({"shape", "device", "dtype", "ndim", "is_cuda", "layout", "requires_grad"})

_CONV_FUNCTIONS = (
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
)
_WEIGHT_FUNCTIONS = (*_CONV_FUNCTIONS, F.linear, torch.matmul, torch.mm, torch.bmm, torch.einsum, operator.matmul)

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    torch.ao.quantization.ObserverBase,  # quantizable models' activation_post_process
    torch.ao.quantization.FakeQuantizeBase,
)
_ELEMENTWISE_FUNCTIONS = (
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    torch.sigmoid,
    torch.tanh,
)
_ELEMENTWISE_METHODS = frozenset({"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"})


def add_form(node: fx.Node) -> bool | None:
    """None if ``node`` is no tensor add; else whether the add writes into its first operand (``add_``, ``+=``)."""
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return node.target in _INPLACE_FUNCTIONS
    if node.op == "call_method" and node.target in _ADD_METHODS:
        return node.target == "add_"
    return None


def _is_meta(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is builtins.getattr:
            return len(node.args) > 1 and node.args[1] in _META_ATTRIBUTES
        return node.target in _META_FUNCTIONS
    return False


def data_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is computed from the inputs' values (graph order makes one pass enough)."""
    data: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            data.add(node)
        elif node.op in ("call_function", "call_method", "call_module") and not _is_meta(node):
            if any(i in data for i in node.all_input_nodes):
                data.add(node)
    return data


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls; None for any other node."""
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(str(node.target))
    except AttributeError:
        return None


def has_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A convolution, functional or a module, or a user leaf holding one (not a MoD block)."""
    if node.op == "call_function":
        return node.target in _CONV_FUNCTIONS
    mod = module_of(gm, node)
    if mod is None:
        return False
    if isinstance(mod, nn.modules.conv._ConvNd):
        return True
    # A user leaf holding convs counts; a MoDBlock is an already converted block, not a new one.
    return not isinstance(mod, MoDBlock) and any(isinstance(m, nn.modules.conv._ConvNd) for m in mod.modules())


def is_weight_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A convolution, linear or matrix product: the ops that tell a residual branch from its shortcut."""
    if node.op == "call_function":
        return node.target in _WEIGHT_FUNCTIONS
    mod = module_of(gm, node)
    return mod is not None and any(p.dim() >= 2 for p in mod.parameters())


def has_params(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A module with parameters, or a call reading one through ``get_attr``."""
    mod = module_of(gm, node)
    if mod is not None:
        return any(True for _ in mod.parameters())
    # F.conv2d(x, self.weight) and friends: a parameter read through get_attr.
    return any(i.op == "get_attr" for i in node.all_input_nodes)


def is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An ``nn.Identity`` call."""
    return isinstance(module_of(gm, node), nn.Identity)


def is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An activation (module, function or method) that maps each value on its own."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS
    return False


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A node in a word, as block reports list a branch: its module's class, else its method or function name."""
    mod = module_of(gm, node)
    if mod is not None:
        return type(mod).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The shape of a node's value as plain ints; None for a non-node or a node without one."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def module_calls(graph: fx.Graph) -> collections.Counter[str]:
    """How many times the graph calls each submodule (a module called twice is shared)."""
    return collections.Counter(str(node.target) for node in graph.nodes if node.op == "call_module")


def module_stack(node: fx.Node) -> list[tuple[str, str, Any]]:
    """[(key, qualified path, module class)], outermost first; [] for the root module's own code."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(key, value[0], value[1]) for key, value in stack.items()]


def class_name(module_type: Any) -> str:
    """The class name of an ``nn_module_stack`` entry's type (a class, or its string form)."""
    if isinstance(module_type, type):
        return module_type.__name__
    return str(module_type).rsplit(".", 1)[-1].strip("'>")


# -- channel splits (MixNet, Res2Net): read by discovery (min_k) and by surgery's literals

_SPLIT_FUNCTIONS = (torch.split, torch.Tensor.split, torch.split_with_sizes, torch.Tensor.split_with_sizes)
_SPLIT_METHODS = ("split", "split_with_sizes")


def argument(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    """A call's argument, given by position or by keyword."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def split_sizes(node: fx.Node) -> tuple[list[int], int | list[int]] | None:
    """(the parts, the size argument as written) of a channel split node, else None."""
    is_split = (node.op == "call_function" and node.target in _SPLIT_FUNCTIONS) or (
        node.op == "call_method" and node.target in _SPLIT_METHODS
    )
    if not is_split:
        return None
    source, sizes = node.args[0], argument(node, 1, "split_size_or_sections", argument(node, 1, "split_size"))
    dim, shape = argument(node, 2, "dim", 0), shape_of(source)
    if shape is None or not isinstance(dim, int) or dim % len(shape) != 1:
        return None
    if isinstance(sizes, int):
        whole, rest = divmod(shape[1], sizes)
        return [sizes] * whole + ([rest] if rest else []), sizes
    if isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes):
        return list(sizes), list(sizes)
    return None
