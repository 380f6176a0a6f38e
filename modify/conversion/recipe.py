"""Recipes: which residual Conv-Blocks change, how (MoD, narrowed, deleted), and with which k.

A recipe is a small YAML file (or dict) that is validated up front: every misspelt key, wrong type
or impossible value is a `RecipeError` naming its YAML path (``rules[1].index``), the value, and
the form expected. This module imports no torch; `modify.conversion.plan` applies a recipe to the `BlockSite`
records of a model.

YAML schema (version 1)::

    version: 1                 # required; the only version this modify reads
    defaults: {c: 64}          # capacity of a selected block when its rule gives none (default c: 64)
                               #   exactly one of  {c: 64}  {k: 8}  {fraction: 0.25}
    mod:                       # optional; how every MoD block is built (MoDConfig)
      form: whole              #   whole | branch
      fusion: first            #   first | last | original
      order: score             #   score | index
      scale: true              #   multiply the block output by the selection scores
      reduction: 16            #   the selector's bottleneck ratio r
    rules:                     # required, non-empty; applied in order, a later match overrides
      - {index: odd}                       # selected blocks get the defaults
      - {stage: 3, index: [1], k: 32}      # a capacity of its own
      - {name: "layer4.*", skip: true}     # selected, but left standard

Selectors of a rule (every one given must match: AND; a rule with none selects every block):

- ``stage``: a 0-based stage number or a list of them.
- ``index``: ``odd``, ``even``, ``all``, or a list of 0-based indices inside the stage (a single
  integer is read as a one-element list). Index 0 is a stage's entry block, which usually
  downsamples and cannot be converted; selecting it yields a skipped block, not an error.
- ``name``: an `fnmatch` glob on the block's qualified name (``layer3.*``), or a list of globs
  (any of them may match), matched case-sensitively.

Capacity of a rule or of ``defaults`` (at most one per entry; ``defaults`` needs exactly one and
cannot skip):

- ``k``: channels per block, an integer >= 1 (and below the block's width C).
- ``fraction``: a float in (0, 1); k = max(1, floor(C * fraction)).
- ``c``: the paper's capacity, an integer >= 1; k = max(1, C // c) (c = 64 for ResNets).
- ``skip: true``: the selected blocks stay standard (``skip: false`` is the same as leaving it out).

Version 2 (what `modify plan` writes) gives every rule an ``action``; the rest is as above, but
``skip`` is spelt ``action: keep``::

    version: 2
    defaults: {fraction: 0.25} # k of a mod rule that gives none
    mod: {form: branch, fusion: original}
    init: importance           # optional: how MoD blocks start when convert is given no init
    zero_update: true          # optional: ... with a zero update, so each starts as its deletion
    rules:
      - {name: layer1.1, action: mod, k: 16}          # a MoD block with k = 16 (k, fraction or c)
      - {name: layer2.1, action: narrow, fraction: 0.25}  # the branch's inner widths cut to a quarter
      - {name: layer3.1, action: delete}             # replaced by its shortcut
      - {name: layer4.1, action: keep}               # stays as it is

``narrow`` keeps the block's input and output at C and cuts every width inside its residual
branch to the share given (``fraction``, or ``k`` for the share k / C), keeping each width's most
important channels (`modify.conversion.surgery.narrow`). A rule without ``action`` is ``mod``.
A version-1 recipe cannot name an action, and readers that only select blocks
(`modify.baselines.delete_blocks`) refuse a version-2 recipe.

Shipped recipes, loadable by name: ``every_other`` (the paper's placement), ``all`` and
``late_stages``; see `shipped_recipes`.

Example:
    >>> r = load_recipe({"version": 1, "defaults": {"c": 64}, "rules": [{"index": "odd"}]})
    >>> r.defaults.k_for(1024)
    16
    >>> print(r.to_yaml(), end="")  # doctest: +NORMALIZE_WHITESPACE
    version: 1
    defaults: {c: 64}
    mod: {form: whole, fusion: first, order: score, scale: true, reduction: 16}
    rules:
    - {index: odd}
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modify.conversion.recipe_parts import BlockAction, BlockRule, Capacity, mod_config_from
from modify.conversion.validation import INDEX_KEYWORDS, as_mapping, check_keys, fail, is_int, suggest
from modify.errors import RecipeError
from modify.layers.options import Init, MoDConfig

if TYPE_CHECKING:
    from modify.conversion.discover import BlockSite

__all__ = [
    "RECIPE_VERSION",
    "RECIPE_VERSIONS",
    "INDEX_KEYWORDS",
    "Capacity",
    "BlockAction",
    "BlockRule",
    "Recipe",
    "load_recipe",
    "shipped_recipes",
    "shipped_recipe_path",
]

RECIPE_VERSION = 1  # the version of a recipe that only selects MoD blocks (every shipped recipe)
RECIPE_VERSIONS = (1, 2)  # the versions this modify reads; 2 adds per-block actions

_RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # package data: the canonical shipped recipes
_TOP_KEYS = ("version", "defaults", "mod", "rules")
_TOP_KEYS_V2 = (*_TOP_KEYS, "init", "zero_update")
_INITS = tuple(i.value for i in Init)  # modify.layers.options is torch-free


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Which blocks change and how (``rules``), the k of MoD blocks whose rule gives none
    (``defaults``), and how MoD blocks are built (``mod``).

    Rules apply in order; a later rule that selects a block overrides the earlier ones for it.
    Version 1 rules convert (or, with ``skip``, keep) the blocks they select; version 2 rules
    carry an ``action`` each.

    Example:
        >>> r = Recipe(rules=(BlockRule(index="odd"), BlockRule(stage=3, capacity=Capacity(skip=True))))
        >>> r.to_dict()["rules"]
        [{'index': 'odd'}, {'stage': 3, 'skip': True}]
    """

    version: int = RECIPE_VERSION  # schema version: 1 (MoD or skip) or 2 (per-block actions)
    defaults: Capacity = Capacity(c=64)  # capacity of a selected block whose rule gives none (not skip)
    rules: tuple[BlockRule, ...] = ()  # applied in order; a later match overrides an earlier one
    mod: MoDConfig = MoDConfig()  # how each MoD block is built (form, fusion, order, scale, reduction)
    init: str | None = None  # version 2: how its MoD blocks start when convert is given no init (a plan's)
    zero_update: bool = False  # version 2: ... with their branch's last layer at zero (each starts as its deletion)
    source: str | None = dataclasses.field(default=None, compare=False)  # file or shipped name, for messages

    def __post_init__(self) -> None:
        _check_version(self.version, "Recipe.version")
        if not isinstance(self.defaults, Capacity) or self.defaults.skip:
            raise fail(
                "Recipe.defaults",
                f"{self.defaults!r} is not a k, fraction or c capacity; expected Capacity(c=64), say.",
            )
        object.__setattr__(self, "rules", tuple(self.rules))
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, BlockRule):
                raise fail(f"Recipe.rules[{i}]", f"{rule!r} is not a BlockRule.")
            if rule.action is not None and self.version < 2:
                raise fail(f"Recipe.rules[{i}].action", f"{rule.action.value!r}: per-block actions need version=2.")
        if isinstance(self.mod, Mapping):
            object.__setattr__(self, "mod", mod_config_from(self.mod, "Recipe.mod"))
        elif not isinstance(self.mod, MoDConfig):
            raise fail("Recipe.mod", f"{self.mod!r} is not a MoDConfig or a mapping of its options.")

    def where(self, path: str) -> str:
        """``path`` with the recipe's source, for messages: ``rules[0] of recipe 'late_stages'``."""
        return f"{path} of recipe '{self.source}'" if self.source else path

    def select(self, site: BlockSite) -> tuple[int, Capacity] | None:
        """The index of the last rule that selects ``site`` and the capacity it gives, or None."""
        decided = self.decide(site)
        return None if decided is None else (decided[0], decided[2])

    def decide(self, site: BlockSite) -> tuple[int, BlockAction, Capacity] | None:
        """The index of the last rule that selects ``site``, its action, and the capacity it
        gives (the defaults where it gives none), or None when no rule selects it."""
        for i in reversed(range(len(self.rules))):
            rule = self.rules[i]
            if rule.matches(site):
                return i, rule.effective_action(), rule.capacity or self.defaults
        return None

    @property
    def actions(self) -> frozenset[BlockAction]:
        """Every action some rule takes."""
        return frozenset(rule.effective_action() for rule in self.rules)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data; ``Recipe.from_dict(r.to_dict()) == r``."""
        out: dict[str, Any] = {"version": self.version, "defaults": self.defaults.to_dict(), "mod": self.mod.as_dict()}
        if self.init is not None:
            out["init"] = self.init
        if self.zero_update:
            out["zero_update"] = True
        out["rules"] = [rule.to_dict() for rule in self.rules]
        return out

    def to_yaml(self) -> str:
        """The recipe as YAML text (flow style for the small mappings), loadable by `load_recipe`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str | None = None) -> Recipe:
        """Validate a parsed recipe; every error names the YAML path of the offending entry.

        Args:
            raw: The mapping that the YAML file holds.
            source: Where it came from (a path or shipped name), prefixed to error messages.

        Raises:
            RecipeError: A misspelt key, wrong type, impossible value or missing version.
        """
        try:
            return _recipe_from(raw, source)
        except RecipeError as err:
            if source is None:
                raise
            raise RecipeError(f"recipe '{source}': {err}") from None


