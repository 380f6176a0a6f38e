"""The candidates of a sweep: one configuration each of MoD, deletion, Torch-Pruning or a
per-block plan, and how each is built from the trained model.

Every candidate starts from the same trained model (the teacher): MoD conversions over
capacities, placements, fusion slots, forms and initialisations; the same blocks deleted
(`modify.baselines.delete_blocks`); static channel pruning with Torch-Pruning at matched
speed-ups (`modify.baselines.prune_channels`); a version-2 recipe that changes each block its own
way (``mixed``, what `modify plan` writes). A candidate's ``key`` names its records, its
``arch_key`` its architecture (what decides its speed).

Example:
    >>> [c.label for c in default_candidates(blocks=("layer1.1", "layer2.1"))][:3]
    ['MoD every_other c=64', 'MoD-OP k=0.25 as modify plan builds it', 'MoD-OP k=0.5 as modify plan builds it']
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from modify.errors import ModifyError

__all__ = ["Candidate", "default_candidates", "build_candidate", "METHODS"]

METHODS = ("mod", "delete", "prune", "mixed", "plan")  # plan: a mixed recipe `modify plan` chose


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration of the sweep.

    Example:
        >>> a = Candidate("delete", "delete layer4.1", blocks=("layer4.1",))
        >>> a.key == Candidate("delete", "other label", blocks=("layer4.1",)).key
        True
    """

    # "mod", "delete", "prune", "mixed" (a version-2 recipe: each block its own action) or "plan"
    # (one `modify plan` chose)
    method: str
    label: str  # shown in the table and the plot (not part of the key)
    recipe: dict[str, Any] | None = None  # mod / delete / mixed: a recipe dict (None: every_other)
    blocks: tuple[str, ...] | None = None  # delete: the block names (instead of a recipe)
    init: str = "scratch"  # mod: scratch | zero | importance (`modify.conversion.init`) or copy (convert's)
    block_distill_steps: int = 0  # mod / mixed: block-local distillation steps per MoD or narrowed block
    route_weight: float = 0.0  # mod: block distillation also teaches the selector the most-changed channels
    selector_lr_scale: float = 1.0  # mod / mixed: the selectors' learning-rate share in block distillation (0: frozen)
    init_version: int = 2  # importance: 2 = the balanced selector prior (1, before it, collapsed in fine-tuning)
    speedup: float | None = None  # prune: target batch-1 / one-thread speed-up, measured
    macs_ratio: float | None = None  # prune: or a target MAC ratio
    zero_update: bool = False  # mod / mixed: the MoD blocks' branches start at zero (their last layer), after init
    finetune: tuple[tuple[str, Any], ...] = ()  # FinetuneConfig fields this candidate fine-tunes with instead

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModifyError(f"candidate method {self.method!r} is not one of {METHODS}.")
        object.__setattr__(self, "finetune", tuple(sorted(dict(self.finetune).items())))

    def spec(self) -> dict[str, Any]:
        """What defines the candidate (everything but the label), as plain data."""
        spec = dataclasses.asdict(self)
        spec.pop("label")
        # Fields added later are left out where they do not apply, so earlier sweeps keep their keys.
        if not spec["route_weight"]:
            spec.pop("route_weight")
        if spec["selector_lr_scale"] == 1.0:
            spec.pop("selector_lr_scale")
        if self.init != "importance":
            spec.pop("init_version")
        if not self.zero_update:
            spec.pop("zero_update")
        if self.finetune:
            spec["finetune"] = dict(self.finetune)
        else:
            spec.pop("finetune")
        spec["blocks"] = list(self.blocks) if self.blocks is not None else None
        return spec

    @property
    def key(self) -> str:
        """A stable short id of the spec: the file name of its records."""
        return _digest(self.method, self.spec())

    @property
    def arch_key(self) -> str:
        """The id of its architecture, which alone decides its speed: initialisation and
        block-local distillation change weights, not shapes. A version-2 recipe (a plan) that
        only deletes blocks is the deletion of those blocks, and shares its speed record: one
        architecture timed twice would otherwise get two speeds, apart by the timing noise."""
        deleted = self.deleted_only()
        if deleted is not None and self.method != "delete":
            return Candidate("delete", self.label, blocks=deleted).arch_key
        spec = self.spec()
        weights_only = ("init", "block_distill_steps", "route_weight", "selector_lr_scale", "init_version")
        for field in (*weights_only, "zero_update", "finetune"):
            spec.pop(field, None)
        return _digest(self.method, spec)

    def deleted_only(self) -> tuple[str, ...] | None:
        """The blocks a version-2 recipe deletes, when deleting (and keeping) is all it does; else None.

        Example:
            >>> recipe = {"version": 2, "rules": [{"name": "layer4.1", "action": "delete"}]}
            >>> Candidate("plan", "p", recipe=recipe).deleted_only()
            ('layer4.1',)
        """
        if self.method not in ("mixed", "plan") or not self.recipe:
            return None
        rules = self.recipe.get("rules", [])
        if any(r.get("action") not in ("delete", "keep") for r in rules):
            return None
        deleted = tuple(str(r["name"]) for r in rules if r.get("action") == "delete")
        return deleted or None


