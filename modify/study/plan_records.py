"""What `modify.study.planner.plan` is asked (`PlanConfig`), what it measures (`ChoiceRow`, kept
as a `ChoiceTable` between runs), and what it returns (`PlanResult`, with each solve's `Attempt`).
Frozen records, a comment per field; plain data through ``as_dict``.

Example:
    >>> config = PlanConfig(speedup=1.5, setting=Setting(input_size=32))
    >>> config.setting.describe(), config.actions
    ('batch 1, 1 thread, eager, 32x32', ('delete', 'mod', 'narrow'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from modify.errors import PlanError
from modify.layers.options import MoDConfig, Selection
from modify.study.choices import ACTIONS, FRACTIONS, Choice
from modify.study.latency import Setting

__all__ = ["DEFAULT_MOD", "DYNAMIC_MOD", "PlanConfig", "ChoiceRow", "ChoiceTable", "Attempt", "Finalist", "PlanResult"]

# How the planner builds a MoD block from a trained one (issue 21): the branch form fused into the
# selected channels' own positions, so a zero update is exactly the deletion, then block-local
# distillation, which never leaves a block below its deletion (benchmarks/results/mod_middle_r18).
# The channels are one fixed set, the k the block reads most, with their weights ("static MoD",
# init importance): after the same brief fine-tune it ended at least as close to the original as
# the Channel Selector build in 13 of 15 cells of the ResNet-18 table (whose selectors block
# distillation had left dead: a fixed set of its own), with no selector to run, and every selector
# that kept choosing per image ended below it or, once, level with it (README, "Each block
# alone"). `DYNAMIC_MOD` with init copy is the Channel Selector build (``modify plan --selection
# dynamic``).
DEFAULT_MOD = MoDConfig(form="branch", fusion="original", selection="static")
DYNAMIC_MOD = MoDConfig(form="branch", fusion="original")
DYNAMIC_INIT = "copy"  # the selector build starts from the original block's leading channels
LEGACY_BUILD = {"mod": DYNAMIC_MOD.as_dict(), "init": DYNAMIC_INIT, "zero_update": False}  # tables before the switch


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """What to plan for and how hard to measure."""

    speedup: float  # the target: original time / planned time, in `setting`
    setting: Setting = Setting()  # batch, threads, input size and engine the speed-up is for
    actions: tuple[str, ...] = ACTIONS  # what a block may become besides kept: delete, mod, narrow
    fractions: tuple[float, ...] = FRACTIONS  # MoD k = C * f; narrow keeps f of every inner width
    mod: MoDConfig = DEFAULT_MOD  # how MoD blocks are built
    init: str = "importance"  # how MoD blocks start (`modify.layers.Init`): the most-read channels, their weights
    zero_update: bool = False  # ... or with their branch's last layer at zero: each starts as its deletion
    distill_steps: int = 200  # block-local distillation steps per MoD or narrowed block (the cheap repair)
    repair_images: int = 1024  # images whose activations the distillation fits
    bn_batches: int = 8  # batches of BatchNorm re-estimation after it
    calib_images: int = 1024  # training images held out to score choices on (never repaired on)
    batch_size: int = 64  # repair and scoring batch
    rounds: int = 7  # interleaved timing rounds
    seconds: float = 0.3  # timing per model per round
    resolution: int = 1000  # the solver's steps within the saving the target needs
    tolerance: float = 0.0  # a plan meets the target when it measures >= (1 - tolerance) * speedup
    max_repairs: int = 8  # re-solves after a plan measures below the target
    finalists: int = 4  # plans meeting the target given a brief fine-tune each (`modify.study.finalists.pick`)
    tune_steps: int = 200  # steps of that fine-tune (distillation from the original); 0: no finalists
    # Finalists whose KL after that fine-tune is within this share of the least are the same to
    # the score, and the fastest of them is picked: the KL moves by about 10% with the
    # fine-tune's data order alone (benchmarks/results/finalists_r18/noise.json).
    tune_margin: float = 0.1
    seed: int = 0  # the calibration split, the repair's sampling, fresh weights

    def __post_init__(self) -> None:
        if not isinstance(self.speedup, (int, float)) or not self.speedup > 1.0:
            raise PlanError(
                f"speed-up {self.speedup!r} is not above 1; ask for the "
                "speed-up you need, such as 1.5 (1.5 times faster)."
            )
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown:
            raise PlanError(f"action {unknown[0]!r} is not one the planner knows; choose from {', '.join(ACTIONS)}.")
        if self.finalists < 1 or self.tune_steps < 0 or not 0.0 <= self.tune_margin < 1.0:
            raise PlanError(
                f"finalists={self.finalists}, tune_steps={self.tune_steps}, tune_margin={self.tune_margin}: give at "
                "least one finalist, zero or more steps (0 keeps the solver's plan) and a margin in [0, 1)."
            )
        if any(not 0.0 < f < 1.0 for f in self.fractions):
            raise PlanError(f"fractions {list(self.fractions)} must each lie in (0, 1), such as 0.5,0.25,0.125.")

    @classmethod
    def for_selection(cls, selection: Selection | str, **fields: Any) -> PlanConfig:
        """A config whose MoD blocks select ``"static"`` (the default build) or ``"dynamic"`` (the
        paper's Channel Selector, started from the original block's leading channels).

        Example:
            >>> PlanConfig.for_selection("dynamic", speedup=1.5).init
            'copy'
        """
        if str(selection) not in [m.value for m in Selection]:
            raise PlanError(f"selection {selection!r} is neither 'static' nor 'dynamic'.")
        if Selection(str(selection)) is Selection.STATIC:
            return cls(**fields)
        return cls(**{"mod": DYNAMIC_MOD, "init": DYNAMIC_INIT, **fields})

    def mod_build(self) -> dict[str, Any]:
        """How this config builds MoD blocks, as plain data (a `ChoiceTable` records it)."""
        return {"mod": self.mod.as_dict(), "init": self.init, "zero_update": self.zero_update}

    def meets(self, speedup: float) -> bool:
        """Whether a measured ``speedup`` meets the target: at least (1 - tolerance) * speedup."""
        return speedup >= (1 - self.tolerance) * self.speedup


@dataclasses.dataclass(frozen=True)
class ChoiceRow:
    """One (block, choice), measured alone."""

    block: str
    channels: int
    action: str  # keep | delete | mod | narrow
    fraction: float | None
    label: str  # "MoD k=16", "narrow 1/4", "delete", "keep"
    saving_ms: float | None = None  # the original's time minus the time with this change alone
    spread_ms: float | None = None  # half the interquartile range of that saving over rounds
    kl: float | None = None  # KL(original || with this change, repaired), on the calibration images
    agreement: float | None = None  # top-1 agreement with the original
    error: str | None = None  # why it could not be built (then it is not a choice)

    @property
    def choice(self) -> Choice:
        return Choice(self.block, self.action, self.fraction)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One solve and the measurement of what it chose."""

    required_ms: float  # the saving asked of the solver
    chosen: tuple[str, ...]  # choice keys
    predicted_speedup: float  # from the summed savings
    measured_speedup: float  # the planned model against the original, interleaved
    spread: float  # half the interquartile range of the per-round speed-ups