def _check_version(value: object, path: str) -> None:
    if not is_int(value) or value not in RECIPE_VERSIONS:
        raise fail(
            path,
            f"{value!r} is not a supported recipe version; expected `version: 1` (MoD blocks) or `version: 2` "
            "(per-block actions), the versions this modify reads. Upgrade modify, or rewrite the recipe in one "
            "of those schemas (see `modify.conversion.recipe`).",
        )


def _recipe_from(raw: object, source: str | None) -> Recipe:
    raw = as_mapping(raw, "", "a mapping with version, defaults, mod and rules (see `modify.conversion.recipe`)")
    check_keys(raw, _TOP_KEYS_V2, "", "a recipe")
    if "version" not in raw:
        raise fail("version", "missing; expected `version: 1` (or 2, for per-block actions) at the top of the recipe.")
    _check_version(raw["version"], "version")
    version = int(raw["version"])
    init, zero_update = _start_from(raw, version)
    defaults = Capacity.from_dict(raw["defaults"], "defaults") if "defaults" in raw else Capacity(c=64)
    mod = mod_config_from(raw["mod"], "mod") if "mod" in raw else MoDConfig()
    if "rules" not in raw:
        raise fail("rules", "missing; expected a non-empty list of rules such as `rules: [{index: odd}]`.")
    rules_raw = raw["rules"]
    if not isinstance(rules_raw, list) or not rules_raw:
        raise fail(
            "rules", f"{rules_raw!r} is not a non-empty list; expected a list of rules such as [{{index: odd}}]."
        )
    rules = tuple(BlockRule.from_dict(entry, f"rules[{i}]", version=version) for i, entry in enumerate(rules_raw))
    return Recipe(
        version=version, defaults=defaults, rules=rules, mod=mod, init=init, zero_update=zero_update, source=source
    )


