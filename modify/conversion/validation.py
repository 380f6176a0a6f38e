"""The checks a recipe's values go through: each failure is a `RecipeError` naming the YAML path,
the value, what was expected and, for a misspelt key, the closest valid one. Torch-free.

Example:
    >>> check_index("odd", "rules[0].index")
    'odd'
    >>> suggest("indx", ["stage", "index", "name"])
    " Did you mean 'index'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from modify.errors import RecipeError

INDEX_KEYWORDS = ("odd", "even", "all")  # the named index selectors

__all__ = [
    "INDEX_KEYWORDS",
    "fail",
    "suggest",
    "check_keys",
    "is_int",
    "check_int",
    "check_fraction",
    "check_int_list",
    "check_index",
    "check_names",
    "as_mapping",
]


def fail(path: str, message: str) -> RecipeError:
    """The error for the value at ``path`` (a YAML path such as ``rules[0].k``), for the caller to raise."""
    return RecipeError(f"{path}: {message}" if path else message)


def suggest(word: str, valid: Sequence[str]) -> str:
    """The hint for the valid word closest to ``word`` (" Did you mean 'x'?"); "" when none is close."""
    close = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    close = close or [v for v in valid if str(word) and v.startswith(str(word))][:1]  # "late" -> "late_stages"
    return f" Did you mean {close[0]!r}?" if close else ""


def check_keys(raw: Mapping[Any, Any], valid: Sequence[str], path: str, what: str) -> None:
    """Every key of ``raw`` is one of ``valid``; an unknown one names the closest valid key."""
    for key in raw:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise fail(
                where,
                f"unknown key {key!r} in {what} (value {raw[key]!r}); valid keys: {', '.join(valid)}."
                + suggest(key, valid),
            )


def is_int(value: object) -> bool:
    """An int that is not a bool (YAML's ``true`` is no block count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, path: str, *, minimum: int, expected: str) -> int:
    """An integer of at least ``minimum``; ``expected`` says what the key wants."""
    if not is_int(value):
        hint = ""
        if isinstance(value, float) and path.endswith(".k") and 0 < value < 1:
            hint = f" For a share of the channels write `fraction: {value}`."
        raise fail(path, f"{value!r} is not an integer; expected {expected}.{hint}")
    if value < minimum:  # type: ignore[operator]
        raise fail(path, f"{value!r} is too small; expected {expected}.")
    return int(value)  # type: ignore[arg-type]


def check_fraction(value: object, path: str) -> float:
    """A share of the channels strictly between 0 and 1."""
    expected = "a fraction of the block's channels strictly between 0 and 1, such as 0.25"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, f"{value!r} is not a number; expected {expected}.")
    if not 0.0 < float(value) < 1.0:  # also rejects nan
        raise fail(path, f"{value!r} is outside (0, 1); expected {expected}.")
    return float(value)


def check_int_list(value: object, path: str, *, what: str) -> tuple[int, ...]:
    """One 0-based integer or a non-empty list of them, as a tuple."""
    expected = f"a 0-based {what} (an integer >= 0) or a non-empty list of them"
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise fail(path, f"{value!r} is an empty list; expected {expected}.")
    out = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]" if isinstance(value, (list, tuple)) else path
        out.append(check_int(item, item_path, minimum=0, expected=expected))
    return tuple(out)


def check_index(value: object, path: str) -> str | tuple[int, ...]:
    """A block index selector: 'odd', 'even', 'all', or 0-based indices in the stage."""
    expected = "'odd', 'even', 'all', or a list of 0-based block indices inside the stage"
    if isinstance(value, str):
        if value in INDEX_KEYWORDS:
            return value
        raise fail(
            path, f"{value!r} is not a valid index selector; expected {expected}." + suggest(value, INDEX_KEYWORDS)
        )
    if not (is_int(value) or isinstance(value, (list, tuple))):
        raise fail(path, f"{value!r} is not a valid index selector; expected {expected}.")
    return check_int_list(value, path, what="block index")


def check_names(value: object, path: str) -> tuple[str, ...]:
    """A glob on block names, or a non-empty list of them, as a tuple."""
    expected = "a glob on the block name such as 'layer3.*', or a non-empty list of globs"
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise fail(path, f"{value!r} is an empty list; expected {expected}.")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            item_path = f"{path}[{i}]" if isinstance(value, (list, tuple)) else path
            raise fail(item_path, f"{item!r} is not a non-empty string; expected {expected}.")
    return tuple(items)  # type: ignore[arg-type]


def as_mapping(raw: object, path: str, expected: str) -> Mapping[Any, Any]:
    """``raw`` itself if it is a mapping."""
    if not isinstance(raw, Mapping):
        raise fail(path, f"{raw!r} is not a mapping; expected {expected}.")
    return raw
