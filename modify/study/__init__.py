"""Studies: candidates built from a trained model, repaired, timed and scored, and the choices
made from them. Above `modify.measure`, `modify.baselines` and `modify.train`, so every call goes
down.

- `candidates`: one configuration each of MoD, deletion, Torch-Pruning or a per-block plan, built
  from the trained model;
- `store`: a sweep's folder of JSON records (resumable);
- `sweep`: every candidate fine-tuned alike, then measured (`modify compare`);
- `report`: the sweep's table, plot and recommendation.

Example:
    >>> from modify.study import default_candidates
    >>> default_candidates(blocks=("layer1.1",))[0].method
    'mod'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.study.candidates import Candidate as Candidate, default_candidates as default_candidates
    from modify.study.store import RunRecord as RunRecord, SweepStore as SweepStore
    from modify.study.sweep import CompareConfig as CompareConfig, run_sweep as run_sweep

_LAZY = {
    "Candidate": "modify.study.candidates",
    "default_candidates": "modify.study.candidates",
    "RunRecord": "modify.study.store",
    "SweepStore": "modify.study.store",
    "CompareConfig": "modify.study.sweep",
    "run_sweep": "modify.study.sweep",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
