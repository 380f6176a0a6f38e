"""Side-by-side latency of two models, measured interleaved in one process.

Shared machines are noisy, so the two models are timed in alternating rounds with
`torch.utils.benchmark.Timer` (eval mode, fp32, inference mode) and compared by medians: a
disturbance hits both. Speed-up = baseline time / model time, as in the paper.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils import benchmark

__all__ = ["BenchCase", "BenchResult", "BenchReport", "bench", "DEFAULT_CASES"]


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One setting to time both models in."""

    batch_size: int  # N of the input
    threads: int  # torch intra-op threads; 0 = every core of the machine

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def label(self) -> str:
        return f"batch {self.batch_size}, {self.resolved_threads()} thread{'s' * (self.resolved_threads() > 1)}"


# The paper's setting (batch 1, one thread: Timer's default) and a throughput setting.
DEFAULT_CASES = (BenchCase(batch_size=1, threads=1), BenchCase(batch_size=32, threads=0))


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Both models in one case; times in seconds per forward pass."""

    case: BenchCase
    model_median: float  # median over rounds of the model's per-round median
    baseline_median: float  # the same for the baseline
    model_rounds: tuple[float, ...]  # per-round medians, in the order measured
    baseline_rounds: tuple[float, ...]

    @property
    def speedup(self) -> float:
        """Baseline time / model time (> 1 means the model is faster)."""
        return self.baseline_median / self.model_median

    @property
    def round_speedups(self) -> tuple[float, ...]:
        return tuple(b / m for m, b in zip(self.model_rounds, self.baseline_rounds))


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """The outcome of `bench`."""

    model: str
    baseline: str
    input_size: tuple[int, int]
    results: tuple[BenchResult, ...]
    torch_version: str = torch.__version__

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "input_size": list(self.input_size),
            "torch": self.torch_version,
            "cpu_count": os.cpu_count(),
            "results": [
                {
                    "batch_size": r.case.batch_size,
                    "threads": r.case.resolved_threads(),
                    "model_ms": r.model_median * 1e3,
                    "baseline_ms": r.baseline_median * 1e3,
                    "speedup": r.speedup,
                    "round_speedups": list(r.round_speedups),
                }
                for r in self.results
            ],
        }


def _timer(model: nn.Module, x: torch.Tensor, threads: int) -> benchmark.Timer:
    return benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)


def bench(
    model: nn.Module,
    baseline: nn.Module,
    *,
    cases: Sequence[BenchCase] = DEFAULT_CASES,
    input_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    rounds: int = 7,
    min_run_time: float = 0.5,
    labels: tuple[str, str] = ("model", "baseline"),
) -> BenchReport:
    """Times ``model`` against ``baseline``, alternating rounds, one case after another.

    Each round runs `Timer.blocked_autorange` on the model, then on the baseline (the order
    swaps every round so neither always runs on a warm cache). Both get the same input.

    Args:
        model, baseline: the two modules; put in eval mode for the measurement.
        cases: batch sizes and thread counts.
        input_size: H = W, or (H, W).
        rounds: alternating rounds per case; the report keeps every round's median.
        min_run_time: seconds of timing per model per round.

    Example:
        >>> r = bench(nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1), cases=[BenchCase(1, 1)], input_size=8, rounds=2, min_run_time=0.01)
        >>> r.results[0].speedup > 0
        True
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    modes = (model.training, baseline.training)
    model.eval()
    baseline.eval()
    previous_threads = torch.get_num_threads()
    results = []
    try:
        with torch.inference_mode():
            for case in cases:
                threads = case.resolved_threads()
                torch.set_num_threads(threads)
                x = torch.randn(case.batch_size, in_channels, h, w)
                for m in (model, baseline):  # warm-up: allocator, kernels, lazy init
                    m(x)
                    m(x)
                timers = {"model": _timer(model, x, threads), "baseline": _timer(baseline, x, threads)}
                times: dict[str, list[float]] = {"model": [], "baseline": []}
                for r in range(rounds):
                    order = ("model", "baseline") if r % 2 == 0 else ("baseline", "model")
                    for key in order:
                        times[key].append(timers[key].blocked_autorange(min_run_time=min_run_time).median)
                results.append(
                    BenchResult(
                        case=case,
                        model_median=statistics.median(times["model"]),
                        baseline_median=statistics.median(times["baseline"]),
                        model_rounds=tuple(times["model"]),
                        baseline_rounds=tuple(times["baseline"]),
                    )
                )
    finally:
        torch.set_num_threads(previous_threads)
        model.train(modes[0])
        baseline.train(modes[1])
    return BenchReport(model=labels[0], baseline=labels[1], input_size=(h, w), results=tuple(results))


def bench_many(
    models: Mapping[str, nn.Module],
    baseline: nn.Module,
    *,
    cases: Sequence[BenchCase] = DEFAULT_CASES,
    input_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    rounds: int = 7,
    min_run_time: float = 0.3,
) -> dict[str, tuple[BenchResult, ...]]:
    """Times many models against one baseline in shared rounds: each round times the baseline,
    every model (in an order that rotates from round to round), then the baseline again, so all
    of them meet the same machine state. A model's per-round speed-up is its round's baseline
    time (the mean of the two) over its own; on a machine whose speed drifts, their median is far
    steadier than timing each pair at another moment.

    Returns, per model name, one `BenchResult` per case; its ``baseline_rounds`` are the round's
    baseline times, so the median of `BenchResult.round_speedups` is the steady figure (the
    ratio of medians, `BenchResult.speedup`, mixes rounds).

    Example:
        >>> r = bench_many({"a": nn.Conv2d(3, 4, 1)}, nn.Conv2d(3, 8, 1), cases=[BenchCase(1, 1)], input_size=8, rounds=2, min_run_time=0.01)
        >>> len(r["a"]), r["a"][0].speedup > 0
        (1, True)
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    everything = {**models, "__baseline__": baseline}
    modes = {k: m.training for k, m in everything.items()}
    previous_threads = torch.get_num_threads()
    out: dict[str, list[BenchResult]] = {k: [] for k in models}
    try:
        for m in everything.values():
            m.eval()
        with torch.inference_mode():
            for case in cases:
                threads = case.resolved_threads()
                torch.set_num_threads(threads)
                x = torch.randn(case.batch_size, in_channels, h, w)
                for m in everything.values():  # warm-up
                    m(x)
                    m(x)
                timers = {k: _timer(m, x, threads) for k, m in everything.items()}
                names = list(models)
                own: dict[str, list[float]] = {k: [] for k in names}
                base: dict[str, list[float]] = {k: [] for k in names}
                for r in range(rounds):
                    first = timers["__baseline__"].blocked_autorange(min_run_time=min_run_time).median
                    order = names[r % len(names):] + names[: r % len(names)]
                    measured = {k: timers[k].blocked_autorange(min_run_time=min_run_time).median for k in order}
                    last = timers["__baseline__"].blocked_autorange(min_run_time=min_run_time).median
                    for k in names:
                        own[k].append(measured[k])
                        base[k].append((first + last) / 2)
                for k in names:
                    out[k].append(BenchResult(case, statistics.median(own[k]), statistics.median(base[k]), tuple(own[k]), tuple(base[k])))
    finally:
        torch.set_num_threads(previous_threads)
        for k, m in everything.items():
            m.train(modes[k])
    return {k: tuple(v) for k, v in out.items()}
