"""Is a conversion better than what a user would otherwise do? A sweep that answers it.

Each candidate (`modify.study.candidates`) is built from the trained model and fine-tuned
identically (same `FinetuneConfig`, epochs, teacher, seed, hence the same data order), then
measured: test accuracy, MACs and parameters (fvcore), and latency against the original at batch
1 / one thread and batch 32 / every thread, interleaved in one process, the median of per-round
speed-ups. Every finished (candidate, seed) is stored at once (`modify.study.store.SweepStore`),
so a killed sweep resumes: run it again with the same ``out_dir``. Speed is measured after every
fine-tune has finished, once per architecture, every architecture and the original in the same
interleaved rounds (`modify.measure.benchmark.bench_many`); training no longer competes with the
timing then. `modify.study.report` turns the records into the table, the plot and a recommendation.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modify.errors import ModifyError
from modify.study.candidates import Candidate, build_candidate
from modify.study.store import RUN_FORMAT, RunRecord, SweepStore, fingerprint
from modify.train.evaluation import compare_outputs
from modify.train.finetune import FinetuneConfig, evaluate, finetune

__all__ = ["CompareConfig", "run_sweep", "time_candidates"]


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """How every candidate is fine-tuned and measured; the same for all of them."""

    epochs: float = 1.0  # fine-tuning epochs per candidate (may be a fraction)
    seeds: tuple[int, ...] = (0, 1)  # one fine-tune per seed; the seed fixes the data order
    finetune: FinetuneConfig = FinetuneConfig(lr=0.02, alpha=0.5, temperature=4.0, warmup=0.03)
    batch_size: int = 128  # training batch
    eval_batch_size: int = 500
    input_size: int = 32  # H = W of the images, for tracing, MACs and latency
    bench_rounds: int = 7  # interleaved latency rounds per case
    bench_seconds: float = 0.3  # timing per model per round
    throughput_batch: int = 32  # the batch of the all-threads latency case; 0 = skip that case
    train_limit: int | None = None  # recorded only: the first N training images the caller kept (quick looks)
    test_limit: int | None = None  # likewise for the test images

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs={self.epochs} must be positive"),
            (len(self.seeds) > 0, "seeds is empty; give at least one"),
            (len(set(self.seeds)) == len(self.seeds), f"seeds {list(self.seeds)} repeat a seed"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be at least 1"),
            (self.bench_rounds >= 1 and self.bench_seconds > 0, "bench_rounds must be >= 1 and bench_seconds > 0"),
            (self.throughput_batch >= 0, f"throughput_batch={self.throughput_batch} must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModifyError(f"CompareConfig: {message}.")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["finetune"] = self.finetune.as_dict()
        out["seeds"] = list(self.seeds)
        return out


def time_candidates(
    models: dict[str, nn.Module], original: nn.Module, config: CompareConfig, store: SweepStore
) -> list[dict[str, Any]]:
    """Every architecture's latency against the original, all in shared rounds, each written to
    ``speed/<arch key>.json``."""
    from modify.measure.benchmark import BenchCase, bench_many, spread

    cases = [BenchCase(batch_size=1, threads=1)]
    if config.throughput_batch:
        cases.append(BenchCase(batch_size=config.throughput_batch, threads=0))
    results = bench_many(
        models,
        original,
        cases=cases,
        input_size=config.input_size,
        rounds=config.bench_rounds,
        min_run_time=config.bench_seconds,
    )
    written = []
    for key, (one, *many) in results.items():
        speed = {
            "speedup": statistics.median(one.round_speedups),
            "latency_ms": one.model_median * 1e3,
            "teacher_latency_ms": one.baseline_median * 1e3,
            "round_speedups": list(one.round_speedups),
            "speedup_batch": statistics.median(many[0].round_speedups) if many else None,
            "timed_with": len(models),  # architectures timed in the same rounds
            # How far to trust them: half the interquartile range of the per-round speed-ups, and
            # why the machine was too busy for these figures (None when it was not).
            "spread": spread(one.round_speedups),
            "spread_batch": spread(many[0].round_speedups) if many else None,
            "warning": "; ".join(f"{r.case.label()}: {r.warning}" for r in (one, *many) if r.warning) or None,
        }
        store.write(f"speed/{key}.json", speed)
        written.append({"key": key, **speed})
    return written


def _record(
    candidate: Candidate,
    seed: int,
    model: nn.Module,
    original: nn.Module,
    test_loader: DataLoader,
    config: CompareConfig,
    *,
    before: float,
    seconds: float,
    details: dict[str, Any],
) -> RunRecord:
    """One fine-tuned candidate's record: test accuracy, NLL and KL to the original (steadier than
    accuracy), MACs and parameters; its speed comes later, timed with the others."""
    from modify.measure.profiling import profile_model

    against = compare_outputs(model, original, test_loader)
    accuracy = against.pop("accuracy")
    profile = profile_model(model, input_size=config.input_size)
    return RunRecord(
        key=candidate.key,
        method=candidate.method,
        label=candidate.label,
        seed=seed,
        accuracy_before=before,
        accuracy=accuracy,
        macs=profile.macs,
        params=profile.params,
        speedup=None,
        speedup_batch=None,
        latency_ms=None,
        teacher_latency_ms=None,
        finetune_seconds=seconds,
        details={**details, "spec": candidate.spec(), "test": against},
        arch_key=candidate.arch_key,
    )


def run_sweep(
    original: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    *,
    candidates: Sequence[Candidate],
    config: CompareConfig,
    out_dir: str | os.PathLike[str],
    teacher: nn.Module | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[RunRecord]:
    """Fine-tunes every (candidate, seed) not yet stored under ``out_dir``, then times every
    architecture not yet timed.

    Every candidate is built from ``original`` and timed against it; the fine-tune distils from
    ``teacher`` (default: ``original``). Test accuracy is measured on ``test_set``.

    ``on_event(kind, info)`` is called with ``("start", {...})`` before each run,
    ``("step", StepInfo fields)`` after each training step, ``("done", record)`` after each run
    and ``("speed", {...})`` after timing each architecture (for progress bars); ``("built", ...)``
    and ``("trained", ...)`` hand over the model itself (``info["model"]``, with ``"label"`` and
    ``"seed"``) as built and after its fine-tune, for a caller that inspects it. Returns every
    record of these candidates, the earlier ones included.
    """
    store = SweepStore(out_dir)
    store.create()
    store.check_config(config.as_dict())
    emit = on_event or (lambda kind, info: None)
    original = original.eval()
    teacher = (teacher if teacher is not None else original).eval()
    test_loader = DataLoader(test_set, batch_size=config.eval_batch_size)
    # Importance initialisation is calibrated on a fixed random sample (an image folder is sorted by class).
    picks = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:256].tolist()
    calib = torch.stack([train_set[i][0] for i in picks])  # (256, 3, H, W)
    if not store.check_teacher(fingerprint(original)):
        store.write("teacher.json", {"accuracy": evaluate(original, test_loader), "fingerprint": fingerprint(original)})

    for seed, candidate in itertools.product(config.seeds, candidates):  # seed-major: one seed of all first
        path = store.run_path(candidate.key, seed)
        if path.is_file():
            continue
        emit("start", {"label": candidate.label, "seed": seed})
        train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True)
        ratio = store.stored_ratio(candidate.arch_key)
        try:
            model, details = build_candidate(
                candidate,
                original,
                input_size=config.input_size,
                calib=calib,
                train_loader=train_loader,
                pruning_ratio=ratio,
            )
        except ModifyError as e:
            # A candidate this model cannot take (a capacity too large, a block Torch-Pruning cannot
            # handle) is a row of its own, not the end of the sweep.
            store.write(f"failed/{candidate.key}-s{seed}.json", {"label": candidate.label, "error": str(e)})
            emit("failed", {"label": candidate.label, "seed": seed, "error": str(e)})
            continue
        if candidate.method == "prune" and ratio is None:
            store.write(
                f"arch/{candidate.arch_key}.json", {"pruning_ratio": details["pruning_ratio"], "label": candidate.label}
            )
        emit("built", {"label": candidate.label, "seed": seed, "model": model})
        before = evaluate(model, test_loader)
        ft_config = dataclasses.replace(config.finetune, seed=seed, **dict(candidate.finetune))
        started = time.perf_counter()
        finetune(
            model,
            train_loader,
            teacher=teacher,
            config=ft_config,
            epochs=config.epochs,
            on_step=lambda info: emit("step", dataclasses.asdict(info)),
        )
        seconds = time.perf_counter() - started
        for m in (model, teacher, original):
            m.cpu()  # fine-tuning may have used a GPU; evaluation, counting and timing here are on the CPU
        emit("trained", {"label": candidate.label, "seed": seed, "model": model})
        record = _record(
            candidate, seed, model, original, test_loader, config, before=before, seconds=seconds, details=details
        )
        store.write(f"runs/{path.name}", {"format": RUN_FORMAT, "record": record.as_dict()})
        emit("done", record.as_dict())

    _time_finished(candidates, original, config, store, emit)
    keys = {c.key for c in candidates}
    return [r for r in store.runs() if r.key in keys]


def _time_finished(
    candidates: Sequence[Candidate],
    original: nn.Module,
    config: CompareConfig,
    store: SweepStore,
    emit: Callable[[str, dict[str, Any]], None],
) -> None:
    """Timing last, once per architecture that has a finished run, all in shared rounds, with
    nothing training beside them."""
    finished = {r.arch_key for r in store.runs()}
    todo = {c.arch_key: c for c in candidates if c.arch_key in finished and not store.has_speed(c.arch_key)}
    if not todo:
        return
    models = {}
    for key, candidate in todo.items():
        models[key] = build_candidate(
            candidate, original, input_size=config.input_size, pruning_ratio=store.stored_ratio(key), weights=False
        )[0]
    for speed in time_candidates(models, original, config, store):
        emit("speed", {"label": todo[speed["key"]].label, **speed})
