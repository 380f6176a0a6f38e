"""Planning: which hand-made block sites a recipe (or k / c) converts, with which k. No torch needed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from modify.conversion.discover import BlockSite, SkipKind
from modify.conversion.plan import NOT_SELECTED, BlockPlan, plan, resolve_recipe
from modify.conversion.recipe import BlockRule, Capacity, Recipe, load_recipe
from modify.errors import ConversionError, NoBlocksError, RecipeError

EVERY_OTHER_R50 = {
    "layer1.1": 4,
    "layer2.1": 8,
    "layer2.3": 8,
    "layer3.1": 16,
    "layer3.3": 16,
    "layer3.5": 16,
    "layer4.1": 32,
}


def resnet_sites(
    blocks: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (256, 512, 1024, 2048)
) -> list[BlockSite]:
    """Sites as discovery reports them for a torchvision ResNet: index 0 of each stage has a projection."""
    sites = []
    for stage, (n, width) in enumerate(zip(blocks, widths, strict=True)):
        size = 56 // 2**stage
        for index in range(n):
            entry = index == 0
            sites.append(
                BlockSite(
                    name=f"layer{stage + 1}.{index}",
                    stage=stage,
                    index=index,
                    channels=width,
                    height=size,
                    width=size,
                    stride=2 if entry and stage else 1,
                    skip=SkipKind.PROJECTION if entry else SkipKind.IDENTITY,
                    branch=("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"),
                    block_type="Bottleneck",
                    in_channels=width // 2 if stage else 64,
                    reason="projection shortcut" if entry else None,
                )
            )
    return sites


R50 = resnet_sites()
R18 = resnet_sites((2, 2, 2, 2), (64, 128, 256, 512))


def converted(plans: list[BlockPlan]) -> dict[str, int]:
    return {p.site.name: p.k for p in plans if p.converted}


def by_name(plans: list[BlockPlan]) -> dict[str, BlockPlan]:
    return {p.site.name: p for p in plans}


def rules(*entries: dict, defaults: dict | None = None) -> dict:
    return {"version": 1, "defaults": defaults or {"c": 64}, "rules": list(entries)}


# --------------------------------------------------------------------------- the paper's placement


def test_every_other_on_resnet50_is_the_papers_placement() -> None:
    plans = plan(R50, recipe="every_other")
    assert [p.site for p in plans] == R50  # one plan per site, in order
    assert converted(plans) == EVERY_OTHER_R50
    assert list(converted(plans).values()) == [4, 8, 8, 16, 16, 16, 32]
    for p in plans:
        if p.converted:
            assert (p.rule, p.reason) == ("rules[0]", None)
        else:
            assert (p.k, p.rule, p.reason) == (None, None, NOT_SELECTED)


def test_default_is_every_other_and_k_c_use_its_placement() -> None:
    default = plan(R50)
    assert default == plan(R50, recipe="every_other") == plan(R50, c=64)
    assert converted(plan(R50, k=8)) == dict.fromkeys(EVERY_OTHER_R50, 8)
    assert converted(plan(R50, c=16)) == {name: k * 4 for name, k in EVERY_OTHER_R50.items()}
    assert converted(plan(R50, k=0.25)) == {name: k * 16 for name, k in EVERY_OTHER_R50.items()}
    assert resolve_recipe(k=8).rules == load_recipe("every_other").rules


def test_resnet18_c64_gives_k_1_2_4_8() -> None:
    assert converted(plan(R18)) == {"layer1.1": 1, "layer2.1": 2, "layer3.1": 4, "layer4.1": 8}


def test_all_converts_every_convertible_block_and_reports_the_rest() -> None:
    plans = by_name(plan(R50, recipe="all"))
    assert sum(p.converted for p in plans.values()) == 12
    for name in ("layer1.0", "layer2.0", "layer3.0", "layer4.0"):
        assert (plans[name].k, plans[name].rule, plans[name].reason) == (None, "rules[0]", "projection shortcut")
    assert plans["layer3.2"].k == 16


def test_late_stages_converts_odd_blocks_of_layer3_and_layer4() -> None:
    assert converted(plan(R50, recipe="late_stages")) == {
        "layer3.1": 16,
        "layer3.3": 16,
        "layer3.5": 16,
        "layer4.1": 32,
    }


def test_resolve_recipe_forms() -> None:
    assert resolve_recipe() == load_recipe("every_other")
    assert resolve_recipe(k=8).defaults == Capacity(k=8)
    assert resolve_recipe(k=0.5).defaults == Capacity(fraction=0.5)
    assert resolve_recipe(c=16).defaults == Capacity(c=16)
    recipe = Recipe(rules=(BlockRule(stage=3),))
    assert resolve_recipe(recipe=recipe) is recipe


# --------------------------------------------------------------------------- selectors and overrides


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"stage": 2, "index": "odd"}], {"layer3.1": 16, "layer3.3": 16, "layer3.5": 16}),
        ([{"stage": [0, 3]}], {"layer1.1": 4, "layer1.2": 4, "layer4.1": 32, "layer4.2": 32}),
        ([{"stage": 1, "index": "even"}], {"layer2.2": 8}),  # layer2.0 selected but not convertible
        ([{"stage": 2, "index": [2, 4]}], {"layer3.2": 16, "layer3.4": 16}),
        ([{"index": 3}], {"layer2.3": 8, "layer3.3": 16}),
        ([{"name": "layer3.*", "index": "odd"}], {"layer3.1": 16, "layer3.3": 16, "layer3.5": 16}),
        ([{"name": ["layer1.2", "layer4.?"]}], {"layer1.2": 4, "layer4.1": 32, "layer4.2": 32}),
        ([{"name": "layer3.*", "stage": 2, "index": [5]}], {"layer3.5": 16}),
        ([{"name": "layer4.1", "k": 100}], {"layer4.1": 100}),
        ([{"name": "layer4.1", "fraction": 0.125}], {"layer4.1": 256}),
        ([{"name": "layer4.1", "c": 256}], {"layer4.1": 8}),
    ],
)
def test_selectors(entries: list[dict], expected: dict[str, int]) -> None:
    assert converted(plan(R50, recipe=rules(*entries))) == expected


def test_later_rules_override_earlier_ones() -> None:
    plans = by_name(plan(R50, recipe=rules({"index": "odd"}, {"stage": 3, "index": [1], "k": 64})))
    assert (plans["layer4.1"].k, plans["layer4.1"].rule) == (64, "rules[1]")
    assert (plans["layer3.1"].k, plans["layer3.1"].rule) == (16, "rules[0]")

    # the same two rules the other way round: the general rule wins everywhere
    plans = by_name(plan(R50, recipe=rules({"stage": 3, "index": [1], "k": 64}, {"index": "odd"})))
    assert (plans["layer4.1"].k, plans["layer4.1"].rule) == (32, "rules[1]")


def test_skip_rule_overrides_and_can_be_overridden() -> None:
    plans = by_name(plan(R50, recipe=rules({"index": "odd"}, {"name": "layer4.*", "skip": True})))
    assert (plans["layer4.1"].k, plans["layer4.1"].rule, plans["layer4.1"].reason) == (
        None,
        "rules[1]",
        "skipped by rules[1] (skip: true)",
    )
    assert plans["layer3.5"].k == 16

    plans = by_name(plan(R50, recipe=rules({"index": "odd"}, {"stage": 3, "skip": True}, {"name": "layer4.1", "k": 8})))
    assert (plans["layer4.1"].k, plans["layer4.1"].rule) == (8, "rules[2]")
    assert plans["layer4.2"].reason == "skipped by rules[1] (skip: true)"
    assert plans["layer3.2"].reason == NOT_SELECTED  # even index: no rule selects it
    assert plans["layer4.0"].reason == "skipped by rules[1] (skip: true)"  # skip wins over the site's reason


def test_selecting_a_non_convertible_block_is_a_skip_with_its_reason() -> None:
    plans = by_name(plan(R50, recipe=rules({"name": "layer1.0"}, {"name": "layer1.1"})))
    assert (plans["layer1.0"].k, plans["layer1.0"].rule, plans["layer1.0"].reason) == (
        None,
        "rules[0]",
        "projection shortcut",
    )
    assert plans["layer1.1"].k == 4


def test_a_rule_matching_only_non_convertible_blocks_is_not_an_error() -> None:
    plans = plan(R50, recipe=rules({"index": [0]}))
    assert converted(plans) == {}
    assert {p.reason for p in plans if p.site.index == 0} == {"projection shortcut"}


def test_defaults_apply_to_rules_without_capacity() -> None:
    plans = plan(R50, recipe=rules({"index": "odd"}, {"stage": 0, "k": 2}, defaults={"fraction": 0.5}))
    assert converted(plans)["layer1.1"] == 2
    assert converted(plans)["layer4.1"] == 1024


def test_block_plan_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan(R50)[0].k = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


def test_a_rule_matching_no_block_is_an_error() -> None:
    with pytest.raises(
        RecipeError,
        match=r"^rules\[1\] \{stage: 5, k: 8\} matches no block; .*"
        r"16 blocks \(stage 0: 3, stage 1: 4, stage 2: 6, stage 3: 3\): layer1\.0, .*layer4\.2",
    ):
        plan(R50, recipe=rules({"index": "odd"}, {"stage": 5, "k": 8}))
    with pytest.raises(RecipeError, match=r"^rules\[0\] \{name: layer5\.\*\} matches no block"):
        plan(R50, recipe=rules({"name": "layer5.*"}))


def test_shipped_recipe_matching_no_block_names_the_recipe() -> None:
    two_stages = resnet_sites((2, 2), (64, 128))
    with pytest.raises(
        RecipeError, match=r"^rules\[0\] of recipe 'late_stages' \{stage: \[2, 3\], index: odd\} matches no block"
    ):
        plan(two_stages, recipe="late_stages")
    entries_only = resnet_sites((1, 1), (64, 128))
    with pytest.raises(RecipeError, match=r"^rules\[0\] of recipe 'every_other' .*matches no block"):
        plan(entries_only)
    with pytest.raises(ConversionError, match=r"^c=64 applies to the blocks at odd indices .*has none: 2 blocks"):
        plan(entries_only, c=64)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        (
            [{"index": "odd", "k": 256}],
            r"^block 'layer1\.1' has 256 channels; k=256 \(from rules\[0\], k=256\) must be at least 1 and below 256",
        ),
        ([{"index": "odd", "c": 1}], r"^block 'layer1\.1' has 256 channels; k=256 \(from rules\[0\], c=1\)"),
        (
            [{"index": "odd"}, {"stage": 3, "k": 4096}],
            r"^block 'layer4\.1' has 2048 channels; k=4096 \(from rules\[1\], k=4096\)",
        ),
    ],
)
def test_k_not_below_the_width_is_a_recipe_error(entries: list[dict], match: str) -> None:
    with pytest.raises(RecipeError, match=match + r".*Run `modify blocks MODEL` to see each block's width"):
        plan(R50, recipe=rules(*entries))


def test_k_too_large_from_defaults_says_so() -> None:
    with pytest.raises(
        RecipeError, match=r"k=300 \(from rules\[0\], k=300 from defaults\).*\{name: 'layer1\.1', skip: true\}"
    ):
        plan(R50, recipe=rules({"index": "odd"}, defaults={"k": 300}))


def test_k_too_large_on_a_skipped_block_is_fine() -> None:
    plans = plan(R50, recipe=rules({"index": "odd", "k": 300}, {"stage": 0, "skip": True}))
    assert converted(plans)["layer2.1"] == 300


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"k": 300},
            r"^block 'layer1\.1' has 256 channels; k=300 must be at least 1 and below 256\..*Run `modify blocks MODEL`",
        ),
        ({"k": 256}, r"^block 'layer1\.1' has 256 channels; k=256 must be"),
        ({"c": 1}, r"^block 'layer1\.1' has 256 channels; k=256 \(from c=1\) must be"),
        ({"k": 0}, r"^k=0 is below 1; expected an integer channel count"),
        ({"k": -3}, r"^k=-3 is below 1"),
        ({"k": 1.0}, r"^k=1\.0 is a float outside \(0, 1\)"),
        ({"k": 0.0}, r"^k=0\.0 is a float outside \(0, 1\)"),
        ({"k": True}, r"^k=True is a bool; expected"),
        ({"k": "8"}, r"^k='8' is a str; expected"),
        ({"c": 0}, r"^c=0 is below 1; expected an integer >= 1"),
        ({"c": 64.0}, r"^c=64\.0 is a float; expected an integer"),
        ({"k": 8, "c": 64}, r"^k=8 and c=64 were both given; expected at most one of recipe, k or c"),
        ({"recipe": "all", "k": 8}, r"^recipe='all' and k=8 were both given"),
    ],
)
def test_bad_k_and_c_arguments_are_conversion_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        plan(R50, **kwargs)


def test_no_sites_is_no_blocks_error() -> None:
    with pytest.raises(NoBlocksError, match=r"no residual Conv-Block sites to plan"):
        plan([])


def test_bad_recipe_content_surfaces_as_recipe_error() -> None:
    with pytest.raises(RecipeError, match=r"^rules\[0\]\.index: 'od' .*Did you mean 'odd'\?"):
        plan(R50, recipe=rules({"index": "od"}))
    with pytest.raises(RecipeError, match=r"'late' is neither a shipped recipe.*Did you mean 'late_stages'\?"):
        plan(R50, recipe="late")
