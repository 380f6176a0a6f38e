"""Side-by-side latency of two models, measured interleaved in one process.

Shared machines are noisy, so the two models are timed in alternating rounds with
`torch.utils.benchmark.Timer` (eval mode, fp32, inference mode) and compared by medians: a
disturbance hits both. Speed-up = baseline time / model time, as in the paper.

Every result also says how far it can be trusted: the spread of its per-round speed-ups (half
their interquartile range, `spread`) and, when the machine was measurably too busy, a one-line
warning (`busy_warning`).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils import benchmark

__all__ = [
    "BenchCase",
    "BenchResult",
    "BenchReport",
    "bench",
    "bench_many",
    "DEFAULT_CASES",
    "spread",
    "noise",
    "busy_warning",
    "MAX_NOISE",
]


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range (0 for fewer than two values).

    Example:
        >>> spread([1.0, 2.0, 3.0, 4.0, 100.0])  # the outlier does not count
        1.0
    """
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / 2


def noise(times: Sequence[float]) -> float:
    """How much one model's per-round times move from round to round: `spread` over the median.

    Example:
        >>> round(noise([1.0, 1.0, 1.1, 1.2, 1.0]), 3)
        0.05
    """
    if len(times) < 2:
        return 0.0
    return spread(times) / statistics.median(times)


# A model's per-round time that moves by more than this (half the interquartile range over the
# median) comes from a machine whose speed changes under the timing: on a quiet machine the
# rounds of the same model agree within a percent or two.
MAX_NOISE = 0.05


def busy_warning(
    rounds: Sequence[Sequence[float]],
    *,
    threads: int,
    load: float | None = None,
    cores: int | None = None,
    max_noise: float = MAX_NOISE,
) -> str | None:
    """One line saying why the machine was too busy for a timing to mean much, or None.

    Two measurements, either of which is enough:

    - the rounds: for each model timed, the `noise` of its per-round times; the largest above
      ``max_noise`` (5%) means the machine's speed changed while it was timed;
    - the load: the 1-minute load average (``os.getloadavg()``, read when the timing ends unless
      ``load`` is given) counts the timing's own ``threads`` too, so ``load - threads`` is what
      other processes kept busy; if that leaves fewer than ``threads`` of the ``cores`` free, the
      timing's threads shared cores with them.

    Example:
        >>> busy_warning([[1.0, 1.0, 1.0]], threads=1, load=0.5, cores=4) is None
        True
        >>> busy_warning([[1.0, 1.3, 1.0, 1.2]], threads=1, load=0.5, cores=4)[:58]
        'busy machine: the times vary by ±10.2% from round to round'
    """
    reasons = []
    worst = max((noise(times) for times in rounds), default=0.0)
    if worst > max_noise:
        reasons.append(f"the times vary by ±{100 * worst:.1f}% from round to round (over {100 * max_noise:.0f}%)")
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    cores = cores or os.cpu_count() or 1
    if load is not None:
        others = max(0.0, load - threads)
        if cores - others < threads:
            free = max(0.0, cores - others)
            reasons.append(
                f"other processes keep {others:.1f} cores busy (load average {load:.1f} less the timing's own "
                f"{threads}), leaving {free:.1f} of {cores} for {threads} timing thread{'s' * (threads > 1)}"
            )
    if not reasons:
        return None
    return f"busy machine: {'; '.join(reasons)}. Treat these figures as rough; time again on a quiet machine."


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
    warning: str | None = None  # `busy_warning`: why the machine was too busy for these figures, or None
    prepare_seconds: tuple[float, float] = (0.0, 0.0)  # compiling / exporting (model, baseline) for the engine

    @property
    def spread(self) -> float:
        """Half the interquartile range of the per-round speed-ups (0 with one round)."""
        return spread(self.round_speedups)

    @property
    def speedup(self) -> float:
        """Baseline time / model time (> 1 means the model is faster)."""
        return self.baseline_median / self.model_median

    @property
    def round_speedups(self) -> tuple[float, ...]:
        return tuple(b / m for m, b in zip(self.model_rounds, self.baseline_rounds, strict=True))


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """The outcome of `bench`."""

    model: str
    baseline: str
    input_size: tuple[int, int]
    results: tuple[BenchResult, ...]
    torch_version: str = torch.__version__
    engine: str = "eager"  # `modify.deploy.engines.Engine` both models ran in

    @property
    def warnings(self) -> tuple[str, ...]:
        """Each case's busy-machine warning, labelled with the case."""
        return tuple(f"{r.case.label()}: {r.warning}" for r in self.results if r.warning)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "input_size": list(self.input_size),
            "torch": self.torch_version,
            "cpu_count": os.cpu_count(),
            "engine": self.engine,
            "results": [
                {
                    "batch_size": r.case.batch_size,
                    "threads": r.case.resolved_threads(),
                    "model_ms": r.model_median * 1e3,
                    "baseline_ms": r.baseline_median * 1e3,
                    "speedup": r.speedup,
                    "round_speedups": list(r.round_speedups),
                    "spread": r.spread,
                    "noise": max(noise(r.model_rounds), noise(r.baseline_rounds)),
                    "warning": r.warning,
                    "model_prepare_s": r.prepare_seconds[0],
                    "baseline_prepare_s": r.prepare_seconds[1],
                }
                for r in self.results
            ],
        }


