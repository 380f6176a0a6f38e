"""Block sites + a recipe (or k / c) -> one `BlockPlan` per site: what becomes a MoD block, with which k.

Pure: no torch, no model; the input is what `modify.conversion.discover` found. How a recipe is chosen:

- ``recipe=`` a shipped name, a YAML path, a dict or a `Recipe` (see `modify.conversion.recipe`);
- ``k=`` or ``c=`` alone: the default placement (the paper's, the ``every_other`` recipe: 0-based odd
  indices in every stage) with that capacity for every selected block. An integer ``k`` is a channel
  count, a float ``k`` in (0, 1) is a fraction of each block's width C; ``c`` gives k = max(1, C // c);
  a k from c or a fraction is raised to the block's ``min_k`` when its channel splits need more
  (MixNet's mixed kernels split into 2..4 parts, each at least one channel wide);
- nothing: the shipped ``every_other`` recipe (c = 64, the paper's value for ResNets).

Recipes are strict: a rule that selects no block at all is an error, and so is a k that is not below
the width of a block it applies to. A selected block that cannot be converted (a stage's entry block
that downsamples, say) is not an error: its plan is skipped with the site's own reason.

Example:
    >>> from modify.conversion.discover import BlockSite, SkipKind
    >>> sites = [BlockSite(f"layer1.{i}", 0, i, 256, 56, 56, 1, SkipKind.IDENTITY, (), "Bottleneck",
    ...                    reason="projection shortcut" if i == 0 else None) for i in range(3)]
    >>> [(p.site.name, p.k) for p in plan(sites, c=64)]
    [('layer1.0', None), ('layer1.1', 4), ('layer1.2', None)]
    >>> plan(sites, c=64)[0].reason
    'not selected by the recipe'
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from modify.conversion.recipe import BlockAction, BlockRule, Capacity, Recipe, load_recipe
from modify.errors import ConversionError, NoBlocksError, RecipeError

if TYPE_CHECKING:  # discovery needs torch; planning does not
    from modify.conversion.discover import BlockSite

__all__ = ["BlockPlan", "plan", "resolve_recipe", "DEFAULT_RECIPE", "NOT_SELECTED"]

DEFAULT_RECIPE = "every_other"  # the shipped recipe used when neither recipe, k nor c is given
NOT_SELECTED = "not selected by the recipe"  # BlockPlan.reason of a block no rule selects
_BLOCKS_HINT = "Run `modify blocks MODEL` to see each block's width."


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """What happens to one block site: a MoD block with ``k`` channels, narrowed to ``fraction``
    of its inner widths, deleted, or left standard with a reason.

    Example:
        >>> from modify.conversion.discover import BlockSite, SkipKind
        >>> site = BlockSite("layer3.1", 2, 1, 1024, 14, 14, 1, SkipKind.IDENTITY, (), "Bottleneck")
        >>> BlockPlan(site, k=16, rule="rules[0]", reason=None).action
        <BlockAction.MOD: 'mod'>
        >>> BlockPlan(site, k=None, rule="rules[1]", reason=None, action="delete").converted
        True
    """

    site: BlockSite  # the block, as discovery found it
    k: int | None  # channels its MoD block processes (1 <= k < C); None for every other action
    rule: str | None  # YAML path of the rule that decided it ("rules[0]"); None when no rule selected it
    reason: str | None  # why it stays standard; None when it changes
    action: BlockAction | None = None  # what happens to it; None: mod when k is given, else keep
    fraction: float | None = None  # narrow: the share of every inner width kept, in (0, 1)

    def __post_init__(self) -> None:
        action = BlockAction.from_str(self.action) if self.action is not None else None
        if action is None:
            action = BlockAction.MOD if self.k is not None else BlockAction.KEEP
        object.__setattr__(self, "action", action)

    @property
    def converted(self) -> bool:
        """Whether the block changes (MoD, narrowed or deleted)."""
        return self.action is not BlockAction.KEEP


def _capacity_from_args(k: object, c: object) -> Capacity:
    if k is not None:
        expected = "an integer channel count 1 <= k < C, or a float fraction of C in (0, 1) such as 0.25"
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ConversionError(f"k={k!r} is a {type(k).__name__}; expected {expected}.")
        if isinstance(k, int):
            if k < 1:
                raise ConversionError(f"k={k} is below 1; expected {expected}.")
            return Capacity(k=k)
        if not 0.0 < k < 1.0:
            raise ConversionError(f"k={k!r} is a float outside (0, 1); expected {expected}.")
        return Capacity(fraction=k)
    expected = "an integer >= 1 with k = max(1, C // c) (the paper: 64 for ResNets, 16 for MobileNetV2)"
    if isinstance(c, bool) or not isinstance(c, int):
        raise ConversionError(f"c={c!r} is a {type(c).__name__}; expected {expected}.")
    if c < 1:
        raise ConversionError(f"c={c} is below 1; expected {expected}.")
    return Capacity(c=c)


def resolve_recipe(
    *,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe | None = None,
    k: int | float | None = None,
    c: int | None = None,
) -> Recipe:
    """The recipe `plan` applies for these arguments (at most one of them; none -> ``every_other``).

    With ``k`` or ``c`` the recipe is the default placement, one rule ``{index: odd}``, with that
    capacity as its defaults; store the result to rebuild a conversion later.

    Raises:
        ConversionError: More than one of recipe, k, c; or a k or c that is no valid capacity.
        RecipeError: A recipe that does not load or validate.

    Example:
        >>> resolve_recipe(k=0.25).to_dict()["defaults"], resolve_recipe(c=16).rules
        ({'fraction': 0.25}, (BlockRule(stage=None, index='odd', name=None, capacity=None, action=None),))
    """
    given = [f"{name}={value!r}" for name, value in (("recipe", recipe), ("k", k), ("c", c)) if value is not None]
    if len(given) > 1:
        raise ConversionError(
            f"{' and '.join(given)} were both given; expected at most one of recipe, k or c. "
            "For a different k per block, write a recipe with one rule per group of blocks."
        )
    if recipe is not None:
        return load_recipe(recipe)
    if k is None and c is None:
        return load_recipe(DEFAULT_RECIPE)
    return Recipe(defaults=_capacity_from_args(k, c), rules=(BlockRule(index="odd"),))


def _flow(rule: BlockRule) -> str:
    return yaml.safe_dump(rule.to_dict(), default_flow_style=True, sort_keys=False).strip()


def _summary(sites: Sequence[BlockSite]) -> str:
    """The model's blocks in one line: counts per stage and a few names."""
    counts = collections.Counter(site.stage for site in sites)
    stages = ", ".join(f"stage {stage}: {n}" for stage, n in sorted(counts.items()))
    names = [site.name for site in sites]
    shown = ", ".join(names) if len(names) <= 8 else ", ".join([*names[:4], "...", *names[-2:]])
    return f"{len(sites)} blocks ({stages}): {shown}"