def _start_from(raw: Mapping[str, Any], version: int) -> tuple[str | None, bool]:
    """A version-2 recipe's ``init`` and ``zero_update`` (how its MoD blocks start)."""
    for key in ("init", "zero_update"):
        if key in raw and version < 2:
            raise fail(key, f"{raw[key]!r}: how MoD blocks start is part of a version-2 recipe; write `version: 2`.")
    init = raw.get("init")
    if init is not None and (not isinstance(init, str) or init not in _INITS):
        raise fail(
            "init", f"{init!r} is not an init; expected one of {', '.join(_INITS)}." + suggest(str(init), _INITS)
        )
    zero_update = raw.get("zero_update", False)
    if not isinstance(zero_update, bool):
        raise fail("zero_update", f"{zero_update!r} is not a boolean; expected true or false.")
    return init, zero_update


# --------------------------------------------------------------------------- loading


def shipped_recipes() -> tuple[str, ...]:
    """Names of the recipes shipped with modify, loadable with ``load_recipe(name)``.

    Example:
        >>> "every_other" in shipped_recipes()
        True
    """
    return tuple(sorted(p.stem for p in _RECIPES_DIR.glob("*.yaml")))


def shipped_recipe_path(name: str) -> Path:
    """The file of a shipped recipe (``every_other`` -> ``.../modify/recipes/every_other.yaml``).

    Raises:
        RecipeError: ``name`` is not a shipped recipe; the message lists them.
    """
    names = shipped_recipes()
    if name not in names:
        raise RecipeError(
            f"{name!r} is not a shipped recipe; expected one of {', '.join(names)}, or a path to a YAML file."
            + suggest(name, names)
        )
    return _RECIPES_DIR / f"{name}.yaml"


def _read_yaml(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise RecipeError(f"recipe {label} is a directory; expected a YAML file.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {label} could not be read ({err}); expected a UTF-8 YAML file.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise RecipeError(f"recipe {label} is not valid YAML: {detail}. Fix the syntax at the line shown.") from None
    if data is None:
        raise RecipeError(f"recipe {label} is empty; expected a mapping with version, defaults and rules.")
    return data


def load_recipe(source: str | os.PathLike[str] | Mapping[str, Any] | Recipe) -> Recipe:
    """A validated `Recipe` from a shipped name, a YAML path, a dict, or a `Recipe` (returned as is).

    A string that names a shipped recipe (``"every_other"``, ``"all"``, ``"late_stages"``) loads it,
    even where a file of that name exists in the working directory (write ``./all`` for that file).

    Args:
        source: Shipped name, path to a YAML file, mapping as parsed from YAML, or a `Recipe`.

    Returns:
        The recipe, with ``source`` set to the name or path it was loaded from.

    Raises:
        RecipeError: Unknown name, missing or unreadable file, invalid YAML, or invalid content
            (the message names the file and the YAML path of the offending entry).

    Example:
        >>> load_recipe("every_other").rules
        (BlockRule(stage=None, index='odd', name=None, capacity=None, action=None),)
    """
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise RecipeError(
            f"recipe {source!r} is a {type(source).__name__}; expected a shipped recipe name "
            f"({', '.join(shipped_recipes())}), a path to a YAML file, a dict or a Recipe."
        )
    if isinstance(source, str) and source in shipped_recipes():
        return Recipe.from_dict(_read_yaml(shipped_recipe_path(source), repr(source)), source=source)
    path = Path(source)
    if not path.exists():
        names = shipped_recipes()
        if isinstance(source, str) and not path.suffix and os.sep not in source and "/" not in source:
            raise RecipeError(
                f"recipe '{source}' is neither a shipped recipe ({', '.join(names)}) nor an existing file; "
                "expected one of those names or a path to a YAML file." + suggest(source, names)
            )
        raise RecipeError(f"recipe file '{path}' does not exist; expected a path to a YAML file.")
    return Recipe.from_dict(_read_yaml(path, f"'{path}'"), source=str(path))
