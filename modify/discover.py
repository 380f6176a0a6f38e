"""Residual Conv-Blocks in a traced graph -> `BlockSite` records.

Detection follows the fx catalog's rule (docs: fx-catalog.md, "Cleanest detection rule"):

1. Candidates are residual adds: ``operator.add`` / ``operator.iadd`` / ``torch.add`` /
   ``Tensor.add`` / ``Tensor.add_`` with two operands that are fx Nodes, both *data-derived*
   (reachable from a placeholder through data edges; ``size()``, ``.shape``, ``*_like`` and
   ``get_attr`` are not data), of equal shape. This drops bias and position-embedding adds.
2. The fork (block input) is the latest common data ancestor of both operands; the residual
   branch and the shortcut are the nodes between the fork and each operand. The path with more
   weight ops (conv / linear) is the branch.
3. The add is a residual Conv-Block if its branch holds at least one convolution (this drops
   transformer blocks), and it is not long-range: an add whose branch or shortcut contains
   another residual Conv add spans several blocks (FPN top-down merges) and is not returned.
4. The block is the innermost ``nn_module_stack`` entry of the add node.

In-place adds: ``out.add_(identity)`` gives an fx node with no users; the tensor it produced is
the mutated first operand ``out``, which later nodes read. `locate` treats the add node as the
block output (`SiteGraph.output`) and lists the later readers of the mutated operand as the
block's consumers (`SiteGraph.users`); a rewrite must redirect those readers, not the add's
(nonexistent) users.

Example:
    >>> import torchvision
    >>> from modify.tracing import trace
    >>> gm = trace(torchvision.models.resnet50(weights=None), input_size=64)
    >>> sites = find_blocks(gm)
    >>> [s.name for s in sites if s.convertible and s.index % 2 == 1]
    ['layer1.1', 'layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5', 'layer4.1']
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import math
import operator
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.channel_literals import split_sizes
from modify.errors import ModifyError

__all__ = ["BlockSite", "SkipKind", "SiteGraph", "find_blocks", "locate"]


class SkipKind(str, enum.Enum):
    """How the block input reaches the residual add."""

    IDENTITY = "identity"  # the fork node itself is an operand of the add
    PROJECTION = "projection"  # a module (1x1 conv + BN, ...) maps the input onto the add
    PARAM_FREE = "param_free"  # a parameter-free op (zero-pad "option A", pooling, slicing)


@dataclasses.dataclass(frozen=True)
class BlockSite:
    """One residual Conv-Block found in a model.

    Example:
        >>> site = BlockSite(name="layer1.1", stage=0, index=1, channels=256, height=56, width=56,
        ...                  stride=1, skip=SkipKind.IDENTITY, branch=("conv1", "bn1"), block_type="Bottleneck")
        >>> site.convertible
        True
    """

    name: str  # qualified name of the block module; "<module>:<add node>" for an inline add
    stage: int  # 0-based stage: a contiguous run of sites with the same channels and spatial size
    index: int  # 0-based index in the stage; 0 is the stage's entry (downsampling) block
    channels: int  # C at the block output (= its input where convertible)
    height: int  # output spatial size, from shape propagation
    width: int
    stride: int  # input size / output size along H (1 for convertible blocks)
    skip: SkipKind  # identity, projection or parameter-free shortcut
    branch: tuple[str, ...]  # what the residual branch holds: module types / op names in order
    block_type: str  # class name of the block module ("Bottleneck"), or "inline"
    in_channels: int = 0  # C at the block input (0 = same as channels)
    reason: str | None = None  # why it cannot be converted; None when it can
    node: str = ""  # name of the residual add node in the traced graph ("" = unknown); `locate` uses it
    alpha: float = 1.0  # scale of the branch operand in torch.add(..., alpha=...); 1 for a plain add
    min_k: int = 1  # the narrowest width its branch can run at: the most parts a channel split makes

    @property
    def convertible(self) -> bool:
        return self.reason is None


@dataclasses.dataclass(frozen=True)
class SiteGraph:
    """The fx nodes of one residual block, as a rewrite needs them.

    ``branch`` and ``skip`` hold the nodes between the fork and each add operand, in graph
    (topological) order: the ops on the tensor values and the metadata ops they read off the
    fork (``x.size()`` and the ``getitem`` on it, in an SE block); ``get_attr`` nodes they read,
    such as ConvNeXt's layer scale, are not listed. `BlockSite.branch` describes the value ops only.

    Example:
        >>> import torchvision
        >>> from modify.tracing import trace
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


# ---------------------------------------------------------------------------------------------
# Public API


def _require_shapes(gm: fx.GraphModule) -> None:
    if not isinstance(gm, fx.GraphModule):
        raise ModifyError(
            f"expected a torch.fx.GraphModule, got {type(gm).__name__}; trace the model first: "
            "gm = modify.tracing.trace(model)."
        )
    if not any("tensor_meta" in n.meta for n in gm.graph.nodes):
        raise ModifyError(
            "the graph carries no shapes (node.meta['tensor_meta']); trace it with modify.tracing.trace(model), "
            "which runs shape propagation."
        )


