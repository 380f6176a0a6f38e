"""Installs MoD blocks where the plan says: the step that changes the model.

A block that is a module of its own (``layer3.1``) is replaced in the model itself, so the
converted model keeps its class, its other modules and their state_dict keys. A block written
inline in some ``forward`` (``out += identity`` in a user's model) has no module to replace; its
nodes are replaced in the traced graph instead, and the result is that GraphModule. Every graph
edit ends in `_finish`: lint, dead-code removal, unused-submodule removal, recompile.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from torch import fx, nn

from modify.conversion.actions import BlockBuilder, build_mod_block, planned_k
from modify.conversion.discover import FOUND_BLOCKS, BlockSite, SiteGraph, locate
from modify.conversion.plan import BlockPlan
from modify.conversion.surgery import SurgeryError
from modify.layers import MoDConfig
from modify.layers.options import Init

__all__ = ["ConvertedBlock", "SkippedBlock", "rewrite", "build_mod_block"]


@dataclasses.dataclass(frozen=True)
class ConvertedBlock:
    """A block the rewrite changed: a MoD block, a narrowed block, or its shortcut."""

    name: str  # the block's qualified name (or "<module>:<add node>" for an inline block)
    module: str  # where its MoDBlock now lives in the model
    block_type: str  # the original block's class, or "inline"
    stage: int  # stage and index in it, as discovered
    index: int
    channels: int  # C
    k: int  # channels the reduced block processes; a narrowed block's inner width at C; 0 when deleted
    rule: str | None  # the recipe rule that chose it
    action: str = "mod"  # mod | narrow | delete (`modify.conversion.recipe.BlockAction`)
    fraction: float | None = None  # narrow: the share of every inner width kept


@dataclasses.dataclass(frozen=True)
class SkippedBlock:
    """A residual block left as it was, and why."""

    name: str
    block_type: str
    stage: int
    index: int
    channels: int
    reason: str  # "projection shortcut ...", "not selected by the recipe", a surgery failure
    selected: bool  # a recipe rule chose it (so strict=True treats the skip as an error)


def _module_target(site: BlockSite) -> str | None:
    """The module path to replace, or None for an inline block."""
    return None if ":" in site.name or site.block_type == "inline" else site.name


def _inline_target(site: BlockSite) -> str:
    """Where an inline block's MoDBlock goes: beside the code it replaces ("stages.add_3_mod")."""
    path, _, node = site.name.rpartition(":")
    leaf = re.sub(r"\W", "_", f"{node or site.name}_mod")
    return f"{path}.{leaf}" if path else leaf


def _replace_in_graph(
    gm: fx.GraphModule, graph: SiteGraph, target: str, mod: nn.Module, replaced: dict[fx.Node, fx.Node]
) -> None:
    """Swaps one block's nodes for a call of ``mod`` (a MoD block, or a deleted block's shortcut).
    ``graph`` was located before any edit; ``replaced`` maps the outputs of blocks already swapped
    to their MoD calls, since a block's input may be the previous block's output."""
    fork = replaced.get(graph.fork, graph.fork)
    gm.set_submodule(target, mod)  # replaces the block module, or adds one beside inline code
    with gm.graph.inserting_after(graph.output):
        new = gm.graph.call_module(target, (fork,))
    if graph.inplace and graph.mutated is not None:
        # out.add_(identity): later readers of `out` see the sum; they now read the MoD block.
        for user in graph.users:
            user.replace_input_with(graph.mutated, new)
        replaced[graph.mutated] = new
    graph.output.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    replaced[graph.output] = new
    for node in reversed((*graph.branch, *graph.skip, graph.add, *graph.post)):
        if not node.users:
            gm.graph.erase_node(node)


def _finish(gm: fx.GraphModule) -> None:
    gm.meta.pop(FOUND_BLOCKS, None)  # discovery's records of the graph before these edits
    gm.graph.lint()
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def rewrite(
    model: nn.Module,
    gm: fx.GraphModule,
    plans: list[BlockPlan],
    *,
    config: MoDConfig,
    init: Init | str = Init.SCRATCH,
    build: Callable[[fx.GraphModule, BlockPlan, SiteGraph], nn.Module] | None = None,
) -> tuple[nn.Module, tuple[ConvertedBlock, ...], tuple[SkippedBlock, ...]]:
    """Replaces every planned block of ``model`` (traced as ``gm``) by a MoD block.

    ``model`` is changed in place (callers pass a copy); when an inline block is converted the
    returned model is ``gm``, rewritten, instead. Each planned block is replaced by what its
    action says (`modify.conversion.actions.BlockBuilder`); ``build`` replaces that builder.

    Returns:
        (the converted model, the converted blocks, the blocks left standard).
    """
    converted: list[ConvertedBlock] = []
    skipped: list[SkippedBlock] = []
    built: list[tuple[BlockPlan, SiteGraph, nn.Module]] = []
    build = build if build is not None else BlockBuilder(gm, config=config, init=init)
    for plan in plans:
        site = plan.site
        where = (site.name, site.block_type, site.stage, site.index, site.channels)
        if not plan.converted:
            # A rule chose it but it cannot be converted (projection shortcut, ...): strict=True fails.
            selected = plan.rule is not None and not site.convertible
            skipped.append(SkippedBlock(*where, reason=plan.reason or "", selected=selected))
            continue
        try:
            graph = locate(gm, site)
            made = build(gm, plan, graph)
            built.append((plan, graph, made))
        except SurgeryError as e:
            skipped.append(SkippedBlock(*where, reason=str(e), selected=True))

    inline = [p for p, _, _ in built if _module_target(p.site) is None]
    result: nn.Module = model
    if inline:
        # Module-level blocks are rewritten in the graph too, so one model holds every change.
        replaced: dict[fx.Node, fx.Node] = {}
        for plan, graph, mod in built:
            target = _module_target(plan.site) or _inline_target(plan.site)
            _replace_in_graph(gm, graph, target, mod, replaced)
            converted.append(_record(plan, target))
        _finish(gm)
        result = gm
    else:
        for plan, _, mod in built:
            model.set_submodule(plan.site.name, mod)
            converted.append(_record(plan, plan.site.name))
    return result, tuple(converted), tuple(skipped)


def _record(plan: BlockPlan, target: str) -> ConvertedBlock:
    s = plan.site
    return ConvertedBlock(
        s.name,
        target,
        s.block_type,
        s.stage,
        s.index,
        s.channels,
        planned_k(plan),
        plan.rule,
        action=str(plan.action),
        fraction=plan.fraction,
    )
