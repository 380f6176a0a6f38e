"""Depth pruning: the residual blocks a recipe selects replaced by their shortcut.

The baseline a conversion has to beat first: a converted block that adds nothing over its
shortcut is a deleted block that still costs time. The same discovery and the same recipes as
`modify.convert` choose the blocks, so ``delete_blocks(model, recipe="every_other")`` removes
exactly the blocks ``convert(model, recipe="every_other")`` converts.

A deleted block computes what the original block computes without its residual branch: its
shortcut (identity, or a parameter-free op), then whatever the block applies after its add
(ResNet's final ReLU). Where that is a ReLU on an input that is already a ReLU's output, it is
the identity and the block becomes `nn.Identity` (nothing runs).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.conversion.discover import BlockSite, SiteGraph
from modify.errors import ConversionError
from modify.conversion.pipeline import _example, traced_sites
from modify.conversion.plan import BlockPlan, plan, resolve_recipe
from modify.conversion.recipe import Recipe
from modify.conversion.rewrite import ConvertedBlock, SkippedBlock, rewrite
from modify.conversion.surgery import cut
from modify.conversion.tracing import LeafSpec
from modify.io import provenance

__all__ = ["DeletionResult", "Shortcut", "delete_blocks", "replay"]

_RELUS = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_, F.relu6)


class Shortcut(nn.Module):
    """A deleted residual block: ``post(skip(x))``, its shortcut and its post-add ops.

    Example:
        >>> block = Shortcut(post=nn.ReLU())
        >>> block(torch.tensor([[-1.0, 2.0]])).tolist()
        [[0.0, 2.0]]
    """

    def __init__(self, skip: nn.Module | None = None, post: nn.Module | None = None) -> None:
        super().__init__()
        self.skip = skip if skip is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.skip(x))  # (N, C, H, W)


@dataclasses.dataclass(frozen=True)
class DeletionResult:
    """What `delete_blocks` did; shaped like `modify.ConversionResult`.

    Example:
        >>> import torchvision
        >>> result = delete_blocks(torchvision.models.resnet18(weights=None), input_size=64)
        >>> [b.name for b in result.deleted], type(result.model.layer1[1]).__name__
        (['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1'], 'Identity')
    """

    model: nn.Module  # the model without the deleted blocks
    deleted: tuple[ConvertedBlock, ...]  # blocks replaced by their shortcut (k = 0)
    skipped: tuple[SkippedBlock, ...]  # residual blocks kept, with reasons
    recipe: Recipe  # the recipe that chose them (its capacities are unused)
    input_shape: tuple[int, ...]
    sites: tuple[BlockSite, ...] = ()

    @property
    def converted(self) -> tuple[ConvertedBlock, ...]:  # the name the rest of modify reads
        return self.deleted


def _is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RELUS)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _nonnegative(node: fx.Node, modules: Mapping[str, nn.Module], deleted: set[fx.Node]) -> bool:
    """Whether ``node``'s value is known to be >= 0: a ReLU's output, or the output of a block
    deleted before this one whose own input was."""
    return _is_relu(node, modules) or node in deleted


def _builder(gm: fx.GraphModule) -> Any:
    modules = dict(gm.named_modules())
    nonneg_outputs: set[fx.Node] = set()

    def build(gm: fx.GraphModule, plan: BlockPlan, graph: SiteGraph) -> nn.Module:
        skip = cut(gm, graph.fork, graph.skip, graph.skip_operand, name="Skip") if graph.skip else None
        post = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd") if graph.post else None
        relu_only = len(graph.post) == 1 and _is_relu(graph.post[0], modules)
        fork_nonneg = _nonnegative(graph.fork, modules, nonneg_outputs)
        if skip is None and relu_only and fork_nonneg:
            post = None  # relu(x) == x for x >= 0
        if skip is None and (relu_only or (not graph.post and fork_nonneg)):
            nonneg_outputs.add(graph.output)  # a ReLU's output, or a non-negative input passed through
        return nn.Identity() if skip is None and post is None else Shortcut(skip, post)

    return build


def delete_blocks(
    model: nn.Module,
    *,
    recipe: str | Mapping[str, Any] | Recipe | None = None,
    blocks: Collection[str] | None = None,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_size: int = 224,
    leaf_modules: Collection[LeafSpec] = (),
) -> DeletionResult:
    """Replaces the residual blocks a recipe (or ``blocks``) selects by their shortcut; ``model``
    is left untouched.

    Args:
        model: any CNN `modify.convert` takes.
        recipe: which blocks, as for `modify.convert` (default ``every_other``); capacities are ignored.
        blocks: instead of a recipe, the block names to delete (as `modify blocks` lists them).
        example_inputs, input_size, leaf_modules: as for `modify.convert`.

    Raises:
        NoBlocksError: the model holds no residual block.
        ConversionError: a name in ``blocks`` that is no convertible block.
        RecipeError: a recipe that does not fit the model.
    """
    if recipe is not None and blocks is not None:
        raise ConversionError("delete_blocks: give recipe= or blocks=, not both.")
    if blocks is not None:
        names = sorted(set(blocks))
        if not names:
            raise ConversionError("delete_blocks: blocks= is empty; name at least one block (see `modify blocks MODEL`).")
        recipe = {"version": 1, "rules": [{"name": names}]}
    resolved = resolve_recipe(recipe=recipe)
    model = copy.deepcopy(model)
    inputs = _example(model, example_inputs, input_size)
    gm, sites = traced_sites(model, inputs, leaf_modules)
    if blocks is not None:
        known = {s.name for s in sites if s.convertible}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConversionError(
                f"delete_blocks: {unknown[0]!r} is not a block that can be deleted; choose from "
                f"{sorted(known)} (`modify blocks MODEL` lists them)."
            )
    plans = plan(sites, recipe=resolved)
    out, deleted, skipped = rewrite(model, gm, plans, config=resolved.mod, build=_builder(gm))
    if not deleted:
        first = next((s for s in skipped if s.selected), None)
        why = f"; first selected: {first.name!r}: {first.reason}" if first else ""
        raise ConversionError(f"delete_blocks: no block was deleted{why}. Run `modify blocks MODEL` to see which blocks can be.")
    deleted = tuple(dataclasses.replace(d, k=0) for d in deleted)
    provenance.record(out, "delete", {
        "blocks": [d.name for d in deleted],
        "input_shape": list(inputs[0].shape),
        "leaf_modules": [m for m in leaf_modules if isinstance(m, str)],
    }, base=model)  # fmt: skip
    return DeletionResult(out, deleted, skipped, resolved, tuple(inputs[0].shape), tuple(sites))


def replay(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """A recorded deletion (a `modify.io.provenance` step) run again on the rebuilt model."""
    return delete_blocks(model, blocks=data["blocks"], example_inputs=torch.zeros(data["input_shape"]),
                         leaf_modules=tuple(data.get("leaf_modules") or ())).model  # fmt: skip
