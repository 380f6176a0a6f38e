"""The facts about a traced graph that discovery reads: which nodes carry data, which ops are
residual adds, convolutions, weight ops and element-wise ops, and, for one add, the residual
branch, the shortcut and what follows the sum (`SiteGraph`). `modify.conversion.discover` turns
these into `BlockSite` records.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> add = next(n for n in gm.graph.nodes if n.name == "add_1")
    >>> found = _Analysis(gm).analyse(add)
    >>> found.graph.fork.name, [n.name for n in found.graph.post]
    ('layer1_0_relu_1', ['layer1_1_relu_1'])
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import operator
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn


__all__ = ["SiteGraph", "split_sizes", "shape_of"]


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
    {"size", "dim", "ndimension", "numel", "nelement", "get_device", "type", "new_zeros", "new_ones", "new_empty", "new_full"}
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


def _is_meta(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is builtins.getattr:
            return len(node.args) > 1 and node.args[1] in _META_ATTRIBUTES
        return node.target in _META_FUNCTIONS
    return False


def _data_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is computed from the inputs' values (graph order makes one pass enough)."""
    data: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            data.add(node)
        elif node.op in ("call_function", "call_method", "call_module") and not _is_meta(node):
            if any(i in data for i in node.all_input_nodes):
                data.add(node)
    return data


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(str(node.target))
    except AttributeError:
        return None


def _has_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _CONV_FUNCTIONS
    mod = _module(gm, node)
    if mod is None:
        return False
    if isinstance(mod, nn.modules.conv._ConvNd):
        return True
    # A user leaf holding convs counts; a MoDBlock is an already converted block, not a new one.
    from modify.layers import MoDBlock

    return not isinstance(mod, MoDBlock) and any(isinstance(m, nn.modules.conv._ConvNd) for m in mod.modules())


def _is_weight_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _WEIGHT_FUNCTIONS
    mod = _module(gm, node)
    return mod is not None and any(p.dim() >= 2 for p in mod.parameters())


def _has_params(gm: fx.GraphModule, node: fx.Node) -> bool:
    mod = _module(gm, node)
    if mod is not None:
        return any(True for _ in mod.parameters())
    # F.conv2d(x, self.weight) and friends: a parameter read through get_attr.
    return any(i.op == "get_attr" for i in node.all_input_nodes)


def _is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), nn.Identity)


