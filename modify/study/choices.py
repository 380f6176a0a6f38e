"""What the planner may do to each residual block, and the models those choices make.

A `Choice` is one block's action: keep it, delete it (its shortcut), make it a MoD block with k =
a fraction of its width, or narrow its branch's inner widths to a share. Any set of choices, one
per block at most, is a version-2 recipe (`choice_recipe`), so a plan, a single-block probe and the
final model are all built by `modify.convert` and replay from a checkpoint the same way.

Example:
    >>> c = Choice("layer2.1", "mod", 0.25)
    >>> c.key, c.label(128), c.rule(128)
    ('layer2.1:mod:0.25', 'MoD k=32', {'name': 'layer2.1', 'action': 'mod', 'k': 32})
    >>> Choice("layer2.1", "narrow", 0.25).rule(128)
    {'name': 'layer2.1', 'action': 'narrow', 'fraction': 0.25}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from modify.conversion.recipe import BlockAction
from modify.layers.options import MoDConfig

__all__ = ["Choice", "block_choices", "choice_recipe", "ACTIONS", "FRACTIONS"]

ACTIONS = ("delete", "mod", "narrow")  # what the planner tries besides keeping a block
FRACTIONS = (0.5, 0.25, 0.125)  # k = C/2, C/4, C/8 for MoD; the same shares of the inner widths for narrow


@dataclasses.dataclass(frozen=True)
class Choice:
    """One block's action (and its fraction, for mod and narrow)."""

    block: str  # the block's name, as `modify blocks` lists it
    action: str  # keep | delete | mod | narrow
    fraction: float | None = None  # mod: k = max(1, floor(C * fraction)); narrow: the share of every inner width

    def __post_init__(self) -> None:
        action = BlockAction.from_str(self.action)
        object.__setattr__(self, "action", action.value)
        needs = action in (BlockAction.MOD, BlockAction.NARROW)
        if needs != (self.fraction is not None):
            raise ValueError(f"{self.action} takes {'a fraction' if needs else 'no fraction'}, got {self.fraction!r}.")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction={self.fraction!r} must lie in (0, 1).")

    @property
    def key(self) -> str:
        """``block:action[:fraction]``: unique among a plan's choices."""
        tail = f":{self.fraction:g}" if self.fraction is not None else ""
        return f"{self.block}:{self.action}{tail}"

    def k(self, channels: int) -> int:
        """A MoD choice's k for a block of ``channels`` channels."""
        assert self.fraction is not None
        return max(1, math.floor(channels * self.fraction + 1e-9))

    def label(self, channels: int, *, static: bool = False) -> str:
        """Short text for tables: ``keep``, ``delete``, ``MoD k=16`` (``static MoD k=16`` for a
        fixed channel set), ``narrow 1/4``."""
        if self.action == "mod":
            return f"{'static ' if static else ''}MoD k={self.k(channels)}"
        if self.action == "narrow":
            assert self.fraction is not None
            return f"narrow {Fraction(self.fraction).limit_denominator(64)}"
        return self.action

    def rule(self, channels: int) -> dict[str, Any]:
        """The version-2 recipe rule for this choice (MoD with its k resolved)."""
        rule: dict[str, Any] = {"name": self.block, "action": self.action}
        if self.action == "mod":
            rule["k"] = self.k(channels)
        elif self.action == "narrow":
            rule["fraction"] = self.fraction
        return rule


def block_choices(
    blocks: Mapping[str, int], *, actions: Sequence[str] = ACTIONS, fractions: Sequence[float] = FRACTIONS
) -> dict[str, list[Choice]]:
    """Every choice for every block (``blocks``: name -> channels C), keep first. A MoD k that
    would not be below C, or repeats another fraction's k, is left out.

    Example:
        >>> [c.key for c in block_choices({"layer1.1": 64}, actions=("delete", "mod"), fractions=(0.5,))["layer1.1"]]
        ['layer1.1:keep', 'layer1.1:delete', 'layer1.1:mod:0.5']
    """
    out: dict[str, list[Choice]] = {}
    for name, channels in blocks.items():
        options = [Choice(name, "keep")]
        seen_k: set[int] = set()
        for action in actions:
            if action == "delete":
                options.append(Choice(name, "delete"))
                continue
            for f in fractions:
                choice = Choice(name, action, f)
                if action == "mod":
                    k = choice.k(channels)
                    if k >= channels or k in seen_k:
                        continue
                    seen_k.add(k)
                options.append(choice)
        out[name] = options
    return out


def choice_recipe(choices: Iterable[Choice], channels: Mapping[str, int], mod: MoDConfig) -> dict[str, Any]:
    """The version-2 recipe of a set of choices (keeps need no rule); a recipe that changes
    nothing keeps its first block explicitly, so it still selects a block."""
    chosen = list(choices)
    rules = [c.rule(channels[c.block]) for c in chosen if c.action != "keep"]
    if not rules:
        first = chosen[0].block if chosen else next(iter(channels))
        rules = [{"name": first, "action": "keep"}]
    return {"version": 2, "mod": mod.as_dict(), "rules": rules}