def _residual_adds(gm: fx.GraphModule, analysis: _Analysis | None = None) -> list[_Found]:
    """Every block-level residual Conv add in graph order (long-range adds dropped)."""
    analysis = analysis or _Analysis(gm)
    conv_adds: set[fx.Node] = set()  # accepted and long-range: both make an outer add long-range
    found: list[_Found] = []
    for node in gm.graph.nodes:
        item = analysis.analyse(node)
        if item is None:
            continue
        spans = set(item.graph.branch) | set(item.graph.skip)
        long_range = bool(spans & conv_adds)
        conv_adds.add(node)
        if item.graph.mutated is not None:
            # An add_ node has no users, so no later path runs through it; the mutated operand
            # it writes the sum into stands for it.
            conv_adds.add(item.graph.mutated)
        if not long_range:
            found.append(item)
    return found


def _skip_kind(gm: fx.GraphModule, skip: Iterable[fx.Node], data: set[fx.Node]) -> SkipKind:
    real = [n for n in skip if n in data and not _is_noop(gm, n)]
    if not real:
        return SkipKind.IDENTITY
    if any(_has_params(gm, n) for n in real):
        return SkipKind.PROJECTION
    return SkipKind.PARAM_FREE


def _dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an (N, C, *spatial) shape; H = 1 for 1-D, the last two dims for 3-D."""
    channels = shape[1] if len(shape) > 1 else 1
    spatial = shape[2:]
    height = spatial[-2] if len(spatial) >= 2 else 1
    width = spatial[-1] if spatial else 1
    return channels, height, width


def _reason(
    gm: fx.GraphModule,
    g: SiteGraph,
    data: set[fx.Node],
    kind: SkipKind,
    alpha: float,
    cin: int,
    hin: int,
    win: int,
    dims: tuple[int, int, int],
) -> str | None:
    channels, height, width = dims
    stride = hin // height if height else 1
    real_skip = " + ".join(_describe(gm, n) for n in g.skip if n in data and not _is_noop(gm, n))
    if alpha != 1:
        return f"scaled add (alpha={alpha:g}): the MoD fusion assumes a plain sum"
    escape = _escaping_value(g, data)
    if escape is not None:
        inner, reader = escape
        return (
            f"the branch's {inner.name!r} is also read outside the block (by {reader.name!r}): a residual onto "
            "part of the block's output (ReXNet's x[:, :C_in] + shortcut) cannot shrink to k channels"
        )
    if kind is SkipKind.PROJECTION:
        return f"projection shortcut ({real_skip}): the first block of a stage keeps its full width"
    if kind is SkipKind.PARAM_FREE and (cin, hin, win) != dims:
        return f"parameter-free shortcut changes the shape ({cin}x{hin}x{win} -> {channels}x{height}x{width}, {real_skip})"
    if cin != channels:
        return f"changes width {cin} -> {channels}"
    if stride != 1:
        return f"stride {stride}"
    if kind is SkipKind.PARAM_FREE:
        return f"parameter-free shortcut ({real_skip}) is not an identity: only identity shortcuts are converted"
    return None


def _min_width(g: SiteGraph) -> int:
    """The most parts any channel split of the branch makes (MixNet's mixed kernels: 2 to 4)."""
    counts = [len(found[0]) for found in map(split_sizes, g.branch) if found is not None]
    return max(counts, default=1)


def _is_dead(node: fx.Node) -> bool:
    """An unread item of a tuple (Res2Net's "redundant, for torchscript" ``sp = spx[0]``)."""
    return not node.users and node.op == "call_function" and node.target is operator.getitem


def _escaping_value(g: SiteGraph, data: set[fx.Node]) -> tuple[fx.Node, fx.Node] | None:
    """(a branch node, a reader of it outside the block), if the branch's values leave the block
    other than through the add."""
    inside = {*g.branch, g.add, *g.post, *g.users}
    for node in g.branch:
        if node not in data:
            continue
        for user in node.users:
            if user not in inside and user in data and not _is_dead(user):
                return node, user
    return None


def find_blocks(gm: fx.GraphModule) -> list[BlockSite]:
    """Every residual Conv-Block of a traced model, in graph order.

    Args:
        gm: a GraphModule from `modify.tracing.trace` (it needs ``tensor_meta`` on its nodes).

    Returns:
        One `BlockSite` per block-level residual add whose branch holds a convolution; sites
        that cannot be converted carry a ``reason``. Stages and indices follow the paper's
        "MoD at odd indices" convention: a stage opened by a transition block (projection,
        stride, width change) starts at index 0; a stage whose entry is a sibling block of the same
        class without a residual add (MobileNetV2, EfficientNet) starts at 1; a stage entered from
        a different module (the stem before ResNet18's ``layer1``, ConvNeXt's downsampling layers)
        starts at 0.

    Raises:
        ModifyError: ``gm`` is not a GraphModule or carries no shapes.

    Example:
        >>> import torchvision
        >>> from modify.tracing import trace
        >>> gm = trace(torchvision.models.mobilenet_v2(weights=None), input_size=64)
        >>> [s.name for s in find_blocks(gm) if s.index % 2 == 1]
        ['features.3', 'features.5', 'features.8', 'features.10', 'features.12', 'features.15']
    """
    _require_shapes(gm)
    analysis = _Analysis(gm)
    found = _residual_adds(gm, analysis)

    # Names: the block module's path, unless that path is shared (module reuse, several adds in
    # one forward) or the module does more than this block (an inline add).
    paths: list[tuple[str, str, bool]] = []  # (path, class name, the module is only this block)
    for item in found:
        g = item.graph
        stack = _stack(g.add)
        if not stack:
            paths.append(("", "inline", False))
            continue
        key, path, module_type = stack[-1]
        allowed = item.ancestors | {g.add} | set(g.post)
        in_scope = [
            n for n in gm.graph.nodes
            if n in analysis.data and not _is_dead(n) and any(k == key for k, _, _ in _stack(n))
        ]  # fmt: skip
        # A module is the block only if it computes nothing else and has one input (DLA calls a
        # block as `tree1(x, shortcut)`: a module of two inputs is rewritten inline).
        scope = set(in_scope)
        reads = {i for n in in_scope for i in n.all_input_nodes if i in analysis.data and i not in scope}
        only = all(n in allowed for n in in_scope) and len(reads) <= 1
        paths.append((path, _class_name(module_type), only))
    shared = Counter(path for path, _, _ in paths)

    sites: list[BlockSite] = []
    stage, index, previous = -1, 0, None
    for item, (path, cls, only) in zip(found, paths):
        g = item.graph
        if path and only and shared[path] == 1:
            name = path
        else:
            name = f"{path}:{g.add.name}" if path else g.add.name
        block_type = cls if only else "inline"
        out_shape, in_shape = _shape(g.add), _shape(g.fork)
        assert out_shape is not None  # candidates have shapes
        dims = _dims(out_shape)
        if in_shape is not None and len(in_shape) == len(out_shape):
            cin, hin, win = _dims(in_shape)
        else:  # the fork has another layout (tokens, say): no stride to speak of
            cin, hin, win = dims
        kind = _skip_kind(gm, g.skip, analysis.data)
        reason = _reason(gm, g, analysis.data, kind, item.alpha, cin, hin, win, dims)
        # Stages: a new one at every change of (C, H, W) and at every non-convertible site.
        if previous is None or reason is not None or dims != previous:
            stage += 1
            index = 0 if reason is not None else _entry_index(g.fork, path if only else "", cls)
        else:
            index += 1
        previous = dims
        sites.append(
            BlockSite(
                name=name,
                stage=stage,
                index=index,
                channels=dims[0],
                height=dims[1],
                width=dims[2],
                stride=max(1, hin // dims[1]) if dims[1] else 1,
                skip=kind,
                branch=tuple(_describe(gm, n) for n in g.branch if n in analysis.data),
                block_type=block_type,
                in_channels=cin,
                reason=reason,
                node=g.add.name,
                alpha=item.alpha,
                min_k=_min_width(g),
            )
        )
    return sites


def _entry_index(fork: fx.Node, path: str, cls: str) -> int:
    """Index of a stage's first convertible block: 1 when the stage's entry (downsampling) block
    was a sibling of the same class without a residual add (MobileNetV2's and EfficientNet's
    first block of a stage), else 0 (ResNet18's layer1.0 follows the stem; ConvNeXt's stages
    follow a separate downsampling layer). An inline block counts its entry as block 0.
    """
    if not path:
        return 1
    parent = path.rpartition(".")[0]
    for _key, p, module_type in _stack(fork):
        if p != path and p.rpartition(".")[0] == parent and _class_name(module_type) == cls:
            return 1
    return 0


def locate(gm: fx.GraphModule, site: BlockSite) -> SiteGraph:
    """The fx nodes of ``site`` in ``gm``: fork, branch, skip, add, post ops and consumers.

    Args:
        gm: the GraphModule ``site`` was found in (or a re-trace of the same model).
        site: a record from `find_blocks`; matched by its add node name, else by its name.

    Raises:
        ModifyError: no residual Conv-Block of ``gm`` matches ``site``.

    Example:
        >>> import torchvision
        >>> from modify.tracing import trace
        >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=64)
        >>> g = locate(gm, find_blocks(gm)[1])
        >>> [n.name for n in g.branch]
        ['layer1_1_conv1', 'layer1_1_bn1', 'layer1_1_relu', 'layer1_1_conv2', 'layer1_1_bn2']
    """
    _require_shapes(gm)
    if site.node:
        node = next((n for n in gm.graph.nodes if n.name == site.node), None)
        if node is not None:
            found = _Analysis(gm).analyse(node)
            if found is not None:
                return found.graph
    for candidate, item in zip(find_blocks(gm), _residual_adds(gm)):
        if candidate.name == site.name:
            return item.graph
    raise ModifyError(
        f"block {site.name!r} is not a residual Conv-Block of this graph; run find_blocks(gm) on the same "
        "traced model to see the blocks it holds."
    )