def _digest(method: str, spec: dict[str, Any]) -> str:
    return f"{method}-{hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}"


def default_candidates(
    *,
    blocks: Sequence[str],
    prune_speedups: Sequence[float] = (1.3, 1.5, 1.7, 1.9),
    prune_macs: Sequence[float] = (2.5, 3.0),
) -> list[Candidate]:
    """The sweep a user should see for a model whose every_other blocks are ``blocks``.

    MoD: the paper's (c = 64, first slot, fresh blocks); what `modify plan` builds (the "branch"
    form fused into the selected channels' own positions, the original block's weights, then
    block-local distillation that never leaves a block below its deletion) at k = C/4 and C/2; the
    fraction k = C/4 with the original block's most important channels, with and without
    block-local distillation (`modify.train.distill`); and the "OP" form with the original weights
    (leading or most important channels, or from a zero update) at k = C/4 and C/2. Deletion: all those blocks,
    every set but one, the first two and the last two. Torch-Pruning at matched speed-ups (a
    search on measured latency) and at two MAC ratios beyond them.
    Every attempt stays a row, win or lose.
    """
    op_copy = {"form": "branch", "fusion": "original", "order": "index"}  # the original block's leading channels
    op_importance = {"form": "branch", "fusion": "original"}  # its most important channels, in score order
    every_other_c64 = {"version": 1, "defaults": {"c": 64}, "rules": [{"index": "odd"}]}
    names = list(blocks)

    def op(fraction: float) -> dict[str, Any]:  # OP, the most important channels
        return _every_other(fraction, op_importance)

    def copied(fraction: float) -> dict[str, Any]:  # OP, the leading channels
        return _every_other(fraction, op_copy)

    kd, imp = {"block_distill_steps": 300}, "importance"
    out = [
        Candidate("mod", "MoD every_other c=64", recipe=every_other_c64),
        # What `modify plan` builds: the branch form fused into the selected channels' positions, the
        # original block's weights, block-local distillation (never below its deletion).
        Candidate("mod", "MoD-OP k=0.25 as modify plan builds it", recipe=op(0.25), init="copy", **kd),
        Candidate("mod", "MoD-OP k=0.5 as modify plan builds it", recipe=op(0.5), init="copy", **kd),
        Candidate("mod", "MoD k=0.25 importance", recipe=_every_other(0.25), init=imp),
        Candidate("mod", "MoD k=0.25 importance + block KD", recipe=_every_other(0.25), init=imp, **kd),
        Candidate("mod", "MoD-OP k=0.25 copy + block KD", recipe=copied(0.25), init="copy", **kd),
        Candidate("mod", "MoD-OP k=0.5 copy + block KD", recipe=copied(0.5), init="copy", **kd),
        Candidate("mod", "MoD every_other c=64 + block KD", recipe=every_other_c64, **kd),
        Candidate("mod", "MoD-OP k=0.25 importance + block KD", recipe=op(0.25), init=imp, **kd),
        Candidate("mod", "MoD-OP k=0.5 importance + block KD", recipe=op(0.5), init=imp, **kd),
        Candidate(
            "mod", "MoD-OP k=0.25 importance + routed block KD", recipe=op(0.25), init=imp, route_weight=1.0, **kd
        ),
    ]
    # Deleting one block of four is below the speed-ups worth a conversion; the pairs at both ends,
    # every triple and the whole set span the range.
    subsets: list[tuple[str, ...]] = [tuple(names)]
    if len(names) > 2:
        subsets += list(itertools.combinations(names, len(names) - 1))
    if len(names) > 3:
        subsets += [tuple(names[:2]), tuple(names[-2:])]
    out += [Candidate("delete", f"delete {'+'.join(s)}", blocks=tuple(s)) for s in subsets]
    out += [Candidate("prune", f"prune to {s:g}x", speedup=s) for s in prune_speedups]
    # The speed search is only as steady as the machine's timings; two MAC targets beyond it are not.
    out += [Candidate("prune", f"prune MACs {r:g}x", macs_ratio=r) for r in prune_macs]
    return out


