"""`convert`: a CNN in, a CNN MoD network out. Its body is the data flow, one call per stage:

    model -trace-> GraphModule (+ shapes) -find_blocks-> [BlockSite] -plan-> [BlockPlan]
          -rewrite-> ConversionResult

Each stage is a module of `modify.conversion` (see its package docstring).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from modify.conversion.discover import BlockSite, find_blocks
from modify.conversion.families import default_capacity
from modify.conversion.inplace import enable_inplace_fusion
from modify.conversion.modes import frozen_branches, mode_note
from modify.conversion.plan import BlockPlan, plan, resolve_recipe
from modify.conversion.recipe import Capacity, Recipe
from modify.conversion.rewrite import ConvertedBlock, SkippedBlock, rewrite
from modify.conversion.tracing import LeafSpec, inputs_for, leaf_from_record, leaf_record, trace
from modify.errors import ConversionError, NoBlocksError
from modify.io import provenance
from modify.layers import MoDConfig
from modify.layers.options import Init

__all__ = ["ConversionResult", "convert", "convert_identity", "replay", "IDENTITY_CONFIG", "NO_BLOCKS_HINT"]

NO_BLOCKS_HINT = (
    "modify looks for residual Conv-Blocks: an add whose one operand is the block input (or a "
    "projection of it) and whose other operand comes from that input through convolutions, as in "
    "ResNet, MobileNetV2/V3, EfficientNet, RegNet or ConvNeXt. Plain stacks (VGG, AlexNet) and "
    "concatenating networks (DenseNet, Inception, ShuffleNet, SqueezeNet) have none."
)


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What `convert` did.

    Example:
        >>> import torchvision
        >>> result = convert(torchvision.models.resnet18(weights=None), c=64, input_size=64)
        >>> [(b.name, b.k) for b in result.converted]
        [('layer1.1', 1), ('layer2.1', 2), ('layer3.1', 4), ('layer4.1', 8)]
    """

    model: nn.Module  # the converted model (the original's class, or a GraphModule for inline blocks)
    converted: tuple[ConvertedBlock, ...]  # blocks that became MoD blocks
    skipped: tuple[SkippedBlock, ...]  # residual blocks left as they were, with reasons
    recipe: Recipe  # the recipe, resolved (k / c arguments become one), to rebuild the conversion
    init: Init  # how the reduced blocks were initialised
    input_shape: tuple[int, ...]  # the example input's shape used for tracing
    sites: tuple[BlockSite, ...] = ()  # every residual block found
    plans: tuple[BlockPlan, ...] = ()
    default_reason: str | None = None  # why this c, when none of recipe/k/c was given (`modify.conversion.families`)
    notes: tuple[str, ...] = ()  # what the user should know: blocks whose self.training branch was frozen


def traced_sites(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], leaf_modules: Collection[LeafSpec] = ()
) -> tuple[fx.GraphModule, list[BlockSite]]:
    """The traced graph of ``model`` and the residual blocks found in it (the first two stages
    of every surgery: conversion, identity conversion, deletion).

    Raises:
        TraceError: torch.fx cannot trace the model.
        NoBlocksError: it holds no residual Conv-Block.
    """
    gm = trace(model, inputs, leaf_modules=leaf_modules)
    sites = find_blocks(gm)
    if not sites:
        raise NoBlocksError(f"No residual Conv-Block found in {type(model).__name__}. {NO_BLOCKS_HINT}")
    return gm, sites