def _timer(model: nn.Module, x: torch.Tensor, threads: int) -> benchmark.Timer:
    return benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)


def _prepared(
    model: nn.Module, baseline: nn.Module, engine: str, case: BenchCase, h: int, w: int, in_channels: int
) -> tuple[nn.Module, nn.Module, tuple[float, float]]:
    """Both models ready for ``engine`` in this case (compiled, exported), and the seconds each took."""
    if engine == "eager":
        return model, baseline, (0.0, 0.0)
    from modify.deploy.engines import prepare
    from modify.errors import ModifyError

    if h != w or in_channels != 3:
        raise ModifyError(f"--engine {engine} times square 3-channel inputs; got {in_channels}x{h}x{w}.")
    ready, seconds = [], []
    for m, tag in ((model, "model"), (baseline, "baseline")):
        started = time.perf_counter()
        ready.append(prepare(m, engine, input_size=h, batch=case.batch_size, threads=case.resolved_threads(), tag=tag))
        seconds.append(time.perf_counter() - started)
    return ready[0], ready[1], (seconds[0], seconds[1])


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
    engine: str = "eager",
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
        engine: where both models run (`modify.deploy.engines.Engine`): each case prepares both
            for its batch and threads with `modify.deploy.engines.prepare` (compiles, exports)
            before its timing starts; each result keeps how long that took.

    Example:
        >>> r = bench(nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1), cases=[BenchCase(1, 1)], input_size=8, rounds=2,
        ...           min_run_time=0.01)
        >>> r.results[0].speedup > 0
        True
    """
    from modify.deploy.engines import Engine

    engine = Engine.from_str(engine).value
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    modes = (model.training, baseline.training)
    model.eval()
    baseline.eval()
    previous_threads = torch.get_num_threads()
    results = []
    try:
        for case in cases:
            threads = case.resolved_threads()
            torch.set_num_threads(threads)
            m_ready, b_ready, seconds = _prepared(model, baseline, engine, case, h, w, in_channels)
            torch.set_num_threads(threads)
            with torch.inference_mode():
                x = torch.randn(case.batch_size, in_channels, h, w)
                for m in (m_ready, b_ready):  # warm-up: allocator, kernels, lazy init
                    m(x)
                    m(x)
                timers = {"model": _timer(m_ready, x, threads), "baseline": _timer(b_ready, x, threads)}
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
                    warning=busy_warning([times["model"], times["baseline"]], threads=threads),
                    prepare_seconds=seconds,
                )
            )
    finally:
        torch.set_num_threads(previous_threads)
        model.train(modes[0])
        baseline.train(modes[1])
    return BenchReport(model=labels[0], baseline=labels[1], input_size=(h, w), results=tuple(results), engine=engine)


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
        >>> r = bench_many({"a": nn.Conv2d(3, 4, 1)}, nn.Conv2d(3, 8, 1), cases=[BenchCase(1, 1)], input_size=8,
        ...                rounds=2, min_run_time=0.01)
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
                    order = names[r % len(names) :] + names[: r % len(names)]
                    measured = {k: timers[k].blocked_autorange(min_run_time=min_run_time).median for k in order}
                    last = timers["__baseline__"].blocked_autorange(min_run_time=min_run_time).median
                    for k in names:
                        own[k].append(measured[k])
                        base[k].append((first + last) / 2)
                # One warning for the whole case, from every model's rounds and the baseline's (the
                # same for every model: base[k] is the round's baseline time).
                warning = busy_warning([*own.values(), base[names[0]]], threads=threads)
                for k in names:
                    out[k].append(
                        BenchResult(
                            case,
                            statistics.median(own[k]),
                            statistics.median(base[k]),
                            tuple(own[k]),
                            tuple(base[k]),
                            warning=warning,
                        )
                    )
    finally:
        torch.set_num_threads(previous_threads)
        for k, m in everything.items():
            m.train(modes[k])
    return {k: tuple(v) for k, v in out.items()}
