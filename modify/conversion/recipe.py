"""Recipes: which residual Conv-Blocks become MoD blocks, and with which k.

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
import fnmatch
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modify.conversion.validation import (
    INDEX_KEYWORDS,
    _fail,
    _suggest,
    _check_keys,
    _is_int,
    _check_int,
    _check_fraction,
    _check_int_list,
    _check_index,
    _check_names,
    _as_mapping,
)
from modify.errors import RecipeError
from modify.layers.options import BlockForm, FusionSlot, MoDConfig, SelectionOrder

if TYPE_CHECKING:
    from modify.conversion.discover import BlockSite

__all__ = [
    "RECIPE_VERSION",
    "INDEX_KEYWORDS",
    "Capacity",
    "BlockRule",
    "Recipe",
    "load_recipe",
    "shipped_recipes",
    "shipped_recipe_path",
]

RECIPE_VERSION = 1  # the one schema version this module reads and writes

_RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # package data: the canonical shipped recipes
_TOP_KEYS = ("version", "defaults", "mod", "rules")
_CAPACITY_KEYS = ("k", "fraction", "c")
_SELECTOR_KEYS = ("stage", "index", "name")
_RULE_KEYS = (*_SELECTOR_KEYS, *_CAPACITY_KEYS, "skip")
_MOD_KEYS = tuple(f.name for f in dataclasses.fields(MoDConfig))
_MOD_CHOICES = {"form": BlockForm, "fusion": FusionSlot, "order": SelectionOrder}
_FRACTION_EPS = 1e-9  # so that 0.29 * 100 floors to 29, not 28


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Capacity:
    """How many channels a selected block processes: exactly one of ``k``, ``fraction``, ``c``, ``skip``.

    Example:
        >>> Capacity(c=64).k_for(256), Capacity(fraction=0.25).k_for(256), Capacity(k=8).k_for(256)
        (4, 64, 8)
        >>> Capacity(skip=True).k_for(256) is None
        True
    """

    k: int | None = None  # channels per block, >= 1 (must also be below the block's C)
    fraction: float | None = None  # share of C in (0, 1): k = max(1, floor(C * fraction))
    c: int | None = None  # the paper's capacity, >= 1: k = max(1, C // c)
    skip: bool = False  # the block stays standard

    def __post_init__(self) -> None:
        self._validate("Capacity")

    def _validate(self, path: str) -> None:
        given = [key for key in _CAPACITY_KEYS if getattr(self, key) is not None]
        if not isinstance(self.skip, bool):
            raise _fail(f"{path}.skip", f"{self.skip!r} is not a boolean; expected true or false.")
        if self.skip:
            given.append("skip")
        if len(given) != 1:
            shown = ", ".join(f"{key}: {getattr(self, key)!r}" for key in given) or "none"
            raise _fail(
                path,
                f"gives {len(given)} capacities ({shown}); expected exactly one of "
                "k (channels), fraction (share of C) or c (k = C // c), or skip: true.",
            )
        if self.k is not None:
            _check_int(self.k, f"{path}.k", minimum=1, expected="a channel count k >= 1")
        if self.fraction is not None:
            object.__setattr__(self, "fraction", _check_fraction(self.fraction, f"{path}.fraction"))
        if self.c is not None:
            _check_int(self.c, f"{path}.c", minimum=1, expected="a capacity c >= 1 (k = C // c; 64 for ResNets)")

    def k_for(self, channels: int) -> int | None:
        """k for a block of ``channels`` channels; None when the capacity is ``skip``.

        The result may be >= ``channels`` (``k: 300`` on a 256-channel block); `modify.conversion.plan`
        rejects that with the block's name.
        """
        if self.skip:
            return None
        if self.k is not None:
            return self.k
        if self.fraction is not None:
            return max(1, math.floor(channels * self.fraction + _FRACTION_EPS))
        assert self.c is not None  # guaranteed by __post_init__
        return max(1, channels // self.c)

    def to_dict(self) -> dict[str, Any]:
        """The one key/value of the YAML form, e.g. ``{"c": 64}`` or ``{"skip": True}``."""
        if self.skip:
            return {"skip": True}
        key = next(key for key in _CAPACITY_KEYS if getattr(self, key) is not None)
        return {key: getattr(self, key)}

    def describe(self) -> str:
        """Short text for messages: ``c=64``, ``k=8``, ``fraction=0.25``, ``skip``."""
        (key, value), = self.to_dict().items()
        return "skip" if key == "skip" else f"{key}={value}"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str = "defaults", *, allow_skip: bool = False) -> Capacity:
        """Validate ``{c: 64}``-style YAML; errors name ``path``."""
        raw = _as_mapping(raw, path, "a mapping with one of k, fraction or c, such as {c: 64}")
        valid = (*_CAPACITY_KEYS, "skip") if allow_skip else _CAPACITY_KEYS
        if not allow_skip and "skip" in raw:
            raise _fail(f"{path}.skip", f"{raw['skip']!r}: {path} cannot skip; expected one of k, fraction or c.")
        _check_keys(raw, valid, path, "a capacity")
        return _capacity_from(raw, path, required=True)  # type: ignore[return-value]


def _capacity_from(raw: Mapping[str, Any], path: str, *, required: bool) -> Capacity | None:
    """The capacity given by the capacity keys of ``raw`` (None if none and not ``required``)."""
    skip = raw.get("skip", False)
    if not isinstance(skip, bool):
        raise _fail(f"{path}.skip", f"{skip!r} is not a boolean; expected true or false.")
    given = [key for key in _CAPACITY_KEYS if key in raw] + (["skip"] if skip else [])
    if len(given) > 1:
        shown = ", ".join(f"{key}: {raw[key]!r}" for key in given)
        split = " Split it into two rules if you meant both (later rules override earlier ones)."
        raise _fail(
            path,
            f"gives {len(given)} capacities ({shown}); expected at most one of k, fraction, c or skip."
            + (split if path.startswith("rules") else ""),
        )
    if not given:
        if required:
            raise _fail(path, "gives no capacity; expected one of k, fraction or c, such as {c: 64}.")
        return None
    key = given[0]
    value = raw.get(key, True)
    if key == "k":
        return Capacity(k=_check_int(value, f"{path}.k", minimum=1, expected="a channel count k >= 1"))
    if key == "fraction":
        return Capacity(fraction=_check_fraction(value, f"{path}.fraction"))
    if key == "c":
        expected = "a capacity c >= 1 (k = C // c; 64 for ResNets)"
        return Capacity(c=_check_int(value, f"{path}.c", minimum=1, expected=expected))
    return Capacity(skip=True)


@dataclasses.dataclass(frozen=True)
class BlockRule:
    """Selectors (AND-ed; None = any) and the capacity the selected blocks get.

    Example:
        >>> rule = BlockRule(stage=3, index="odd", capacity=Capacity(k=32))
        >>> rule.stage, rule.to_dict()
        ((3,), {'stage': 3, 'index': 'odd', 'k': 32})
    """

    stage: tuple[int, ...] | None = None  # 0-based stages it selects (an int is stored as a 1-tuple)
    index: str | tuple[int, ...] | None = None  # "odd" | "even" | "all" | 0-based indices in the stage
    name: tuple[str, ...] | None = None  # fnmatch globs on BlockSite.name, any may match (str -> 1-tuple)
    capacity: Capacity | None = None  # k / fraction / c / skip for its blocks; None = the recipe's defaults

    def __post_init__(self) -> None:
        if self.stage is not None:
            object.__setattr__(self, "stage", _check_int_list(self.stage, "BlockRule.stage", what="stage"))
        if self.index is not None:
            object.__setattr__(self, "index", _check_index(self.index, "BlockRule.index"))
        if self.name is not None:
            object.__setattr__(self, "name", _check_names(self.name, "BlockRule.name"))
        if self.capacity is not None and not isinstance(self.capacity, Capacity):
            raise _fail("BlockRule.capacity", f"{self.capacity!r} is not a Capacity; expected Capacity(...) or None.")

    def matches(self, site: BlockSite) -> bool:
        """Whether every selector given matches ``site`` (convertible or not)."""
        if self.stage is not None and site.stage not in self.stage:
            return False
        if self.index is not None:
            if self.index == "odd" and site.index % 2 != 1:
                return False
            if self.index == "even" and site.index % 2 != 0:
                return False
            if isinstance(self.index, tuple) and site.index not in self.index:
                return False
        if self.name is not None and not any(fnmatch.fnmatchcase(site.name, glob) for glob in self.name):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The YAML form; one-element stage and name lists are written as scalars."""
        out: dict[str, Any] = {}
        if self.stage is not None:
            out["stage"] = self.stage[0] if len(self.stage) == 1 else list(self.stage)
        if self.index is not None:
            out["index"] = self.index if isinstance(self.index, str) else list(self.index)
        if self.name is not None:
            out["name"] = self.name[0] if len(self.name) == 1 else list(self.name)
        if self.capacity is not None:
            out.update(self.capacity.to_dict())
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str = "rules[0]") -> BlockRule:
        """Validate one entry of ``rules``; errors name ``path`` (``rules[1].index``)."""
        raw = _as_mapping(raw, path, "a mapping of selectors (stage, index, name) and at most one capacity")
        _check_keys(raw, _RULE_KEYS, path, "a rule")
        return cls(
            stage=_check_int_list(raw["stage"], f"{path}.stage", what="stage") if "stage" in raw else None,
            index=_check_index(raw["index"], f"{path}.index") if "index" in raw else None,
            name=_check_names(raw["name"], f"{path}.name") if "name" in raw else None,
            capacity=_capacity_from(raw, path, required=False),
        )