def _every_other(fraction: float, mod: dict[str, Any] | None = None) -> dict[str, Any]:
    recipe: dict[str, Any] = {"version": 1, "defaults": {"fraction": fraction}, "rules": [{"index": "odd"}]}
    if mod:
        recipe["mod"] = dict(mod)
    return recipe


def build_candidate(
    candidate: Candidate,
    teacher: nn.Module,
    *,
    input_size: int,
    calib: torch.Tensor | None = None,
    train_loader: Iterable[Any] | None = None,
    pruning_ratio: float | None = None,
    weights: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """The candidate's model, built from a copy of ``teacher``, and what building it reported.

    ``pruning_ratio`` rebuilds a pruned candidate found earlier without searching again;
    ``weights=False`` builds the architecture alone (no initialisation, no block distillation),
    enough to time it. After block distillation, a MoD selector whose units all stay silent on
    ``calib`` is collapsed into the fixed set it picks (`modify.conversion.init.collapse_dead_selectors`;
    ``details["collapsed"]``): the same outputs, without the scoring (its speed record, timed with
    ``weights=False``, keeps the selector; the difference is below timing noise at 32x32).
    """
    torch.manual_seed(0)  # fresh weights (scratch selectors) the same for every seed and resume
    if candidate.method == "delete":
        from modify.baselines import delete_blocks

        result = delete_blocks(teacher, recipe=candidate.recipe, blocks=candidate.blocks, input_size=input_size)
        return result.model, {"deleted": [b.name for b in result.deleted]}
    if candidate.method == "prune":
        from modify.baselines import prune_channels

        if pruning_ratio is not None:
            pruned = prune_channels(teacher, ratio=pruning_ratio, input_size=input_size)
        else:
            pruned = prune_channels(
                teacher, speedup=candidate.speedup, macs_ratio=candidate.macs_ratio, input_size=input_size
            )
        return pruned.model, {
            "pruning_ratio": pruned.pruning_ratio,
            "search_speedup": pruned.speedup,
            "macs_ratio_tp": pruned.macs_ratio,
        }
    import modify
    from modify.conversion.init import (
        collapse_dead_selectors,
        initialize,
        replaced_blocks,
        revive_dead_selectors,
        zero_updates,
    )

    if not weights:
        return modify.convert(teacher, recipe=candidate.recipe, input_size=input_size).model, {}

    convert_init = "copy" if candidate.init == "copy" else "scratch"
    result = modify.convert(teacher, recipe=candidate.recipe, input_size=input_size, init=convert_init)
    details: dict[str, Any] = {
        "converted": [(b.name, b.action, b.k) if b.action != "mod" else (b.name, b.k) for b in result.converted]
    }
    if candidate.init not in ("copy", "scratch"):
        report = initialize(result, candidate.init, original=teacher, data=calib)
        revived = {b.module: b.revived for b in report.blocks}
    else:
        revived = revive_dead_selectors(result, calib) if calib is not None else {}
    if any(revived.values()):
        details["revived"] = {path: n for path, n in revived.items() if n}  # selector units that started dead
    if candidate.zero_update:
        details["zeroed"] = zero_updates(result)
    if candidate.block_distill_steps and replaced_blocks(result):
        if train_loader is None:
            raise ModifyError(f"{candidate.label}: block-local distillation needs train_loader=.")
        from modify.train.distill import distill_blocks

        report = distill_blocks(
            result,
            teacher,
            train_loader,
            steps=candidate.block_distill_steps,
            route_weight=candidate.route_weight,
            selector_lr_scale=candidate.selector_lr_scale,
        )
        details["block_distill"] = [dataclasses.asdict(b) for b in report.blocks]
        details["block_distill_seconds"] = report.seconds  # extra training time the table shows beside the fine-tune
        if calib is not None:
            collapsed = collapse_dead_selectors(result, calib)
            if collapsed:
                details["collapsed"] = collapsed  # selectors the distillation killed: now the fixed set they picked
    return result.model, details
