"""Recipe schema: parsing, validation messages, round trips, shipped recipes. No torch needed."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modify.conversion.discover import BlockSite, SkipKind
from modify.conversion.recipe import (
    BlockAction,
    BlockRule,
    Capacity,
    Recipe,
    load_recipe,
    shipped_recipe_path,
    shipped_recipes,
)
from modify.errors import RecipeError
from modify.layers.options import FusionSlot, MoDConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_RECIPES = ROOT / "modify" / "recipes"
TOP_RECIPES = ROOT / "recipes"
SHIPPED = ("all", "every_other", "late_stages")


def _site(name: str, stage: int, index: int, channels: int = 256) -> BlockSite:
    return BlockSite(
        name=name,
        stage=stage,
        index=index,
        channels=channels,
        height=56,
        width=56,
        stride=1,
        skip=SkipKind.IDENTITY,
        branch=("conv1", "bn1"),
        block_type="Bottleneck",
    )


def _recipe(**overrides: object) -> dict:
    raw = {"version": 1, "defaults": {"c": 64}, "rules": [{"index": "odd"}]}
    raw.update(overrides)
    return raw


# --------------------------------------------------------------------------- parsing


def test_from_dict_reads_the_documented_example() -> None:
    text = """
    version: 1
    defaults: {c: 64}
    mod: {form: whole, fusion: last, order: score}
    rules:
      - {index: odd}
      - {stage: 3, index: [1], k: 32}
      - {name: "layer4.*", skip: true}
    """
    r = Recipe.from_dict(yaml.safe_load(text))
    assert r.version == 1
    assert r.defaults == Capacity(c=64)
    assert r.mod == MoDConfig(fusion="last")
    assert r.mod.fusion is FusionSlot.LAST
    assert r.rules == (
        BlockRule(index="odd"),
        BlockRule(stage=(3,), index=(1,), capacity=Capacity(k=32)),
        BlockRule(name=("layer4.*",), capacity=Capacity(skip=True)),
    )


def test_defaults_and_mod_are_optional() -> None:
    r = Recipe.from_dict({"version": 1, "rules": [{"index": "odd"}]})
    assert r.defaults == Capacity(c=64)
    assert r.mod == MoDConfig()


def test_rule_normalises_scalars_to_tuples() -> None:
    rule = BlockRule(stage=2, index=1, name="layer3.*")
    assert (rule.stage, rule.index, rule.name) == ((2,), (1,), ("layer3.*",))
    assert BlockRule(stage=[2, 3], index=[1, 3]) == BlockRule(stage=(2, 3), index=(1, 3))


def test_skip_false_is_the_same_as_no_capacity() -> None:
    r = Recipe.from_dict(_recipe(rules=[{"index": "odd", "skip": False}]))
    assert r.rules[0].capacity is None


def test_records_are_frozen() -> None:
    r = load_recipe("every_other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.version = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rules[0].index = "all"  # type: ignore[misc]


# --------------------------------------------------------------------------- capacity arithmetic


@pytest.mark.parametrize(
    ("capacity", "channels", "k"),
    [
        (Capacity(c=64), 256, 4),
        (Capacity(c=64), 1024, 16),
        (Capacity(c=64), 2048, 32),
        (Capacity(c=64), 64, 1),  # ResNet18 stage 0
        (Capacity(c=16), 24, 1),  # MobileNetV2: 24 // 16
        (Capacity(c=16), 160, 10),
        (Capacity(c=64), 24, 1),  # C // c = 0 -> at least 1
        (Capacity(c=3), 10, 3),  # floor
        (Capacity(fraction=0.25), 256, 64),
        (Capacity(fraction=0.29), 100, 29),  # 0.29 * 100 = 28.999...96 in floats; still 29
        (Capacity(fraction=0.3), 10, 3),
        (Capacity(fraction=0.5), 3, 1),  # floor(1.5)
        (Capacity(fraction=0.001), 64, 1),  # at least 1
        (Capacity(k=8), 256, 8),
        (Capacity(k=8), 2048, 8),
        (Capacity(skip=True), 256, None),
    ],
)
def test_capacity_k_for(capacity: Capacity, channels: int, k: int | None) -> None:
    assert capacity.k_for(channels) == k


def test_capacity_describe_and_to_dict() -> None:
    assert [c.describe() for c in (Capacity(c=64), Capacity(k=8), Capacity(fraction=0.25), Capacity(skip=True))] == [
        "c=64",
        "k=8",
        "fraction=0.25",
        "skip",
    ]
    assert Capacity(fraction=0.25).to_dict() == {"fraction": 0.25}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"Capacity: gives 0 capacities \(none\); expected exactly one"),
        ({"k": 8, "c": 64}, r"Capacity: gives 2 capacities \(k: 8, c: 64\)"),
        ({"k": 8, "skip": True}, r"gives 2 capacities"),
        ({"k": 0}, r"Capacity\.k: 0 is too small; expected a channel count k >= 1"),
        ({"fraction": 1.0}, r"Capacity\.fraction: 1\.0 is outside \(0, 1\)"),
        ({"c": 0}, r"Capacity\.c: 0 is too small"),
        ({"skip": "yes"}, r"Capacity\.skip: 'yes' is not a boolean"),
    ],
)
def test_capacity_constructor_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Capacity(**kwargs)


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("rule", "selected"),
    [
        (BlockRule(), {"layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer2.3"}),
        (BlockRule(index="all"), {"layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer2.3"}),
        (BlockRule(index="odd"), {"layer1.1", "layer2.1", "layer2.3"}),
        (BlockRule(index="even"), {"layer1.0", "layer1.2", "layer2.0", "layer2.2"}),
        (BlockRule(index=[2, 3]), {"layer1.2", "layer2.2", "layer2.3"}),
        (BlockRule(stage=1), {"layer2.0", "layer2.1", "layer2.2", "layer2.3"}),
        (BlockRule(stage=[0, 1], index="odd"), {"layer1.1", "layer2.1", "layer2.3"}),
        (BlockRule(stage=1, index="odd"), {"layer2.1", "layer2.3"}),
        (BlockRule(name="layer2.*"), {"layer2.0", "layer2.1", "layer2.2", "layer2.3"}),
        (BlockRule(name=["layer1.1", "layer2.[23]"]), {"layer1.1", "layer2.2", "layer2.3"}),
        (BlockRule(name="layer2.*", index="even"), {"layer2.0", "layer2.2"}),  # AND
        (BlockRule(name="layer2.*", stage=0), set()),  # AND of disjoint selectors
        (BlockRule(name="Layer1.*"), set()),  # globs are case-sensitive
        (BlockRule(stage=5), set()),
    ],
)
def test_rule_matches(rule: BlockRule, selected: set[str]) -> None:
    sites = [_site(f"layer1.{i}", 0, i) for i in range(3)] + [_site(f"layer2.{i}", 1, i, 512) for i in range(4)]
    assert {s.name for s in sites if rule.matches(s)} == selected


def test_select_takes_the_last_matching_rule() -> None:
    r = Recipe(rules=(BlockRule(index="odd"), BlockRule(stage=1, capacity=Capacity(k=32)), BlockRule(name="x")))
    assert r.select(_site("layer1.1", 0, 1)) == (0, Capacity(c=64))
    assert r.select(_site("layer2.1", 1, 1)) == (1, Capacity(k=32))
    assert r.select(_site("layer2.0", 1, 0)) == (1, Capacity(k=32))
    assert r.select(_site("layer1.0", 0, 0)) is None


# --------------------------------------------------------------------------- validation messages


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # misspelt keys, anywhere, with the close valid key suggested
        (_recipe(rule=[{"index": "odd"}]), r"^rule: unknown key 'rule' in a recipe .*Did you mean 'rules'\?"),
        (_recipe(defualts={"c": 64}), r"^defualts: unknown key .*Did you mean 'defaults'\?"),
        (
            _recipe(rules=[{"indx": "odd"}]),
            r"^rules\[0\]\.indx: unknown key 'indx' in a rule \(value 'odd'\).*Did you mean 'index'\?",
        ),
        (_recipe(rules=[{"index": "odd"}, {"stages": 3}]), r"^rules\[1\]\.stages: .*Did you mean 'stage'\?"),
        (_recipe(rules=[{"index": "odd", "skp": True}]), r"^rules\[0\]\.skp: .*Did you mean 'skip'\?"),
        (_recipe(defaults={"frac": 0.25}), r"^defaults\.frac: unknown key .*valid keys: k, fraction, c"),
        (_recipe(mod={"fusoin": "last"}), r"^mod\.fusoin: unknown key .*Did you mean 'fusion'\?"),
        # wrong types
        (
            _recipe(rules=[{"index": 3.5}]),
            r"^rules\[0\]\.index: 3\.5 is not a valid index selector; expected 'odd', 'even', 'all'",
        ),
        (
            _recipe(rules=[{"index": "od"}]),
            r"^rules\[0\]\.index: 'od' is not a valid index selector.*Did you mean 'odd'\?",
        ),
        (_recipe(rules=[{"index": [1, "x"]}]), r"^rules\[0\]\.index\[1\]: 'x' is not an integer"),
        (_recipe(rules=[{"index": [-1]}]), r"^rules\[0\]\.index\[0\]: -1 is too small"),
        (_recipe(rules=[{"index": []}]), r"^rules\[0\]\.index: \[\] is an empty list"),
        (_recipe(rules=[{"stage": "two"}]), r"^rules\[0\]\.stage: 'two' is not an integer; expected a 0-based stage"),
        (_recipe(rules=[{"stage": [2, True]}]), r"^rules\[0\]\.stage\[1\]: True is not an integer"),
        (_recipe(rules=[{"name": 5}]), r"^rules\[0\]\.name: 5 is not a non-empty string; expected a glob"),
        (_recipe(rules=[{"name": ["layer1.*", None]}]), r"^rules\[0\]\.name\[1\]: None is not a non-empty string"),
        (_recipe(rules=[{"index": "odd", "skip": "yes"}]), r"^rules\[0\]\.skip: 'yes' is not a boolean"),
        (_recipe(rules=[{"index": "odd", "k": True}]), r"^rules\[0\]\.k: True is not an integer"),
        (
            _recipe(rules=[{"index": "odd", "k": 0.25}]),
            r"^rules\[0\]\.k: 0\.25 is not an integer.*write `fraction: 0\.25`",
        ),
        (_recipe(rules=[{"index": "odd", "c": "64"}]), r"^rules\[0\]\.c: '64' is not an integer"),
        (_recipe(rules=[{"index": "odd", "fraction": "half"}]), r"^rules\[0\]\.fraction: 'half' is not a number"),
        (_recipe(rules="odd"), r"^rules: 'odd' is not a non-empty list"),
        (_recipe(rules=["odd"]), r"^rules\[0\]: 'odd' is not a mapping"),
        (_recipe(defaults=64), r"^defaults: 64 is not a mapping; expected .*\{c: 64\}"),
        (
            _recipe(mod={"fusion": "middle"}),
            r"^mod\.fusion: 'middle' is not a valid fusion; expected one of first, last, original",
        ),
        (_recipe(mod={"form": "wole"}), r"^mod\.form: 'wole' .*Did you mean 'whole'\?"),
        (_recipe(mod={"scale": "yes"}), r"^mod\.scale: 'yes' is not a boolean"),
        (_recipe(mod={"reduction": 0}), r"^mod\.reduction: 0 is too small"),
        (
            _recipe(mod={"activation": "leaky"}),
            r"^mod\.activation: 'leaky' is not a valid activation; expected one of relu, leaky_relu, gelu",
        ),
        # impossible values
        (
            _recipe(rules=[{"index": "odd"}, {"stage": 3, "k": 0}]),
            r"^rules\[1\]\.k: 0 is too small; expected a channel count k >= 1",
        ),
        (_recipe(defaults={"k": -4}), r"^defaults\.k: -4 is too small"),
        (_recipe(rules=[{"index": "odd", "fraction": 1.5}]), r"^rules\[0\]\.fraction: 1\.5 is outside \(0, 1\)"),
        (_recipe(rules=[{"index": "odd", "fraction": 0}]), r"^rules\[0\]\.fraction: 0 is outside \(0, 1\)"),
        (_recipe(rules=[{"index": "odd", "fraction": 1}]), r"^rules\[0\]\.fraction: 1 is outside \(0, 1\)"),
        (_recipe(rules=[{"index": "odd", "c": 0}]), r"^rules\[0\]\.c: 0 is too small; expected a capacity c >= 1"),
        (_recipe(defaults={"c": 0}), r"^defaults\.c: 0 is too small"),
        # two capacities in one entry
        (
            _recipe(rules=[{"index": "odd", "k": 8, "c": 64}]),
            r"^rules\[0\]: gives 2 capacities \(k: 8, c: 64\); expected at most one.*Split it",
        ),
        (
            _recipe(rules=[{"index": "odd", "k": 8, "skip": True}]),
            r"^rules\[0\]: gives 2 capacities \(k: 8, skip: True\)",
        ),
        (_recipe(defaults={"c": 64, "fraction": 0.5}), r"^defaults: gives 2 capacities \(fraction: 0\.5, c: 64\)"),
        (_recipe(defaults={}), r"^defaults: gives no capacity; expected one of k, fraction or c"),
        (_recipe(defaults={"skip": True}), r"^defaults\.skip: True: defaults cannot skip"),
        # version
        ({"defaults": {"c": 64}, "rules": [{"index": "odd"}]}, r"^version: missing; expected `version: 1`"),
        (
            _recipe(version=3),
            r"^version: 3 is not a supported recipe version; expected `version: 1` .* or `version: 2`",
        ),
        (_recipe(version="1"), r"^version: '1' is not a supported recipe version"),
        (_recipe(version=True), r"^version: True is not a supported"),
        # version 2: per-block actions
        (
            _recipe(rules=[{"index": "odd", "action": "delete"}]),
            r"^rules\[0\]\.action: 'delete': per-block actions .* need `version: 2`",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "prune"}]),
            r"^rules\[0\]\.action: 'prune' is not an action; expected one of keep, mod, narrow, delete",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "delte"}]),
            r"^rules\[0\]\.action: 'delte' .*Did you mean 'delete'\?",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "delete", "k": 8}]),
            r"^rules\[0\]\.k: 8: action delete takes no capacity; remove k",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "keep", "fraction": 0.5}]),
            r"^rules\[0\]\.fraction: 0\.5: action keep takes no capacity",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "narrow", "c": 64}]),
            r"^rules\[0\]\.c: 64: action narrow takes a fraction",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "skip": True}]),
            r"^rules\[0\]\.skip: True: version 2 says `action: keep`",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "narrow", "fraction": 1.0}]),
            r"^rules\[0\]\.fraction: 1\.0 is outside \(0, 1\)",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "action": "mod", "k": 8, "fraction": 0.5}]),
            r"^rules\[0\]: gives 2 capacities",
        ),
        (
            _recipe(version=2, rules=[{"index": "odd", "acton": "mod"}]),
            r"^rules\[0\]\.acton: unknown key .*Did you mean 'action'\?",
        ),
        # structure
        ({"version": 1, "defaults": {"c": 64}}, r"^rules: missing; expected a non-empty list"),
        (_recipe(rules=[]), r"^rules: \[\] is not a non-empty list"),
    ],
)
def test_validation_errors_name_path_value_and_expectation(raw: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(raw)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(RecipeError, match=r"\['odd'\] is not a mapping; expected a mapping with version"):
        Recipe.from_dict(["odd"])  # type: ignore[arg-type]


def test_recipe_constructor_validates() -> None:
    with pytest.raises(RecipeError, match=r"Recipe\.version: 3 is not a supported"):
        Recipe(version=3)
    with pytest.raises(RecipeError, match=r"Recipe\.rules\[0\]\.action: 'delete': per-block actions need version=2"):
        Recipe(rules=(BlockRule(index="odd", action="delete"),))
    with pytest.raises(RecipeError, match=r"Recipe\.defaults: .*skip=True"):
        Recipe(defaults=Capacity(skip=True))
    with pytest.raises(RecipeError, match=r"Recipe\.rules\[0\]: 'odd' is not a BlockRule"):
        Recipe(rules=("odd",))  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match=r"BlockRule\.index: 'od'.*Did you mean 'odd'"):
        BlockRule(index="od")
    assert Recipe(mod={"fusion": "last"}).mod == MoDConfig(fusion="last")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trips


ROUND_TRIP = [
    _recipe(),
    _recipe(defaults={"k": 8}),
    _recipe(defaults={"fraction": 0.25}, mod={"fusion": "last", "order": "index", "scale": False, "reduction": 8}),
    _recipe(mod={"form": "branch", "activation": "gelu"}),
    _recipe(
        rules=[
            {"index": "odd"},
            {"stage": [2, 3], "index": [1, 3], "k": 32},
            {"stage": 3, "index": "even", "fraction": 0.5},
            {"name": ["layer4.*", "layer3.1"], "c": 16},
            {"name": "layer4.*", "skip": True},
            {},
        ]
    ),
]


@pytest.mark.parametrize("raw", ROUND_TRIP)
def test_round_trip_dict_and_yaml(raw: dict, tmp_path: Path) -> None:
    r = Recipe.from_dict(raw)
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(yaml.safe_load(r.to_yaml())) == r
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    assert load_recipe(path) == r
    assert load_recipe(str(path)).source == str(path)


def test_to_yaml_is_compact_and_plain() -> None:
    text = Recipe.from_dict(_recipe(rules=[{"index": "odd"}, {"stage": [2, 3], "k": 32}])).to_yaml()
    assert text.splitlines() == [
        "version: 1",
        "defaults: {c: 64}",
        "mod: {form: whole, fusion: first, order: score, scale: true, reduction: 16}",
        "rules:",
        "- {index: odd}",
        "- stage: [2, 3]",
        "  k: 32",
    ]


# --------------------------------------------------------------------------- loading


def test_shipped_recipe_names() -> None:
    assert shipped_recipes() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load_by_name_and_by_path(name: str) -> None:
    by_name = load_recipe(name)
    assert by_name.source == name
    assert shipped_recipe_path(name) == PACKAGE_RECIPES / f"{name}.yaml"
    assert load_recipe(PACKAGE_RECIPES / f"{name}.yaml") == by_name
    assert load_recipe(str(TOP_RECIPES / f"{name}.yaml")) == by_name
    assert Recipe.from_dict(by_name.to_dict()) == by_name
    assert by_name.defaults == Capacity(c=64)


def test_shipped_recipe_contents() -> None:
    assert load_recipe("every_other").rules == (BlockRule(index="odd"),)
    assert load_recipe("all").rules == (BlockRule(index="all"),)
    assert load_recipe("late_stages").rules == (BlockRule(stage=(2, 3), index="odd"),)


def test_shipped_recipes_start_with_a_comment_header() -> None:
    for path in PACKAGE_RECIPES.glob("*.yaml"):
        assert path.read_text().startswith(f"# {path.stem}: "), path


def test_both_copies_of_the_shipped_recipes_are_identical() -> None:
    package = sorted(p.name for p in PACKAGE_RECIPES.glob("*.yaml"))
    top = sorted(p.name for p in TOP_RECIPES.glob("*.yaml"))
    assert package == top == [f"{name}.yaml" for name in SHIPPED]
    for name in package:
        assert not (TOP_RECIPES / name).is_symlink() and not (PACKAGE_RECIPES / name).is_symlink()
        assert (TOP_RECIPES / name).read_bytes() == (PACKAGE_RECIPES / name).read_bytes(), (
            f"recipes/{name} and modify/recipes/{name} differ; modify/recipes/ is canonical, copy it over"
        )


def test_load_recipe_passes_a_recipe_through_and_reads_dicts() -> None:
    r = load_recipe("every_other")
    assert load_recipe(r) is r
    assert load_recipe(_recipe()) == r


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match=rf"recipe file '{path}' does not exist; expected a path to a YAML file"):
        load_recipe(path)


def test_misspelt_shipped_name_is_suggested() -> None:
    names = r"\(all, every_other, late_stages\)"
    match = (
        rf"^recipe 'every_othr' is neither a shipped recipe {names} nor an existing file.*Did you mean 'every_other'\?"
    )
    with pytest.raises(RecipeError, match=match):
        load_recipe("every_othr")
    with pytest.raises(RecipeError, match=r"'evry' is not a shipped recipe; expected one of all, every_other, late"):
        shipped_recipe_path("evry")


def test_file_that_is_not_yaml_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules: [{index: odd\n")
    with pytest.raises(RecipeError, match=rf"recipe '{path}' is not valid YAML: .*line"):
        load_recipe(path)


def test_binary_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x02\xff\xfe\x00")
    with pytest.raises(RecipeError, match=rf"recipe '{path}' could not be read"):
        load_recipe(path)


def test_empty_file_and_directory_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(RecipeError, match=rf"recipe '{path}' is empty; expected a mapping"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=rf"recipe '{tmp_path}' is a directory"):
        load_recipe(tmp_path)


def test_errors_in_a_file_name_the_file_and_the_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("version: 1\ndefaults: {c: 64}\nrules:\n  - {index: odd}\n  - {stage: 3, indx: [1]}\n")
    with pytest.raises(RecipeError, match=rf"^recipe '{path}': rules\[1\]\.indx: unknown key 'indx' .*'index'"):
        load_recipe(path)


def test_a_version_2_recipe_round_trips_and_each_rule_says_its_action() -> None:
    raw = {
        "version": 2,
        "defaults": {"fraction": 0.25},
        "mod": {"form": "branch", "fusion": "original"},
        "rules": [
            {"name": "layer1.1", "action": "mod", "k": 16},
            {"name": "layer2.1", "action": "narrow", "fraction": 0.25},
            {"name": "layer3.1", "action": "delete"},
            {"name": "layer4.1", "action": "keep"},
            {"name": "layer1.0"},
        ],
    }
    r = Recipe.from_dict(raw)
    assert [rule.effective_action().value for rule in r.rules] == ["mod", "narrow", "delete", "keep", "mod"]
    assert Recipe.from_dict(r.to_dict()) == r
    assert load_recipe(yaml.safe_load(r.to_yaml())) == r
    assert r.decide(_site("layer3.1", 2, 1))[:2] == (2, BlockAction.DELETE)
    assert r.decide(_site("layer1.0", 0, 0)) == (4, BlockAction.MOD, Capacity(fraction=0.25))


def test_a_version_1_rule_that_skips_is_a_keep() -> None:
    r = Recipe.from_dict({"version": 1, "rules": [{"index": "odd"}, {"stage": 3, "skip": True}]})
    assert [rule.effective_action() for rule in r.rules] == [BlockAction.MOD, BlockAction.KEEP]


def test_wrong_source_type() -> None:
    with pytest.raises(RecipeError, match=r"recipe 42 is a int; expected a shipped recipe name"):
        load_recipe(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- no torch


@pytest.mark.parametrize("module", ["recipe.py", "recipe_parts.py", "plan.py"])
def test_module_source_imports_no_torch(module: str) -> None:
    tree = ast.parse((ROOT / "modify" / "conversion" / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "torchvision", "fvcore"}


def test_importing_recipe_and_plan_loads_no_torch() -> None:
    code = "import sys, modify.conversion.recipe, modify.conversion.plan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