def _one_block_stages_hint(sites: Sequence[BlockSite]) -> str:
    """The next step when the paper's odd-index placement finds nothing: every stage holds one block."""
    if any(site.index % 2 == 1 for site in sites):
        return ""
    convertible = [site.name for site in sites if site.convertible]
    head = " Every stage of this model holds a single block (index 0), so the odd-index placement selects none;"
    if not convertible:
        reasons = sorted({site.reason for site in sites if site.reason})
        return f"{head} none of its blocks can be converted either ({reasons[0]}{', ...' if len(reasons) > 1 else ''})."
    shown = ", ".join(convertible[:4]) + (", ..." if len(convertible) > 4 else "")
    return f"{head} convert every convertible block with `--recipe all` (a rule {{index: all}}): {shown}."


def plan(
    sites: Iterable[BlockSite],
    *,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe | None = None,
    k: int | float | None = None,
    c: int | None = None,
) -> list[BlockPlan]:
    """One `BlockPlan` per site, in the order of ``sites``.

    For each site the last rule that selects it decides: a skip rule leaves it standard, a
    non-convertible site stays standard with its own reason, otherwise k comes from the rule's
    capacity (or the recipe's defaults). Sites no rule selects get ``reason="not selected by the
    recipe"``.

    Args:
        sites: The blocks `modify.conversion.discover` found.
        recipe: A shipped recipe name, YAML path, dict or `Recipe`.
        k: Instead of a recipe: channels per selected block (int) or a fraction of C (float in (0, 1)),
            applied to the default placement, the 0-based odd indices of every stage.
        c: Instead of a recipe: the paper's capacity, k = max(1, C // c), on the same placement.

    Returns:
        A plan per site.

    Raises:
        NoBlocksError: ``sites`` is empty.
        RecipeError: A recipe that does not validate, a rule that selects no block, or a rule whose k
            is not below the width of a block it converts.
        ConversionError: More than one of recipe/k/c, a bad k or c, a k or c that fits no selected
            block, or no block at an odd index for k/c to apply to.

    Example:
        >>> from modify.conversion.discover import BlockSite, SkipKind
        >>> site = BlockSite("layer4.1", 3, 1, 2048, 7, 7, 1, SkipKind.IDENTITY, (), "Bottleneck")
        >>> plan([site])[0].k, plan([site], k=0.25)[0].k, plan([site], recipe="all")[0].rule
        (32, 512, 'rules[0]')
    """
    resolved = resolve_recipe(recipe=recipe, k=k, c=c)
    arg = None if k is None and c is None else (f"k={k!r}" if k is not None else f"c={c!r}")
    sites = tuple(sites)
    if not sites:
        raise NoBlocksError(
            "no residual Conv-Block sites to plan; expected the non-empty list that discovery returns. "
            "Run `modify blocks MODEL` to see what was found in the model."
        )

    for i, rule in enumerate(resolved.rules):
        if not any(rule.matches(site) for site in sites):
            if arg is not None:
                raise ConversionError(
                    f"{arg} applies to the blocks at odd indices of each stage (the paper's placement), and "
                    f"this model has none: {_summary(sites)}.{_one_block_stages_hint(sites)} Pass a recipe that "
                    "names the blocks to convert; run `modify blocks MODEL` to list them."
                )
            raise RecipeError(
                f"{resolved.where(f'rules[{i}]')} {_flow(rule)} matches no block; a rule that selects nothing "
                f"is an error, not a silent no-op. The model has {_summary(sites)}.{_one_block_stages_hint(sites)} "
                "Fix or remove the rule; run `modify blocks MODEL` to list every block."
            )

    plans = []
    for site in sites:
        decided = resolved.decide(site)
        if decided is None:
            plans.append(BlockPlan(site, k=None, rule=None, reason=NOT_SELECTED))
            continue
        i, action, capacity = decided
        rule_path = f"rules[{i}]"
        if action is BlockAction.KEEP:
            said = (
                f"skipped by {rule_path} (skip: true)"
                if resolved.version == 1
                else f"kept by {rule_path} (action: keep)"
            )
            plans.append(BlockPlan(site, k=None, rule=rule_path, reason=said))
        elif not site.convertible:
            plans.append(BlockPlan(site, k=None, rule=rule_path, reason=site.reason))
        elif action is BlockAction.DELETE:
            plans.append(BlockPlan(site, k=None, rule=rule_path, reason=None, action=action))
        elif action is BlockAction.NARROW:
            share = _narrow_share(site, capacity, resolved, i)
            plans.append(BlockPlan(site, k=None, rule=rule_path, reason=None, action=action, fraction=share))
        else:
            block_k = capacity.k_for(site.channels)
            assert block_k is not None  # not skip
            if capacity.k is None and block_k < site.min_k < site.channels:
                block_k = site.min_k  # a k from c or a fraction, raised to what the block's splits need
            if not 1 <= block_k < site.channels:
                _raise_bad_k(site, block_k, capacity, resolved, i, arg)
            plans.append(BlockPlan(site, k=block_k, rule=rule_path, reason=None))
    return plans


