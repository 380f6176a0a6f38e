"""The planner's rows in a comparison: for each target speed-up, the plan `modify plan` makes (every
action allowed) and the plan restricted to deleting blocks (the best deletion subset the same
measurements find), as candidates fine-tuned exactly as every other row.

Every choice of every block is timed and scored once (`modify.study.planner.measure_choices`, kept in
``plans/table.json``); each target's two plans are solved from that table and measured. Plans are
kept in the sweep's folder (``plans/``, YAML with the numbers and JSON), so a resumed sweep fine-tunes
the same plans: planning again would time again, and timing noise could pick another plan.
Torch-Pruning rows at the same targets come from `modify.study.candidates`.

Example:
    >>> plan_labels(1.5)
    ('plan 1.5x', 'plan 1.5x, deletion only')
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from modify.errors import PlanError
from modify.study.candidates import Candidate
from modify.study.store import SweepStore

__all__ = ["planned_candidates", "plan_labels"]


def plan_labels(target: float) -> tuple[str, str]:
    """The labels of the two planned rows of one target."""
    return f"plan {target:g}x", f"plan {target:g}x, deletion only"


def _candidate(kind: str, target: float, recipe: dict[str, Any], config: Any) -> Candidate:
    full, deletion = plan_labels(target)
    if kind == "delete":
        return Candidate("delete", deletion, blocks=Candidate("plan", full, recipe=recipe).deleted_only() or ())
    return Candidate(
        "plan",
        full,
        recipe=recipe,
        init=config.init,
        zero_update=config.zero_update,
        block_distill_steps=config.distill_steps,
    )


def planned_candidates(
    original: nn.Module,
    data: Dataset,
    *,
    targets: Sequence[float],
    config: Any,
    out_dir: Any,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[list[Candidate], list[str]]:
    """For each target, the full plan and the deletion-only plan as candidates (made now, or read
    from ``out_dir/plans``); returns them and a line per plan that could not be made.

    ``config`` is the `modify.study.planner.PlanConfig` every plan uses (its speed-up and actions
    are set per plan).
    """
    from modify.io.files import atomic_write_text
    from modify.study import planner
    from modify.study.plan_file import plan_yaml

    store = SweepStore(out_dir)
    (store.root / "plans").mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda kind, info: None)
    candidates: list[Candidate] = []
    problems: list[str] = []
    table: planner.ChoiceTable | None = None
    for target in targets:
        for kind, actions in (("all", config.actions), ("delete", ("delete",))):
            stem = f"plans/{kind}-{target:g}x"
            path = store.root / f"{stem}.json"
            if path.is_file():
                stored = json.loads(path.read_text())
            else:
                emit("plan", {"target": target, "kind": kind})
                this = dataclasses.replace(config, speedup=target, actions=tuple(actions))
                try:
                    table = table or _table(
                        original, data, dataclasses.replace(config, speedup=max(targets)), store, on_event
                    )
                    result = planner.plan(
                        original, speedup=target, data=data, config=this, table=table, on_event=on_event
                    )
                except PlanError as e:
                    problems.append(f"{plan_labels(target)[kind == 'delete']}: {e}")
                    continue
                stored = {
                    "recipe": result.recipe,
                    "measured_speedup": result.measured_speedup,
                    "predicted_speedup": result.predicted_speedup,
                    "measured_kl": result.measured_kl,
                    "predicted_kl": result.predicted_kl,
                    "chosen": [dataclasses.asdict(r) for r in result.chosen],
                    "finalists": [dataclasses.asdict(f) for f in result.finalists],
                }
                store.write(f"{stem}.json", stored)
                atomic_write_text(store.root / f"{stem}.yaml", plan_yaml(result, model="the compared model"))
            candidates.append(_candidate(kind, target, stored["recipe"], config))
    return candidates, problems


def _table(original: nn.Module, data: Dataset, config: Any, store: SweepStore, on_event: Any) -> Any:
    """Every choice timed and scored once, or read back from ``plans/table.json``."""
    from modify.study.planner import ChoiceTable, measure_choices

    path = store.root / "plans" / "table.json"
    if path.is_file():
        return ChoiceTable.from_dict(json.loads(path.read_text()))
    table = measure_choices(original, data, config, on_event=on_event)
    store.write("plans/table.json", table.as_dict())
    return table
