"""The module that replaces a planned block, one builder for every action of a plan.

- ``mod``: a MoD block, its reduced block cut from the original and shrunk to width k
  (`build_mod_block`);
- ``narrow``: the block at full width with its branch's inner widths cut
  (`modify.conversion.surgery.narrow`), as a `modify.layers.ReducedBlock`;
- ``delete``: the block's shortcut and post-add ops (`modify.layers.Shortcut`), or nothing at
  all (`nn.Identity`) where the post-add ReLU provably sees non-negative values.

`BlockBuilder` keeps what one rewrite has decided so far: a deleted block's post-add ReLU is the
identity only when its input is a ReLU's output that stays one, so a block whose predecessor
became a MoD block (whose output is no ReLU's) keeps its ReLU.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks, locate
    >>> from modify.conversion.plan import BlockPlan
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> site = find_blocks(gm)[1]
    >>> build = BlockBuilder(gm, config=MoDConfig())
    >>> type(build(gm, BlockPlan(site, k=None, rule=None, reason=None, action="delete"), locate(gm, site))).__name__
    'Identity'
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.conversion.discover import SiteGraph
from modify.conversion.plan import BlockPlan
from modify.conversion.recipe import BlockAction
from modify.conversion.surgery import SurgeryError, cut, reduced_parts
from modify.conversion.surgery.narrow import narrow_width, narrowed_branch
from modify.layers import BlockForm, MoDBlock, MoDConfig, ReducedBlock, Shortcut
from modify.layers.options import Init

__all__ = ["BlockBuilder", "build_mod_block", "build_narrowed_block", "planned_k"]

_RELUS = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_, F.relu6)


def build_mod_block(
    gm: fx.GraphModule, plan: BlockPlan, graph: SiteGraph, config: MoDConfig, init: Init | str
) -> MoDBlock:
    """The MoD block replacing one discovered block, its reduced block cut from ``gm``."""
    site = plan.site
    assert plan.k is not None
    branch, post_k, post_full = reduced_parts(
        gm, graph, channels=site.channels, k=plan.k, height=site.height, width=site.width, init=init
    )
    if config.form is BlockForm.WHOLE:
        mod = MoDBlock.from_config(site.channels, plan.k, ReducedBlock(branch, post_k, source=site.block_type), config)
    else:
        mod = MoDBlock.from_config(site.channels, plan.k, branch, config, post=post_full)
    # The selector is new: give it the model's device and dtype, as the reduced block has.
    reference = next((t for t in branch.parameters()), None)
    return mod if reference is None else mod.to(device=reference.device, dtype=reference.dtype)


def build_narrowed_block(gm: fx.GraphModule, plan: BlockPlan, graph: SiteGraph) -> ReducedBlock:
    """The block at full width, its branch's inner widths cut to ``plan.fraction``."""
    site = plan.site
    assert plan.fraction is not None
    if graph.skip:
        raise SurgeryError("narrow keeps the block's identity shortcut, and this block's shortcut computes something")
    branch = narrowed_branch(gm, graph, share=plan.fraction, height=site.height, width=site.width)
    post = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd") if graph.post else None
    return ReducedBlock(branch, post, source=f"{site.block_type} narrowed")


def planned_k(plan: BlockPlan) -> int:
    """The k a report shows: a MoD block's k, a narrowed block's inner width at the block's
    own width (``fraction`` of C), 0 for a deleted block."""
    if plan.action is BlockAction.MOD:
        assert plan.k is not None
        return plan.k
    if plan.action is BlockAction.NARROW:
        assert plan.fraction is not None
        return narrow_width(plan.site.channels, plan.fraction)
    return 0


def _is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RELUS)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


class BlockBuilder:
    """Builds the replacement of each planned block of one traced model, by its action."""

    def __init__(self, gm: fx.GraphModule, *, config: MoDConfig, init: Init | str = Init.SCRATCH) -> None:
        self.config = config
        self.init = init
        self.modules = dict(gm.named_modules())
        self.nonnegative: set[fx.Node] = set()  # outputs of deleted blocks whose value is >= 0
        self.not_relu: set[fx.Node] = set()  # ReLU outputs of the original that a MoD block now computes

    def __call__(self, gm: fx.GraphModule, plan: BlockPlan, graph: SiteGraph) -> nn.Module:
        if plan.action is BlockAction.MOD:
            self.not_relu.add(graph.output)
            return build_mod_block(gm, plan, graph, self.config, self.init)
        if plan.action is BlockAction.NARROW:
            return build_narrowed_block(gm, plan, graph)
        if plan.action is BlockAction.DELETE:
            return self._shortcut(gm, graph)
        raise SurgeryError(f"nothing to build for a block whose action is {plan.action}")

    def _known_nonnegative(self, node: fx.Node) -> bool:
        """Whether ``node``'s value is known to be >= 0 in the rewritten model: a ReLU's output
        (not replaced by a MoD block), or the output of a block deleted before whose input was."""
        relu = _is_relu(node, self.modules) and node not in self.not_relu
        return relu or node in self.nonnegative

    def _shortcut(self, gm: fx.GraphModule, graph: SiteGraph) -> nn.Module:
        skip = cut(gm, graph.fork, graph.skip, graph.skip_operand, name="Skip") if graph.skip else None
        post = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd") if graph.post else None
        relu_only = len(graph.post) == 1 and _is_relu(graph.post[0], self.modules)
        fork_nonneg = self._known_nonnegative(graph.fork)
        if skip is None and relu_only and fork_nonneg:
            post = None  # relu(x) == x for x >= 0
        if skip is None and (relu_only or (not graph.post and fork_nonneg)):
            self.nonnegative.add(graph.output)  # a ReLU's output, or a non-negative input passed through
        return nn.Identity() if skip is None and post is None else Shortcut(skip, post)