def _mod_from(raw: object, path: str = "mod") -> MoDConfig:
    raw = _as_mapping(raw, path, f"a mapping with some of {', '.join(_MOD_KEYS)}")
    _check_keys(raw, _MOD_KEYS, path, "the MoD options")
    for key, choice in _MOD_CHOICES.items():
        if key in raw:
            valid = [m.value for m in choice]
            if not isinstance(raw[key], str) or raw[key] not in valid:
                raise _fail(
                    f"{path}.{key}",
                    f"{raw[key]!r} is not a valid {key}; expected one of {', '.join(valid)}."
                    + _suggest(raw[key], valid),
                )
    if "scale" in raw and not isinstance(raw["scale"], bool):
        raise _fail(f"{path}.scale", f"{raw['scale']!r} is not a boolean; expected true or false.")
    if "reduction" in raw:
        _check_int(raw["reduction"], f"{path}.reduction", minimum=1, expected="the selector's ratio r, an integer >= 1")
    return MoDConfig(**dict(raw))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Which blocks become MoD blocks (``rules``), their k (``defaults``), and how they are built (``mod``).

    Rules apply in order; a later rule that selects a block overrides the earlier ones for it.

    Example:
        >>> r = Recipe(rules=(BlockRule(index="odd"), BlockRule(stage=3, capacity=Capacity(skip=True))))
        >>> r.to_dict()["rules"]
        [{'index': 'odd'}, {'stage': 3, 'skip': True}]
    """

    version: int = RECIPE_VERSION  # schema version; only 1 exists
    defaults: Capacity = Capacity(c=64)  # capacity of a selected block whose rule gives none (not skip)
    rules: tuple[BlockRule, ...] = ()  # applied in order; a later match overrides an earlier one
    mod: MoDConfig = MoDConfig()  # how each MoD block is built (form, fusion, order, scale, reduction)
    source: str | None = dataclasses.field(default=None, compare=False)  # file or shipped name, for messages

    def __post_init__(self) -> None:
        _check_version(self.version, "Recipe.version")
        if not isinstance(self.defaults, Capacity) or self.defaults.skip:
            raise _fail(
                "Recipe.defaults",
                f"{self.defaults!r} is not a k, fraction or c capacity; expected Capacity(c=64), say.",
            )
        object.__setattr__(self, "rules", tuple(self.rules))
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, BlockRule):
                raise _fail(f"Recipe.rules[{i}]", f"{rule!r} is not a BlockRule.")
        if isinstance(self.mod, Mapping):
            object.__setattr__(self, "mod", _mod_from(self.mod, "Recipe.mod"))
        elif not isinstance(self.mod, MoDConfig):
            raise _fail("Recipe.mod", f"{self.mod!r} is not a MoDConfig or a mapping of its options.")

    def where(self, path: str) -> str:
        """``path`` with the recipe's source, for messages: ``rules[0] of recipe 'late_stages'``."""
        return f"{path} of recipe '{self.source}'" if self.source else path

    def select(self, site: BlockSite) -> tuple[int, Capacity] | None:
        """The index of the last rule that selects ``site`` and the capacity it gives, or None."""
        for i in reversed(range(len(self.rules))):
            if self.rules[i].matches(site):
                return i, self.rules[i].capacity or self.defaults
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data; ``Recipe.from_dict(r.to_dict()) == r``."""
        return {
            "version": self.version,
            "defaults": self.defaults.to_dict(),
            "mod": self.mod.as_dict(),
            "rules": [rule.to_dict() for rule in self.rules],
        }

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
    if not _is_int(value) or value != RECIPE_VERSION:
        raise _fail(
            path,
            f"{value!r} is not a supported recipe version; expected `version: {RECIPE_VERSION}`, the only "
            "version this modify reads. Upgrade modify, or rewrite the recipe in the version 1 schema "
            "(see `modify.conversion.recipe`).",
        )


def _recipe_from(raw: object, source: str | None) -> Recipe:
    raw = _as_mapping(raw, "", "a mapping with version, defaults, mod and rules (see `modify.conversion.recipe`)")
    _check_keys(raw, _TOP_KEYS, "", "a recipe")
    if "version" not in raw:
        raise _fail("version", f"missing; expected `version: {RECIPE_VERSION}` at the top of the recipe.")
    _check_version(raw["version"], "version")
    defaults = Capacity.from_dict(raw["defaults"], "defaults") if "defaults" in raw else Capacity(c=64)
    mod = _mod_from(raw["mod"], "mod") if "mod" in raw else MoDConfig()
    if "rules" not in raw:
        raise _fail("rules", "missing; expected a non-empty list of rules such as `rules: [{index: odd}]`.")
    rules_raw = raw["rules"]
    if not isinstance(rules_raw, list) or not rules_raw:
        raise _fail(
            "rules", f"{rules_raw!r} is not a non-empty list; expected a list of rules such as [{{index: odd}}]."
        )
    rules = tuple(BlockRule.from_dict(entry, f"rules[{i}]") for i, entry in enumerate(rules_raw))
    return Recipe(version=RECIPE_VERSION, defaults=defaults, rules=rules, mod=mod, source=source)


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
            + _suggest(name, names)
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
        (BlockRule(stage=None, index='odd', name=None, capacity=None),)
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
                "expected one of those names or a path to a YAML file." + _suggest(source, names)
            )
        raise RecipeError(f"recipe file '{path}' does not exist; expected a path to a YAML file.")
    return Recipe.from_dict(_read_yaml(path, f"'{path}'"), source=str(path))
