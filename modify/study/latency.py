"""What each choice saves on this machine, in the setting the user deploys in, measured in the
whole model (NetAdapt's and LayerMerge's tables time layers alone; at batch 1 on a CPU the cost
around each operator matters as much as its arithmetic, so here the saving of a choice is the
original model's time minus the time of the original with only that change).

Every model is timed with `modify.measure.benchmark.bench_many`: rounds that time the original,
each candidate (in an order that rotates), then the original again, so a disturbance hits all of
them alike. A candidate's saving in a round is the round's original time minus its own; the
saving is the median over rounds, and half the interquartile range of the rounds is its spread.
Candidates are timed in groups (one block's choices at a time), each group against the original
in its own rounds, so memory holds a handful of models at once.

Example:
    >>> Setting(batch=1, threads=1, input_size=32).describe()
    'batch 1, 1 thread, eager, 32x32'
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping

from torch import nn

from modify.deploy.engines import Engine, prepare
from modify.measure.benchmark import BenchCase, bench_many, spread  # spread: re-exported, it lived here

__all__ = ["Setting", "Timing", "time_savings", "spread"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """The setting a speed-up is for."""

    batch: int = 1  # images per forward pass
    threads: int = 1  # torch (or ONNX Runtime) intra-op threads; 0 = every core
    input_size: int = 224  # H = W of the images
    engine: Engine = Engine.EAGER  # eager | compile | onnxruntime | aoti

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine.from_str(self.engine))

    @property
    def case(self) -> BenchCase:
        return BenchCase(batch_size=self.batch, threads=self.threads)

    def describe(self) -> str:
        threads = self.case.resolved_threads()
        return (
            f"batch {self.batch}, {threads} thread{'s' * (threads > 1)}, "
            f"{self.engine.value}, {self.input_size}x{self.input_size}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "batch": self.batch,
            "threads": self.case.resolved_threads(),
            "input_size": self.input_size,
            "engine": self.engine.value,
        }


@dataclasses.dataclass(frozen=True)
class Timing:
    """One model's time against the original, in shared rounds."""

    saving_ms: float  # median over rounds of (the round's original time - this model's)
    spread_ms: float  # half the interquartile range of the per-round savings
    model_ms: float  # this model's median time
    original_ms: float  # the original's median time in the same rounds
    round_speedups: tuple[float, ...]  # per round: original time / this model's

    @property
    def speedup(self) -> float:
        """The median of the per-round speed-ups (steadier than a ratio of medians)."""
        return statistics.median(self.round_speedups)


def time_savings(
    original: nn.Module,
    groups: Mapping[str, Mapping[str, nn.Module]],
    setting: Setting,
    *,
    rounds: int = 7,
    seconds: float = 0.3,
    on_group: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Times every model of every group against ``original`` (see the module docstring);
    returns model key -> `Timing`. Models are prepared for ``setting.engine`` first (compiled,
    exported), outside the timing.
    """
    base = prepare(
        original,
        setting.engine,
        input_size=setting.input_size,
        batch=setting.batch,
        threads=setting.threads,
        tag="original",
    )
    out: dict[str, Timing] = {}
    for group, models in groups.items():
        ready = {
            key: prepare(
                m,
                setting.engine,
                input_size=setting.input_size,
                batch=setting.batch,
                threads=setting.threads,
                tag=key.replace(":", "_"),
            )
            for key, m in models.items()
        }
        results = bench_many(
            ready, base, cases=[setting.case], input_size=setting.input_size, rounds=rounds, min_run_time=seconds
        )
        for key, (result,) in results.items():
            savings = [(b - m) * 1e3 for m, b in zip(result.model_rounds, result.baseline_rounds, strict=True)]
            out[key] = Timing(
                statistics.median(savings),
                spread(savings),
                result.model_median * 1e3,
                result.baseline_median * 1e3,
                result.round_speedups,
            )
        if on_group is not None:
            on_group(group)
    return out
