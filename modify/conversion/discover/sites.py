"""The blocks of a traced graph as records (`BlockSite`): each residual add that
`modify.conversion.discover.adds` found, named for its module, placed in a stage and given an
index there, with the reason it cannot be converted; `locate` finds a record's nodes again.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> gm = trace(torchvision.models.resnet50(weights=None), input_size=64)
    >>> sites = find_blocks(gm)
    >>> [s.name for s in sites if s.convertible and s.index % 2 == 1]
    ['layer1.1', 'layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5', 'layer4.1']
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections import Counter
from collections.abc import Iterable

from torch import fx

from modify.conversion.discover.adds import AddAnalysis, residual_adds
from modify.conversion.graph import (
    SiteGraph,
    class_name,
    describe,
    has_params,
    is_noop,
    module_stack,
    shape_of,
    split_sizes,
)
from modify.errors import ModifyError

__all__ = ["BlockSite", "SkipKind", "SiteGraph", "find_blocks", "locate", "FOUND_BLOCKS"]

# gm.meta key of {add node name: SiteGraph} from the graph's last `find_blocks`, so that `locate`
# (once per planned block) does not analyse the graph again. Kept on the GraphModule itself, it
# lives and dies with it (a global cache would keep every traced model alive through its nodes).
FOUND_BLOCKS = "modify_found_blocks"


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


def _require_shapes(gm: fx.GraphModule) -> None:
    if not isinstance(gm, fx.GraphModule):
        raise ModifyError(
            f"expected a torch.fx.GraphModule, got {type(gm).__name__}; trace the model first: "
            "gm = modify.conversion.tracing.trace(model)."
        )
    if not any("tensor_meta" in n.meta for n in gm.graph.nodes):
        raise ModifyError(
            "the graph carries no shapes (node.meta['tensor_meta']); "
            "trace it with modify.conversion.tracing.trace(model), "
            "which runs shape propagation."
        )


def _skip_kind(gm: fx.GraphModule, skip: Iterable[fx.Node], data: set[fx.Node]) -> SkipKind:
    real = [n for n in skip if n in data and not is_noop(gm, n)]
    if not real:
        return SkipKind.IDENTITY
    if any(has_params(gm, n) for n in real):
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
    real_skip = " + ".join(describe(gm, n) for n in g.skip if n in data and not is_noop(gm, n))
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
        return (
            f"parameter-free shortcut changes the shape ({cin}x{hin}x{win} -> {channels}x{height}x{width}, {real_skip})"
        )
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
        gm: a GraphModule from `modify.conversion.tracing.trace` (it needs ``tensor_meta`` on its nodes).

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
        >>> from modify.conversion.tracing import trace
        >>> gm = trace(torchvision.models.mobilenet_v2(weights=None), input_size=64)
        >>> [s.name for s in find_blocks(gm) if s.index % 2 == 1]
        ['features.3', 'features.5', 'features.8', 'features.10', 'features.12', 'features.15']
    """
    _require_shapes(gm)
    analysis = AddAnalysis(gm)
    found = residual_adds(gm, analysis)
    gm.meta[FOUND_BLOCKS] = {item.graph.add.name: item.graph for item in found}  # `locate` reads these back

    # Names: the block module's path, unless that path is shared (module reuse, several adds in
    # one forward) or the module does more than this block (an inline add).
    paths: list[tuple[str, str, bool]] = []  # (path, class name, the module is only this block)
    for item in found:
        g = item.graph
        stack = module_stack(g.add)
        if not stack:
            paths.append(("", "inline", False))
            continue
        key, path, module_type = stack[-1]
        allowed = item.ancestors | {g.add} | set(g.post)
        in_scope = [
            n
            for n in gm.graph.nodes
            if n in analysis.data and not _is_dead(n) and any(k == key for k, _, _ in module_stack(n))
        ]
        # A module is the block only if it computes nothing else and has one input (DLA calls a
        # block as `tree1(x, shortcut)`: a module of two inputs is rewritten inline).
        scope = set(in_scope)
        reads = {i for n in in_scope for i in n.all_input_nodes if i in analysis.data and i not in scope}
        only = all(n in allowed for n in in_scope) and len(reads) <= 1
        paths.append((path, class_name(module_type), only))
    shared = Counter(path for path, _, _ in paths)

    sites: list[BlockSite] = []
    stage, index, previous = -1, 0, None
    for item, (path, cls, only) in zip(found, paths, strict=True):
        g = item.graph
        if path and only and shared[path] == 1:
            name = path
        else:
            name = f"{path}:{g.add.name}" if path else g.add.name
        block_type = cls if only else "inline"
        out_shape, in_shape = shape_of(g.add), shape_of(g.fork)
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
                branch=tuple(describe(gm, n) for n in g.branch if n in analysis.data),
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
    for _key, p, module_type in module_stack(fork):
        if p != path and p.rpartition(".")[0] == parent and class_name(module_type) == cls:
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
        >>> from modify.conversion.tracing import trace
        >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=64)
        >>> g = locate(gm, find_blocks(gm)[1])
        >>> [n.name for n in g.branch]
        ['layer1_1_conv1', 'layer1_1_bn1', 'layer1_1_relu', 'layer1_1_conv2', 'layer1_1_bn2']
    """
    _require_shapes(gm)
    known = gm.meta.get(FOUND_BLOCKS, {}).get(site.node)
    if known is not None and known.add.graph is gm.graph and not getattr(known.add, "_erased", False):
        return known  # found by find_blocks on this graph, which has not lost the block since
    if site.node:
        node = next((n for n in gm.graph.nodes if n.name == site.node), None)
        if node is not None:
            found = AddAnalysis(gm).analyse(node)
            if found is not None:
                return found.graph
    for candidate, item in zip(find_blocks(gm), residual_adds(gm), strict=True):
        if candidate.name == site.name:
            return item.graph
    raise ModifyError(
        f"block {site.name!r} is not a residual Conv-Block of this graph; run find_blocks(gm) on the same "
        "traced model to see the blocks it holds."
    )