def _is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS
    return False


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    mod = _module(gm, node)
    if mod is not None:
        return type(mod).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _stack(node: fx.Node) -> list[tuple[str, str, Any]]:
    """[(key, qualified path, module class)], outermost first; [] for the root module's own code."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(key, value[0], value[1]) for key, value in stack.items()]


def _class_name(module_type: Any) -> str:
    if isinstance(module_type, type):
        return module_type.__name__
    return str(module_type).rsplit(".", 1)[-1].strip("'>")


# ---------------------------------------------------------------------------------------------
# One add


@dataclasses.dataclass(frozen=True)
class _Found:
    """Everything learned about one residual Conv add before stages and names are assigned."""

    graph: SiteGraph
    alpha: float
    ancestors: frozenset[fx.Node]  # data ancestors of both operands (fork and pre-fork included)


class _Analysis:
    """Per-graph facts shared by every add: node order and the data-derived set."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.data = _data_nodes(gm.graph)

    def ancestors(self, node: fx.Node, *, data_only: bool = True) -> set[fx.Node]:
        seen = {node}
        todo = deque([node])
        while todo:
            for i in todo.popleft().all_input_nodes:
                if (i in self.data or not data_only) and i not in seen:
                    seen.add(i)
                    todo.append(i)
        return seen

    def descendants(self, node: fx.Node, limit: int, *, data_only: bool = True) -> set[fx.Node]:
        seen = {node}
        todo = deque([node])
        while todo:
            for u in todo.popleft().users:
                if (u in self.data or not data_only) and u not in seen and self.order[u] <= limit:
                    seen.add(u)
                    todo.append(u)
        return seen

    def parameter_only(self, node: fx.Node) -> bool:
        """A call computed from parameters and constants alone (no input reaches it)."""
        if node.op not in ("call_function", "call_method") or node in self.data:
            return False
        return all(i.op == "get_attr" or self.parameter_only(i) for i in node.all_input_nodes)

    def parameter_chains(self, nodes: Iterable[fx.Node]) -> set[fx.Node]:
        """The parameter-only calls that ``nodes`` read, directly or through each other."""
        chains: set[fx.Node] = set()
        todo = deque(i for n in nodes for i in n.all_input_nodes)
        while todo:
            i = todo.popleft()
            if i not in chains and self.parameter_only(i):
                chains.add(i)
                todo.extend(i.all_input_nodes)
        return chains

    def checks(self, nodes: Iterable[fx.Node], limit: int) -> set[fx.Node]:
        """The non-tensor calls before ``limit`` that read ``nodes`` and feed only each other
        (shape assertions): closed clusters that end in calls nothing reads."""
        cluster: set[fx.Node] = set()
        todo = deque(u for n in nodes for u in n.users)
        while todo:
            u = todo.popleft()
            if u in cluster or u in self.data or u.op not in ("call_function", "call_method") or self.order[u] > limit:
                continue
            cluster.add(u)
            todo.extend(u.users)
        closed = {u for u in cluster if all(v in cluster for v in u.users)}
        while True:  # drop nodes some of whose readers were dropped
            kept = {u for u in closed if all(v in closed for v in u.users)}
            if kept == closed:
                return closed
            closed = kept

    def candidate(self, node: fx.Node) -> tuple[fx.Node, fx.Node, float, bool] | None:
        """(first operand, second operand, alpha, in place) if ``node`` is a two-tensor add."""
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            inplace = node.target in _INPLACE_FUNCTIONS
        elif node.op == "call_method" and node.target in _ADD_METHODS:
            inplace = node.target == "add_"
        else:
            return None
        if len(node.args) < 2:
            return None
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            return None
        if a not in self.data or b not in self.data:
            return None  # a bias / position embedding / metadata operand
        shape_a, shape_b = _shape(a), _shape(b)
        if shape_a is None or shape_a != shape_b:
            return None  # broadcasting adds are not residuals
        alpha_arg = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
        alpha = float(alpha_arg) if isinstance(alpha_arg, (int, float)) else math.nan
        return a, b, alpha, inplace

    def analyse(self, node: fx.Node) -> _Found | None:
        """The SiteGraph of ``node`` if it is a residual add with a conv on its branch."""
        cand = self.candidate(node)
        if cand is None:
            return None
        a, b, alpha, inplace = cand
        anc_a, anc_b = self.ancestors(a), self.ancestors(b)
        common = anc_a & anc_b
        if not common:
            return None  # two independent inputs: not a skip connection
        fork = max(common, key=self.order.__getitem__)
        if _shape(fork) is None:
            # The operands are parts of one split (Res2Net's `sp = sp + spx[i]`): an add inside
            # a branch, not a block's residual add.
            return None
        desc = self.descendants(fork, self.order[node])
        by_order = self.order.__getitem__
        path_a = sorted((anc_a & desc) - {fork}, key=by_order)
        path_b = sorted((anc_b & desc) - {fork}, key=by_order)
        weights_a = sum(_is_weight_op(self.gm, n) for n in path_a)
        weights_b = sum(_is_weight_op(self.gm, n) for n in path_b)
        # The residual branch carries more weight ops; on a tie the longer path, then operand 0.
        if (weights_b, len(path_b)) > (weights_a, len(path_a)):
            branch, skip = path_b, path_a
        else:
            branch, skip = path_a, path_b
        if not any(_has_conv(self.gm, n) for n in branch):
            return None
        # The metadata ops a path reads off the fork (`b, c, _, _ = x.size()` in an SE block,
        # feeding a view) belong to it too: a rewrite that cuts the branch out needs them.
        # A metadata node both paths read is listed once, on the branch.
        reach = self.descendants(fork, self.order[node], data_only=False)
        operand, other = (branch[-1], skip[-1] if skip else fork)
        branch = sorted((self.ancestors(operand, data_only=False) & reach) - {fork}, key=by_order)
        # Parameters the branch transforms in its forward (ConvNeXt's `self.gamma.reshape(1, -1, 1,
        # 1)`) are nodes of their own that read no input: they belong to the branch and shrink with it.
        branch = sorted({*branch, *self.parameter_chains(branch)}, key=by_order)
        # Checks on the branch's values (`torch._assert(x.ndim == 4)` in timm's norm layers) read
        # its tensors but feed nothing: they go where the branch goes.
        branch = sorted({*branch, *self.checks(branch, self.order[node])}, key=by_order)
        if skip:
            skip = sorted((self.ancestors(other, data_only=False) & reach) - {fork} - set(branch), key=by_order)
        post, users = self._post(node, a if inplace else None)
        graph = SiteGraph(
            fork=fork,
            add=node,
            branch=tuple(branch),
            skip=tuple(skip),
            post=tuple(post),
            output=post[-1] if post else node,
            users=tuple(users),
            inplace=inplace,
            mutated=a if inplace else None,
        )
        return _Found(graph=graph, alpha=alpha, ancestors=frozenset(anc_a | anc_b))

    def _readers(self, value: fx.Node, add: fx.Node, mutated: fx.Node | None) -> list[fx.Node]:
        """Nodes that read the tensor ``value`` holds; for an in-place add also the later readers
        of the mutated operand, which see the sum."""
        readers = list(value.users)
        if value is add and mutated is not None:
            readers += [u for u in mutated.users if self.order[u] > self.order[add] and u not in readers]
        return sorted(readers, key=self.order.__getitem__)

    def _post(self, add: fx.Node, mutated: fx.Node | None) -> tuple[list[fx.Node], list[fx.Node]]:
        """Element-wise ops right after the add in the add's own forward (same module scope)."""
        scope = [key for key, _, _ in _stack(add)]
        post: list[fx.Node] = []
        value = add
        readers = self._readers(add, add, mutated)
        while len(readers) == 1:
            user = readers[0]
            operand = mutated if (value is add and mutated is not None and add not in user.all_input_nodes) else value
            inputs = [i for i in user.all_input_nodes if i in self.data]
            keys = [key for key, _, _ in _stack(user)]
            same_scope = keys == scope or (user.op == "call_module" and keys[:-1] == scope)
            if inputs != [operand] or not same_scope or not _is_elementwise(self.gm, user):
                break
            post.append(user)
            value = user
            readers = self._readers(user, add, mutated)
        return post, readers


# -- channel splits (MixNet, Res2Net): read by discovery (min_k) and by surgery's literals

_SPLIT_FUNCTIONS = (torch.split, torch.Tensor.split, torch.split_with_sizes, torch.Tensor.split_with_sizes)
_SPLIT_METHODS = ("split", "split_with_sizes")


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The shape of a node's value as plain ints; None for a non-node or a node without one."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


_shape_ints = shape_of  # the name the surgery modules import


def _arg(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
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
    source, sizes = node.args[0], _arg(node, 1, "split_size_or_sections", _arg(node, 1, "split_size"))
    dim, shape = _arg(node, 2, "dim", 0), _shape_ints(source)
    if shape is None or not isinstance(dim, int) or dim % len(shape) != 1:
        return None
    if isinstance(sizes, int):
        whole, rest = divmod(shape[1], sizes)
        return [sizes] * whole + ([rest] if rest else []), sizes
    if isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes):
        return list(sizes), list(sizes)
    return None
