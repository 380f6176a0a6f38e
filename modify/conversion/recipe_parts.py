"""The entries of a recipe: a block's capacity (`Capacity`), what happens to it (`BlockAction`),
and the rules that select blocks (`BlockRule`); `modify.conversion.recipe` puts them together.
Torch-free; every error is a `RecipeError` naming the YAML path.

Example:
    >>> rule = BlockRule.from_dict({"name": "layer3.1", "action": "narrow", "fraction": 0.25}, "rules[0]", version=2)
    >>> rule.effective_action(), rule.capacity
    (<BlockAction.NARROW: 'narrow'>, Capacity(k=None, fraction=0.25, c=None, skip=False))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modify.conversion.validation import (
    as_mapping,
    check_fraction,
    check_index,
    check_int,
    check_int_list,
    check_keys,
    check_names,
    fail,
    suggest,
)
from modify.layers.options import (
    BlockForm,
    FusionSlot,
    MoDConfig,
    ReducedWeights,
    ScorerActivation,
    Selection,
    SelectionOrder,
    StrChoice,
)

if TYPE_CHECKING:
    from modify.conversion.discover import BlockSite

__all__ = ["Capacity", "BlockAction", "BlockRule", "mod_config_from", "capacity_from"]

_CAPACITY_KEYS = ("k", "fraction", "c")
_SELECTOR_KEYS = ("stage", "index", "name")
_RULE_KEYS = (*_SELECTOR_KEYS, *_CAPACITY_KEYS, "skip")
_RULE_KEYS_V2 = (*_SELECTOR_KEYS, "action", *_CAPACITY_KEYS)
_MOD_KEYS = tuple(f.name for f in dataclasses.fields(MoDConfig))
_MOD_CHOICES = {
    "form": BlockForm,
    "fusion": FusionSlot,
    "order": SelectionOrder,
    "selection": Selection,
    "activation": ScorerActivation,
    "weights": ReducedWeights,
}
_FRACTION_EPS = 1e-9  # so that 0.29 * 100 floors to 29, not 28


class BlockAction(StrChoice):
    """What a recipe does to a block it selects (version 2; version 1 knows mod and skip)."""

    KEEP = "keep"  # the block stays as it is
    MOD = "mod"  # a MoD block with k channels (k, fraction or c)
    NARROW = (
        "narrow"  # the branch's inner widths cut to a share (fraction, or k: the share k / C), in and out kept at C
    )
    DELETE = "delete"  # the block replaced by its shortcut (`modify.baselines.delete_blocks`)


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
            raise fail(f"{path}.skip", f"{self.skip!r} is not a boolean; expected true or false.")
        if self.skip:
            given.append("skip")
        if len(given) != 1:
            shown = ", ".join(f"{key}: {getattr(self, key)!r}" for key in given) or "none"
            raise fail(
                path,
                f"gives {len(given)} capacities ({shown}); expected exactly one of "
                "k (channels), fraction (share of C) or c (k = C // c), or skip: true.",
            )
        if self.k is not None:
            check_int(self.k, f"{path}.k", minimum=1, expected="a channel count k >= 1")
        if self.fraction is not None:
            object.__setattr__(self, "fraction", check_fraction(self.fraction, f"{path}.fraction"))
        if self.c is not None:
            check_int(self.c, f"{path}.c", minimum=1, expected="a capacity c >= 1 (k = C // c; 64 for ResNets)")

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
        ((key, value),) = self.to_dict().items()
        return "skip" if key == "skip" else f"{key}={value}"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str = "defaults", *, allow_skip: bool = False) -> Capacity:
        """Validate ``{c: 64}``-style YAML; errors name ``path``."""
        raw = as_mapping(raw, path, "a mapping with one of k, fraction or c, such as {c: 64}")
        valid = (*_CAPACITY_KEYS, "skip") if allow_skip else _CAPACITY_KEYS
        if not allow_skip and "skip" in raw:
            raise fail(f"{path}.skip", f"{raw['skip']!r}: {path} cannot skip; expected one of k, fraction or c.")
        check_keys(raw, valid, path, "a capacity")
        return capacity_from(raw, path, required=True)  # type: ignore[return-value]


def capacity_from(raw: Mapping[str, Any], path: str, *, required: bool) -> Capacity | None:
    """The capacity given by the capacity keys of ``raw`` (None if none and not ``required``)."""
    skip = raw.get("skip", False)
    if not isinstance(skip, bool):
        raise fail(f"{path}.skip", f"{skip!r} is not a boolean; expected true or false.")
    given = [key for key in _CAPACITY_KEYS if key in raw] + (["skip"] if skip else [])
    if len(given) > 1:
        shown = ", ".join(f"{key}: {raw[key]!r}" for key in given)
        split = " Split it into two rules if you meant both (later rules override earlier ones)."
        raise fail(
            path,
            f"gives {len(given)} capacities ({shown}); expected at most one of k, fraction, c or skip."
            + (split if path.startswith("rules") else ""),
        )
    if not given:
        if required:
            raise fail(path, "gives no capacity; expected one of k, fraction or c, such as {c: 64}.")
        return None
    key = given[0]
    value = raw.get(key, True)
    if key == "k":
        return Capacity(k=check_int(value, f"{path}.k", minimum=1, expected="a channel count k >= 1"))
    if key == "fraction":
        return Capacity(fraction=check_fraction(value, f"{path}.fraction"))
    if key == "c":
        expected = "a capacity c >= 1 (k = C // c; 64 for ResNets)"
        return Capacity(c=check_int(value, f"{path}.c", minimum=1, expected=expected))
    return Capacity(skip=True)


@dataclasses.dataclass(frozen=True)
class BlockRule:
    """Selectors (AND-ed; None = any), what happens to the selected blocks and with which capacity.

    Example:
        >>> rule = BlockRule(stage=3, index="odd", capacity=Capacity(k=32))
        >>> rule.stage, rule.to_dict()
        ((3,), {'stage': 3, 'index': 'odd', 'k': 32})
        >>> BlockRule(name="layer4.1", action="delete").to_dict()
        {'name': 'layer4.1', 'action': 'delete'}
    """

    stage: tuple[int, ...] | None = None  # 0-based stages it selects (an int is stored as a 1-tuple)
    index: str | tuple[int, ...] | None = None  # "odd" | "even" | "all" | 0-based indices in the stage
    name: tuple[str, ...] | None = None  # fnmatch globs on BlockSite.name, any may match (str -> 1-tuple)
    capacity: Capacity | None = None  # k / fraction / c / skip for its blocks; None = the recipe's defaults
    action: BlockAction | None = None  # version 2: keep | mod | narrow | delete; None = version 1 (mod, or skip)

    def __post_init__(self) -> None:
        if self.action is not None:
            object.__setattr__(self, "action", BlockAction.from_str(self.action))
            _check_action_capacity(self.action, self.capacity, "BlockRule")
        if self.stage is not None:
            object.__setattr__(self, "stage", check_int_list(self.stage, "BlockRule.stage", what="stage"))
        if self.index is not None:
            object.__setattr__(self, "index", check_index(self.index, "BlockRule.index"))
        if self.name is not None:
            object.__setattr__(self, "name", check_names(self.name, "BlockRule.name"))
        if self.capacity is not None and not isinstance(self.capacity, Capacity):
            raise fail("BlockRule.capacity", f"{self.capacity!r} is not a Capacity; expected Capacity(...) or None.")

    def effective_action(self) -> BlockAction:
        """What the rule does: its action, or for a version-1 rule mod (keep when it skips)."""
        if self.action is not None:
            return self.action
        return BlockAction.KEEP if self.capacity is not None and self.capacity.skip else BlockAction.MOD

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
        if self.action is not None:
            out["action"] = self.action.value
        if self.capacity is not None:
            out.update(self.capacity.to_dict())
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str = "rules[0]", *, version: int = 1) -> BlockRule:
        """Validate one entry of ``rules`` of a recipe of ``version``; errors name ``path`` (``rules[1].index``)."""
        raw = as_mapping(raw, path, "a mapping of selectors (stage, index, name) and at most one capacity")
        if version == 1 and "action" in raw:
            raise fail(
                f"{path}.action",
                f"{raw['action']!r}: per-block actions (keep, mod, narrow, "
                "delete) need `version: 2` at the top of the recipe.",
            )
        if version >= 2 and "skip" in raw:
            raise fail(
                f"{path}.skip", f"{raw['skip']!r}: version 2 says `action: keep` for a block that stays as it is."
            )
        check_keys(raw, _RULE_KEYS if version == 1 else _RULE_KEYS_V2, path, "a rule")
        action = None
        if version >= 2:
            value = raw.get("action", BlockAction.MOD.value)
            valid = [m.value for m in BlockAction]
            if not isinstance(value, str) or value not in valid:
                raise fail(
                    f"{path}.action",
                    f"{value!r} is not an action; expected one of {', '.join(valid)}." + suggest(value, valid),
                )
            action = BlockAction(value)
        capacity = capacity_from(raw, path, required=False)
        if action is not None:
            _check_action_capacity(action, capacity, path)
        return cls(
            stage=check_int_list(raw["stage"], f"{path}.stage", what="stage") if "stage" in raw else None,
            index=check_index(raw["index"], f"{path}.index") if "index" in raw else None,
            name=check_names(raw["name"], f"{path}.name") if "name" in raw else None,
            capacity=capacity,
            action=action,
        )


def _check_action_capacity(action: BlockAction, capacity: Capacity | None, path: str) -> None:
    """keep and delete take no capacity; narrow takes k or a fraction (a share of the inner widths)."""
    if capacity is None:
        return
    ((key, value),) = capacity.to_dict().items()
    if action in (BlockAction.KEEP, BlockAction.DELETE):
        raise fail(f"{path}.{key}", f"{value!r}: action {action.value} takes no capacity; remove {key}.")
    if action is BlockAction.NARROW and key not in ("k", "fraction"):
        raise fail(
            f"{path}.{key}",
            f"{value!r}: action narrow takes a fraction of the block's "
            "inner widths (fraction: 0.25) or k (the share k / C).",
        )


def mod_config_from(raw: object, path: str = "mod") -> MoDConfig:
    raw = as_mapping(raw, path, f"a mapping with some of {', '.join(_MOD_KEYS)}")
    check_keys(raw, _MOD_KEYS, path, "the MoD options")
    for key, choice in _MOD_CHOICES.items():
        if key in raw:
            valid = [m.value for m in choice]
            if not isinstance(raw[key], str) or raw[key] not in valid:
                raise fail(
                    f"{path}.{key}",
                    f"{raw[key]!r} is not a valid {key}; expected one of {', '.join(valid)}."
                    + suggest(raw[key], valid),
                )
    if "scale" in raw and not isinstance(raw["scale"], bool):
        raise fail(f"{path}.scale", f"{raw['scale']!r} is not a boolean; expected true or false.")
    if "reduction" in raw:
        check_int(raw["reduction"], f"{path}.reduction", minimum=1, expected="the selector's ratio r, an integer >= 1")
    try:
        return MoDConfig(**dict(raw))
    except ValueError as e:  # options valid alone that do not go together
        raise fail(path, str(e)) from None
