"""The two consoles every command prints on: results on stdout, errors and progress on stderr."""

from __future__ import annotations

from functools import cache

from rich.console import Console

__all__ = ["console", "error_console"]


@cache
def console() -> Console:
    return Console(soft_wrap=False)


@cache
def error_console() -> Console:
    return Console(stderr=True)