@dataclasses.dataclass(frozen=True)
class Finalist:
    """A plan that met the target, fine-tuned briefly and scored (step 6 of the planner)."""

    source: str  # how it was found: "the solver's plan", "deletion only", "without layer3.1's narrow 1/8", ...
    chosen: tuple[str, ...]  # choice keys, one per block
    predicted_speedup: float  # from the summed savings
    measured_speedup: float  # timed against the original
    summed_kl: float  # its choices' KL alone, summed (what the solver ranks by)
    kl: float | None = None  # the plan's KL after the cheap repair (None: it measured below the target)
    agreement: float | None = None  # its top-1 agreement with the original then
    tuned_kl: float | None = None  # and after the brief fine-tune: what picks the plan
    tuned_agreement: float | None = None
    picked: bool = False


@dataclasses.dataclass(frozen=True)
class ChoiceTable:
    """Every (block, choice) measured once: what any number of plans (targets, allowed actions)
    are solved from. Plain data: `as_dict` / `from_dict` keep it in a file between runs."""

    setting: Setting  # where the savings were timed
    original_ms: float  # the original's time there
    rows: tuple[ChoiceRow, ...]  # every (block, choice): saving, spread, KL, agreement (or why it failed)
    calib_images: int  # the held-out images the KLs are measured on
    seed: int  # of the calibration split and the repairs
    mod_build: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(LEGACY_BUILD))  # its MoD rows' build

    def allowed(self, actions: Sequence[str], fractions: Sequence[float]) -> list[ChoiceRow]:
        """The rows a plan of ``actions`` at ``fractions`` may choose from (keep always)."""
        return [
            r
            for r in self.rows
            if r.action == "keep" or (r.action in actions and (r.fraction is None or r.fraction in fractions))
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting.as_dict(),
            "original_ms": self.original_ms,
            "calib_images": self.calib_images,
            "seed": self.seed,
            "mod_build": dict(self.mod_build),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ChoiceTable:
        return cls(
            setting=Setting(**raw["setting"]),
            original_ms=raw["original_ms"],
            rows=tuple(ChoiceRow(**r) for r in raw["rows"]),
            calib_images=raw["calib_images"],
            seed=raw["seed"],
            mod_build=raw.get("mod_build", LEGACY_BUILD),
        )


@dataclasses.dataclass(frozen=True)
class PlanResult:
    """What `plan` found, and the numbers behind it."""

    config: PlanConfig
    original_ms: float  # the original's time in the setting (median over the timing rounds)
    rows: tuple[ChoiceRow, ...]  # every (block, choice) measured
    chosen: tuple[ChoiceRow, ...]  # one per block, in model order
    runner_up: tuple[
        tuple[str, str, float | None], ...
    ]  # per block: (block, the runner-up's label, the summed KL it adds)
    predicted_speedup: float  # original / (original - summed savings)
    measured_speedup: float  # the planned model, timed against the original
    measured_spread: float
    predicted_kl: float  # the chosen choices' KL, summed
    measured_kl: float  # the planned model's KL after the same repair
    measured_agreement: float
    met: bool  # measured_speedup >= (1 - tolerance) * target
    attempts: tuple[Attempt, ...]
    recipe: dict[str, Any]  # the version-2 recipe (`modify.convert(model, recipe=...)`)
    seconds: float
    table: ChoiceTable | None = None  # every choice measured (the plan's rows are those its actions allow)
    finalists: tuple[Finalist, ...] = ()  # the plans fine-tuned briefly to pick this one (none: tune_steps=0)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = {**out["config"], "setting": self.config.setting.as_dict(), "mod": self.config.mod.as_dict()}
        out["table"] = self.table.as_dict() if self.table is not None else None
        return out