def convert(
    model: nn.Module,
    *,
    k: int | float | None = None,
    c: int | None = None,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe | None = None,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_size: int = 224,
    init: Init | str | None = None,
    leaf_modules: Collection[LeafSpec] = (),
    strict: bool = False,
    zero_update: bool | None = None,
) -> ConversionResult:
    """Turns the residual Conv-Blocks a recipe selects into MoD blocks; ``model`` is left untouched.

    Args:
        model: any CNN that torch.fx traces (mark untraceable parts with ``leaf_modules``).
        k: channels per converted block (int), or a fraction of each block's width (float in (0, 1)).
        c: the paper's capacity instead: k = max(1, C // c).
        recipe: a shipped recipe name (``"every_other"``), a YAML path, a dict or a `Recipe`. With
            none of recipe, k and c, ``every_other`` (the paper's placement) with the c of the
            model's block family (`modify.conversion.families`: 64 for ResNets and RegNets, 16 for
            MobileNets, MNASNet, EfficientNets and ConvNeXt; 64 for blocks of no known family),
            recorded in ``result.default_reason``.
        example_inputs: inputs for tracing and shape propagation; default one random
            (1, 3, input_size, input_size) image.
        input_size: the default example input's size.
        init: how the MoD blocks start (`modify.layers.Init`): ``"scratch"`` (fresh weights, as
            the paper), ``"copy"`` (the original block's weights, its leading channels), ``"zero"``
            (fresh, the reduced branch's last layer at zero) or ``"importance"`` (the original's most
            important channels, the selector preferring them); see `modify.conversion.init`.
            None: the recipe's ``init`` (a version-2 recipe, such as a plan's), else ``"scratch"``.
            Narrowed blocks always keep the original's weights, deleted ones have none.
        zero_update: after the init, every MoD block's branch gets its last layer at zero, so in
            the ``branch`` form each starts as exactly its deletion
            (`modify.conversion.init.zero_updates`); None: the recipe's ``zero_update``.
        leaf_modules: module classes or qualified names torch.fx should not trace into.
        strict: make it an error when a block the recipe selected cannot be converted.

    Returns:
        A `ConversionResult`; ``result.model`` has the original's output shape.

    Raises:
        TraceError: torch.fx cannot trace the model (the message names the module).
        NoBlocksError: the model holds no residual Conv-Block.
        RecipeError, ConversionError: a recipe or k/c that does not fit the model.
    """
    resolved = resolve_recipe(recipe=recipe, k=k, c=c)
    init = Init.from_str(init if init is not None else resolved.init or Init.SCRATCH)
    zero_update = resolved.zero_update if zero_update is None else zero_update
    original = model
    model = copy.deepcopy(model)  # the caller's model stays bit-identical
    inputs = inputs_for(model, example_inputs, input_size)
    gm, sites = traced_sites(model, inputs, leaf_modules)
    default_reason = None
    if recipe is None and k is None and c is None:
        # No capacity given: the every_other placement with the c of the model's block family.
        types = [site.block_type for site in sites if site.convertible]
        choice = default_capacity(types)
        if choice is not None:
            resolved = dataclasses.replace(resolved, defaults=Capacity(c=choice.c))
            default_reason = choice.reason
        else:
            shown = ", ".join(sorted(set(types))[:3]) or "none convertible"
            default_reason = f"c={resolved.defaults.c}, the every_other recipe's: no block of a known family ({shown})"
    # The recipe read once above (it keeps its source for messages); k or c as given, so that
    # errors about them name the argument.
    plans = plan(sites, recipe=resolved if k is None and c is None else None, k=k, c=c)
    planned = [p.site.name for p in plans if p.converted]
    frozen = frozen_branches(model, planned, leaf_modules)  # before the rewrite changes `model`
    cut_init = Init.COPY if init is Init.COPY else Init.SCRATCH  # zero / importance start from scratch, below
    converted_model, converted, skipped = rewrite(model, gm, plans, config=resolved.mod, init=cut_init)
    note = mode_note([c.name for c in converted if c.name in frozen], model.training)
    if note is not None:
        warnings.warn(note, stacklevel=2)
    if strict:
        failed = [s for s in skipped if s.selected]
        if failed:
            first = failed[0]
            raise ConversionError(
                f"strict=True and {len(failed)} selected block(s) could not be converted, first "
                f"'{first.name}': {first.reason}. Drop strict, or exclude them in the recipe (skip: true)."
            )
    # What `modify.save` needs to replay this conversion (the weights go in the state_dict).
    provenance.record(
        converted_model,
        "convert",
        {
            "recipe": resolved.to_dict(),
            "input_shape": list(inputs[0].shape),
            "leaf_modules": [leaf_record(m) for m in leaf_modules],  # classes by import path
        },
        base=model,
    )
    enable_inplace_fusion(converted_model, leaf_modules=leaf_modules)  # no full-tensor copy at inference
    result = ConversionResult(
        model=converted_model,
        converted=converted,
        skipped=skipped,
        recipe=resolved,
        init=init,
        input_shape=tuple(inputs[0].shape),
        sites=tuple(sites),
        plans=tuple(plans),
        default_reason=default_reason,
        notes=(note,) if note is not None else (),
    )
    if init in (Init.ZERO, Init.IMPORTANCE):
        from modify.conversion.init import initialize

        initialize(result, init, original=original)
    if zero_update:
        from modify.conversion.init import zero_updates

        zero_updates(result)
    return result


def replay(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """A recorded conversion (a `modify.io.provenance` step) run again on the rebuilt architecture;
    its weights come afterwards. A ``module`` entry (`modify.conversion.backbones.convert_backbone`)
    converts that submodule only."""
    leaves = tuple(leaf_from_record(r) for r in data.get("leaf_modules") or ())
    part_name = data.get("module")
    part = model.get_submodule(part_name) if part_name else model
    converted = convert(
        part,
        recipe=data["recipe"],
        example_inputs=torch.zeros(data["input_shape"]),
        leaf_modules=leaves,
        init=Init.SCRATCH,
        zero_update=False,  # the weights come from the state_dict
    ).model
    if not part_name:
        return converted
    model.set_submodule(part_name, converted)
    return provenance.record(model, "convert", data)


IDENTITY_CONFIG = MoDConfig(form="branch", fusion="original", order="index", scale=False)


def convert_identity(
    model: nn.Module,
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_size: int = 224,
    leaf_modules: Collection[LeafSpec] = (),
) -> ConversionResult:
    """Converts every convertible block with k = C in the identity configuration.

    k = C, the "branch" form, fusion into the original positions, channels in index order, no
    score scaling, weights copied: each MoD block then computes exactly what the original block
    did, so the converted model must reproduce the original's output (to float rounding). This
    isolates rewrite bugs from the method itself.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> same = convert_identity(model, example_inputs=x).model.eval()
        >>> torch.allclose(same(x), model(x), atol=1e-5)
        True
    """
    model = copy.deepcopy(model)
    inputs = inputs_for(model, example_inputs, input_size)
    gm, sites = traced_sites(model, inputs, leaf_modules)
    plans = [
        BlockPlan(s, k=s.channels, rule="identity", reason=None)
        if s.convertible
        else BlockPlan(s, k=None, rule=None, reason=s.reason)
        for s in sites
    ]
    converted_model, converted, skipped = rewrite(model, gm, plans, config=IDENTITY_CONFIG, init=Init.COPY)
    enable_inplace_fusion(converted_model, leaf_modules=leaf_modules)
    recipe = Recipe(mod=IDENTITY_CONFIG)
    return ConversionResult(
        converted_model, converted, skipped, recipe, Init.COPY, tuple(inputs[0].shape), tuple(sites), tuple(plans)
    )