def _narrow_share(site: BlockSite, capacity: Capacity, recipe: Recipe, i: int) -> float:
    """The share of the inner widths a narrow rule keeps: its fraction, or k / C."""
    if capacity.fraction is not None:
        return capacity.fraction
    if capacity.k is not None and 1 <= capacity.k < site.channels:
        return capacity.k / site.channels
    raise RecipeError(
        f"block '{site.name}' has {site.channels} channels; narrow with {capacity.describe()} (from "
        f"{recipe.where(f'rules[{i}]')}) needs a fraction in (0, 1) or k below {site.channels} (the share k / C). "
        + _BLOCKS_HINT
    )


def _raise_bad_k(site: BlockSite, block_k: int, capacity: Capacity, recipe: Recipe, i: int, arg: str | None) -> None:
    head = f"block '{site.name}' has {site.channels} channels; k={block_k}"
    tail = f"must be at least 1 and below {site.channels}."
    if arg is not None:
        origin = "" if capacity.k is not None else f" (from {arg})"
        raise ConversionError(
            f"{head}{origin} {tail} Pass a smaller k, a fraction such as k=0.25, or a larger c. {_BLOCKS_HINT}"
        )
    rule = recipe.rules[i]
    source = "" if rule.capacity is not None else " from defaults"
    raise RecipeError(
        f"{head} (from {recipe.where(f'rules[{i}]')}, {capacity.describe()}{source}) {tail} Lower k or raise c, "
        f"or leave the block out with a rule such as {{name: '{site.name}', skip: true}}. {_BLOCKS_HINT}"
    )
