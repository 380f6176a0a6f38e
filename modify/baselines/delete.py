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
from torch import nn

from modify.conversion.actions import BlockBuilder
from modify.conversion.discover import BlockSite
from modify.conversion.pipeline import traced_sites
from modify.conversion.plan import plan, resolve_recipe
from modify.conversion.recipe import BlockAction, Recipe
from modify.conversion.rewrite import ConvertedBlock, SkippedBlock, rewrite
from modify.conversion.tracing import LeafSpec, inputs_for
from modify.errors import ConversionError, RecipeError
from modify.io import provenance
from modify.layers import Shortcut

__all__ = ["DeletionResult", "Shortcut", "delete_blocks", "replay"]


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
            raise ConversionError(
                "delete_blocks: blocks= is empty; name at least one block (see `modify blocks MODEL`)."
            )
        recipe = {"version": 1, "rules": [{"name": names}]}
    resolved = resolve_recipe(recipe=recipe)
    if resolved.version >= 2:
        where = f"recipe '{resolved.source}'" if resolved.source else "the recipe"
        raise RecipeError(
            f"{where} is version {resolved.version} (per-block actions: keep, mod, narrow, delete); delete_blocks "
            "reads version-1 recipes, which only select blocks. Apply it with `modify convert MODEL --recipe FILE` "
            "(modify.convert(model, recipe=...)), or pass the blocks to delete as blocks=[...]."
        )
    model = copy.deepcopy(model)
    inputs = inputs_for(model, example_inputs, input_size)
    gm, sites = traced_sites(model, inputs, leaf_modules)
    if blocks is not None:
        known = {s.name for s in sites if s.convertible}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConversionError(
                f"delete_blocks: {unknown[0]!r} is not a block that can be deleted; choose from "
                f"{sorted(known)} (`modify blocks MODEL` lists them)."
            )
    plans = [
        dataclasses.replace(p, k=None, action=BlockAction.DELETE) if p.converted else p
        for p in plan(sites, recipe=resolved)
    ]
    out, deleted, skipped = rewrite(model, gm, plans, config=resolved.mod, build=BlockBuilder(gm, config=resolved.mod))
    if not deleted:
        first = next((s for s in skipped if s.selected), None)
        why = f"; first selected: {first.name!r}: {first.reason}" if first else ""
        raise ConversionError(
            f"delete_blocks: no block was deleted{why}. Run `modify blocks MODEL` to see which blocks can be."
        )
    provenance.record(
        out,
        "delete",
        {
            "blocks": [d.name for d in deleted],
            "input_shape": list(inputs[0].shape),
            "leaf_modules": [m for m in leaf_modules if isinstance(m, str)],
        },
        base=model,
    )
    return DeletionResult(out, deleted, skipped, resolved, tuple(inputs[0].shape), tuple(sites))


def replay(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """A recorded deletion (a `modify.io.provenance` step) run again on the rebuilt model."""
    return delete_blocks(
        model,
        blocks=data["blocks"],
        example_inputs=torch.zeros(data["input_shape"]),
        leaf_modules=tuple(data.get("leaf_modules") or ()),
    ).model
