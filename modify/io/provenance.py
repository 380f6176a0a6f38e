"""A model's history as plain data, and how to replay it: the one record `modify.save` stores.

Every model `modify` builds or changes carries a `Provenance`: where its architecture comes from
(``source``: a model name, a timm name or an import path, with its builder's arguments) and every
surgery since, in order (``steps``: a conversion, a deletion, a pruning, a plan, a collapse of dead
selectors, each a `Step` with the plain data that replays it). Loading a checkpoint rebuilds the
source and replays the steps through `REPLAYS`, so the checkpoint names no method and nothing in it
is executed.

Methods register their replay by import path, resolved only when a step is replayed, so this
module imports no torch and nothing of modify's surgery; `register_replay` adds one of your own.

Example:
    >>> p = Provenance(source={"kind": "name", "name": "resnet18", "kwargs": {}})
    >>> p = p.then("delete", {"blocks": ["layer4.1"], "input_shape": [1, 3, 32, 32]})
    >>> [s.method for s in p.steps], Provenance.from_dict(p.as_dict()) == p
    (['delete'], True)
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from modify.errors import CheckpointError

__all__ = ["Step", "Provenance", "ATTRIBUTE", "REPLAYS", "of", "attach", "record", "register_replay", "replay"]

ATTRIBUTE = "modify_provenance"  # the attribute of an nn.Module that holds its `Provenance`


@dataclasses.dataclass(frozen=True)
class Step:
    """One surgery: the method (a key of `REPLAYS`) and the plain data its replay needs."""

    method: str  # "convert", "delete", "prune", or a method registered with `register_replay`
    data: Mapping[str, Any]  # JSON-like: recipe dicts, block names, shapes; never tensors or modules

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self.data)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Step:
        data = dict(raw)
        method = data.pop("method", None)
        if not isinstance(method, str):
            raise CheckpointError(
                f"a provenance step without a method ({sorted(raw)}); the file is damaged or not modify's."
            )
        return cls(method, data)


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a model comes from: its architecture's source, then its surgeries in order."""

    source: Mapping[str, Any] | None = None  # {"kind": "name" | "timm" | "import", "name": ..., "kwargs": {...}}
    steps: tuple[Step, ...] = ()  # applied in this order to the rebuilt source

    def then(self, method: str, data: Mapping[str, Any]) -> Provenance:
        """This history with one more step."""
        return dataclasses.replace(self, steps=(*self.steps, Step(method, dict(data))))

    def methods(self) -> tuple[str, ...]:
        return tuple(step.method for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": None if self.source is None else dict(self.source),
            "steps": [s.as_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Provenance:
        steps = raw.get("steps") or []
        if not isinstance(steps, list):
            raise CheckpointError(f"provenance steps {steps!r} are not a list; the file is damaged or not modify's.")
        return cls(raw.get("source"), tuple(Step.from_dict(s) for s in steps))


def of(model: object) -> Provenance:
    """The history ``model`` carries (an empty one if it carries none)."""
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, Provenance) else Provenance()


def attach(model: Any, provenance: Provenance) -> Any:
    """Gives ``model`` this history (replacing any it had); returns ``model``."""
    setattr(model, ATTRIBUTE, provenance)
    return model


def record(model: Any, method: str, data: Mapping[str, Any], *, base: object | None = None) -> Any:
    """Gives ``model`` the history of ``base`` (default: its own) plus one step; returns ``model``.

    A surgery calls it on the model it made, with the model it started from as ``base``.
    """
    return attach(model, of(model if base is None else base).then(method, data))


# method -> "package.module:function" taking (model, data) and returning the model with the step applied.
REPLAYS: dict[str, str | Callable[[Any, Mapping[str, Any]], Any]] = {
    "convert": "modify.conversion.pipeline:replay",
    "delete": "modify.baselines.delete:replay",
    "prune": "modify.baselines.prune:replay",
    "collapse": "modify.conversion.selector_units:replay_collapse",
}


def register_replay(method: str, replay_fn: str | Callable[[Any, Mapping[str, Any]], Any]) -> None:
    """Makes steps of ``method`` loadable: ``replay_fn(model, data)`` (or its import path) applies one.

    Raises:
        CheckpointError: ``method`` is registered already (a second registration would change
            what existing checkpoints mean).
    """
    if method in REPLAYS:
        raise CheckpointError(
            f"a replay for {method!r} is registered already ({REPLAYS[method]!r}); choose another method name."
        )
    REPLAYS[method] = replay_fn


def replay(model: Any, step: Step) -> Any:
    """``model`` with ``step`` applied again (the weights come afterwards, from the state_dict)."""
    target = REPLAYS.get(step.method)
    if target is None:
        known = ", ".join(sorted(REPLAYS))
        raise CheckpointError(
            f"the step {step.method!r} is not known to this modify (it knows {known}); upgrade modify."
        )
    if isinstance(target, str):
        module_name, _, name = target.partition(":")
        target = getattr(importlib.import_module(module_name), name)
    return target(model, step.data)
