"""Is a conversion better than what a user would otherwise do? A sweep that answers it.

Every candidate starts from the same trained model (the teacher): MoD conversions over
capacities, placements, fusion slots, forms and initialisations; the same blocks deleted
(`modify.baselines.delete_blocks`); static channel pruning with Torch-Pruning at matched
speed-ups (`modify.baselines.prune_channels`). Each is fine-tuned identically (same
`FinetuneConfig`, epochs, teacher, seed, hence the same data order), then measured: test
accuracy, MACs and parameters (fvcore), and latency against the original at batch 1 / one thread
and batch 32 / every thread, interleaved in one process, the median of per-round speed-ups.

Each finished (candidate, seed) is written to ``out_dir/runs/`` as JSON the moment it is done,
so a killed sweep resumes where it stopped: run it again with the same ``out_dir``. Speed is
measured after every fine-tune has finished, once per architecture (candidates that differ only
in their weights share it), every architecture and the original in the same interleaved rounds
(`modify.measure.benchmark.bench_many`), and stored in ``out_dir/speed/``; training no longer competes
with the timing then. A pruned candidate's
architecture (its Torch-Pruning ratio, found by a measured search) is fixed at its first build and
stored in ``out_dir/arch/``, so every seed prunes the same channels. `modify.measure.compare_report`
turns the records into the table, the plot and a recommendation.

Example:
    >>> [c.label for c in default_candidates(blocks=("layer1.1", "layer2.1"))][:3]
    ['MoD every_other c=64', 'MoD k=0.25 importance', 'MoD k=0.25 importance + block KD']
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modify.errors import ModifyError
from modify.train.finetune import FinetuneConfig, evaluate, finetune

__all__ = ["Candidate", "CompareConfig", "RunRecord", "default_candidates", "run_sweep", "load_runs", "load_failures", "fingerprint", "METHODS"]

METHODS = ("mod", "delete", "prune")
RUN_FORMAT = "modify.compare_run"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration of the sweep.

    Example:
        >>> Candidate("delete", "delete layer4.1", blocks=("layer4.1",)).key == Candidate("delete", "other label", blocks=("layer4.1",)).key
        True
    """

    method: str  # "mod", "delete" or "prune"
    label: str  # shown in the table and the plot (not part of the key)
    recipe: dict[str, Any] | None = None  # mod / delete: a recipe dict (None: every_other)
    blocks: tuple[str, ...] | None = None  # delete: the block names (instead of a recipe)
    init: str = "scratch"  # mod: scratch | zero | importance (`modify.conversion.init`) or copy (convert's)
    block_distill_steps: int = 0  # mod: block-local distillation steps per block before the fine-tune
    route_weight: float = 0.0  # mod: block distillation also teaches the selector the most-changed channels
    init_version: int = 2  # importance: 2 = the balanced selector prior (1, before it, collapsed in fine-tuning)
    speedup: float | None = None  # prune: target batch-1 / one-thread speed-up, measured
    macs_ratio: float | None = None  # prune: or a target MAC ratio

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModifyError(f"candidate method {self.method!r} is not one of {METHODS}.")

    def spec(self) -> dict[str, Any]:
        """What defines the candidate (everything but the label), as plain data."""
        spec = dataclasses.asdict(self)
        spec.pop("label")
        # Fields added later are left out where they do not apply, so earlier sweeps keep their keys.
        if not spec["route_weight"]:
            spec.pop("route_weight")
        if self.init != "importance":
            spec.pop("init_version")
        spec["blocks"] = list(self.blocks) if self.blocks is not None else None
        return spec

    @property
    def key(self) -> str:
        """A stable short id of the spec: the file name of its records."""
        return _digest(self.method, self.spec())

    @property
    def arch_key(self) -> str:
        """The id of its architecture, which alone decides its speed: initialisation and
        block-local distillation change weights, not shapes."""
        spec = self.spec()
        for weights_only in ("init", "block_distill_steps", "route_weight", "init_version"):
            spec.pop(weights_only, None)
        return _digest(self.method, spec)


def _digest(method: str, spec: dict[str, Any]) -> str:
    return f"{method}-{hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}"


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


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One fine-tuned candidate: what the table and the plot are made of."""

    key: str
    method: str
    label: str
    seed: int
    accuracy_before: float  # test accuracy before fine-tuning (fraction)
    accuracy: float  # after
    macs: int
    params: int
    speedup: float | None  # original / candidate latency, batch 1, one thread (median of rounds); None until measured
    speedup_batch: float | None  # the same at batch `throughput_batch`, every thread
    latency_ms: float | None  # candidate's batch-1 latency
    teacher_latency_ms: float | None  # the original's, measured beside it
    finetune_seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # what building it reported
    arch_key: str = ""  # `Candidate.arch_key`: where its speed is stored

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_candidates(
    *, blocks: Sequence[str], prune_speedups: Sequence[float] = (1.3, 1.5, 1.7, 1.9), prune_macs: Sequence[float] = (2.5, 3.0)
) -> list[Candidate]:
    """The sweep a user should see for a model whose every_other blocks are ``blocks``.

    MoD: the paper's (c = 64, first slot, fresh blocks), the fraction k = C/4 with the original
    block's most important channels, block-local distillation (`modify.train.distill`) on top, and the
    "branch" form fused into the selected channels' own positions ("OP") with the original
    weights (leading or most important channels) at k = C/4 and C/2. Deletion: all those blocks,
    every set but one, the first two and the last two. Torch-Pruning at matched speed-ups (a
    search on measured latency) and at two MAC ratios beyond them.
    Every attempt stays a row, win or lose.
    """
    op_copy = {"form": "branch", "fusion": "original", "order": "index"}  # the original block's leading channels
    op_importance = {"form": "branch", "fusion": "original"}  # its most important channels, in score order
    every_other_c64 = {"version": 1, "defaults": {"c": 64}, "rules": [{"index": "odd"}]}
    names = list(blocks)
    out = [
        Candidate("mod", "MoD every_other c=64", recipe=every_other_c64),
        Candidate("mod", "MoD k=0.25 importance", recipe=_every_other(0.25), init="importance"),
        Candidate("mod", "MoD k=0.25 importance + block KD", recipe=_every_other(0.25), init="importance", block_distill_steps=300),
        Candidate("mod", "MoD-OP k=0.25 copy + block KD", recipe=_every_other(0.25, op_copy), init="copy", block_distill_steps=300),
        Candidate("mod", "MoD-OP k=0.5 copy + block KD", recipe=_every_other(0.5, op_copy), init="copy", block_distill_steps=300),
        Candidate("mod", "MoD every_other c=64 + block KD", recipe=every_other_c64, block_distill_steps=300),
        Candidate("mod", "MoD-OP k=0.25 importance + block KD", recipe=_every_other(0.25, op_importance), init="importance",
                  block_distill_steps=300),
        Candidate("mod", "MoD-OP k=0.5 importance + block KD", recipe=_every_other(0.5, op_importance), init="importance",
                  block_distill_steps=300),
        Candidate("mod", "MoD-OP k=0.25 importance + routed block KD", recipe=_every_other(0.25, op_importance),
                  init="importance", block_distill_steps=300, route_weight=1.0),
    ]  # fmt: skip
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


# -- building one candidate ---------------------------------------------------------------------


def build_candidate(candidate: Candidate, teacher: nn.Module, *, input_size: int, calib: torch.Tensor | None = None,
                    train_loader: Iterable[Any] | None = None, pruning_ratio: float | None = None,
                    weights: bool = True) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """The candidate's model, built from a copy of ``teacher``, and what building it reported.

    ``pruning_ratio`` rebuilds a pruned candidate found earlier without searching again;
    ``weights=False`` builds the architecture alone (no initialisation, no block distillation),
    enough to time it.
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
            pruned = prune_channels(teacher, speedup=candidate.speedup, macs_ratio=candidate.macs_ratio, input_size=input_size)
        return pruned.model, {"pruning_ratio": pruned.pruning_ratio, "search_speedup": pruned.speedup,
                              "macs_ratio_tp": pruned.macs_ratio}  # fmt: skip
    import modify
    from modify.conversion.init import initialize

    if not weights:
        return modify.convert(teacher, recipe=candidate.recipe, input_size=input_size).model, {}

    convert_init = "copy" if candidate.init == "copy" else "scratch"
    result = modify.convert(teacher, recipe=candidate.recipe, input_size=input_size, init=convert_init)
    details: dict[str, Any] = {"converted": [(b.name, b.k) for b in result.converted]}
    if candidate.init not in ("copy", "scratch"):
        initialize(result, candidate.init, original=teacher, data=calib)
    if candidate.block_distill_steps:
        if train_loader is None:
            raise ModifyError(f"{candidate.label}: block-local distillation needs train_loader=.")
        from modify.train.distill import distill_blocks

        report = distill_blocks(result, teacher, train_loader, steps=candidate.block_distill_steps,
                                route_weight=candidate.route_weight)  # fmt: skip
        details["block_distill"] = [dataclasses.asdict(b) for b in report.blocks]
        details["block_distill_seconds"] = report.seconds  # extra training time the table shows beside the fine-tune
    return result.model, details


# -- the sweep ----------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    from modify.io.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def _stored_ratio(out: Path, arch_key: str) -> float | None:
    """The Torch-Pruning ratio a pruned candidate's first build found, if it has been built."""
    path = out / "arch" / f"{arch_key}.json"
    return json.loads(path.read_text())["pruning_ratio"] if path.is_file() else None


def load_runs(out_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """Every finished run stored under ``out_dir``, in the order they finished, with the speed
    of its architecture where that has been measured."""
    records = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(path.read_text())
        if data.get("format") != RUN_FORMAT:
            continue
        record = RunRecord(**data["record"])
        speed_path = Path(out_dir) / "speed" / f"{record.arch_key}.json"
        if speed_path.is_file():
            speed = json.loads(speed_path.read_text())
            record = dataclasses.replace(
                record, speedup=speed["speedup"], speedup_batch=speed["speedup_batch"], latency_ms=speed["latency_ms"],
                teacher_latency_ms=speed["teacher_latency_ms"],
            )  # fmt: skip
        records.append(record)
    return records


def _time_all(models: dict[str, nn.Module], original: nn.Module, config: CompareConfig, out: Path) -> list[dict[str, Any]]:
    """Every architecture's latency against the original, all in shared rounds, each written to
    ``out/speed/<arch key>.json``."""
    from modify.measure.benchmark import BenchCase, bench_many

    cases = [BenchCase(batch_size=1, threads=1)]
    if config.throughput_batch:
        cases.append(BenchCase(batch_size=config.throughput_batch, threads=0))
    results = bench_many(models, original, cases=cases, input_size=config.input_size, rounds=config.bench_rounds,
                         min_run_time=config.bench_seconds)  # fmt: skip
    written = []
    for key, (one, *many) in results.items():
        speed = {
            "speedup": statistics.median(one.round_speedups), "latency_ms": one.model_median * 1e3,
            "teacher_latency_ms": one.baseline_median * 1e3, "round_speedups": list(one.round_speedups),
            "speedup_batch": statistics.median(many[0].round_speedups) if many else None,
            "timed_with": len(models),  # architectures timed in the same rounds
        }  # fmt: skip
        _write_json(out / "speed" / f"{key}.json", speed)
        written.append({"key": key, **speed})
    return written


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
    and ``("speed", {...})`` after timing each architecture (for progress bars). Returns every
    record of these candidates, the earlier ones included.
    """
    from modify.io.files import check_output_path

    out = check_output_path(out_dir, kind="folder")  # a folder that cannot be written fails here, not after a run
    for folder in ("runs", "speed", "arch", "failed"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    _check_config(out / "config.json", config)
    emit = on_event or (lambda kind, info: None)
    original = original.eval()
    teacher = (teacher if teacher is not None else original).eval()
    test_loader = DataLoader(test_set, batch_size=config.eval_batch_size)
    # Importance initialisation is calibrated on a fixed random sample (an image folder is sorted by class).
    picks = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:256].tolist()
    calib = torch.stack([train_set[i][0] for i in picks])  # (256, 3, H, W)
    _check_original(out / "teacher.json", original, test_loader)

    for seed, candidate in itertools.product(config.seeds, candidates):  # seed-major: one seed of all first
        path = out / "runs" / f"{candidate.key}-s{seed}.json"
        if path.is_file():
            continue
        emit("start", {"label": candidate.label, "seed": seed})
        train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True)
        ratio = _stored_ratio(out, candidate.arch_key)
        try:
            model, details = build_candidate(candidate, original, input_size=config.input_size, calib=calib,
                                             train_loader=train_loader, pruning_ratio=ratio)  # fmt: skip
        except ModifyError as e:
            # A candidate this model cannot take (a capacity too large, a block Torch-Pruning cannot
            # handle) is a row of its own, not the end of the sweep.
            _write_json(out / "failed" / f"{candidate.key}-s{seed}.json", {"label": candidate.label, "error": str(e)})
            emit("failed", {"label": candidate.label, "seed": seed, "error": str(e)})
            continue
        if candidate.method == "prune" and ratio is None:
            _write_json(out / "arch" / f"{candidate.arch_key}.json", {"pruning_ratio": details["pruning_ratio"], "label": candidate.label})
        before = evaluate(model, test_loader)
        ft_config = dataclasses.replace(config.finetune, seed=seed)
        started = time.perf_counter()
        finetune(model, train_loader, teacher=teacher, config=ft_config, epochs=config.epochs,
                 on_step=lambda info: emit("step", dataclasses.asdict(info)))  # fmt: skip
        seconds = time.perf_counter() - started
        for m in (model, teacher, original):
            m.cpu()  # fine-tuning may have used a GPU; evaluation, counting and timing here are on the CPU
        accuracy = evaluate(model, test_loader)
        from modify.measure.profiling import profile_model

        profile = profile_model(model, input_size=config.input_size)
        record = RunRecord(
            key=candidate.key, method=candidate.method, label=candidate.label, seed=seed,
            accuracy_before=before, accuracy=accuracy, macs=profile.macs, params=profile.params,
            speedup=None, speedup_batch=None, latency_ms=None, teacher_latency_ms=None, finetune_seconds=seconds,
            details={**details, "spec": candidate.spec()}, arch_key=candidate.arch_key,
        )  # fmt: skip
        _write_json(path, {"format": RUN_FORMAT, "record": record.as_dict()})
        emit("done", record.as_dict())

    # Timing last, once per architecture that has a finished run, all in shared rounds, with
    # nothing training beside them.
    finished = {r.arch_key for r in load_runs(out)}
    todo = {c.arch_key: c for c in candidates if c.arch_key in finished and not (out / "speed" / f"{c.arch_key}.json").is_file()}
    if todo:
        models = {}
        for key, candidate in todo.items():
            models[key] = build_candidate(candidate, original, input_size=config.input_size,
                                          pruning_ratio=_stored_ratio(out, key), weights=False)[0]  # fmt: skip
        for speed in _time_all(models, original, config, out):
            emit("speed", {"label": todo[speed["key"]].label, **speed})
    keys = {c.key for c in candidates}
    return [r for r in load_runs(out) if r.key in keys]


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers: which model a sweep folder belongs to."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_original(path: Path, original: nn.Module, test_loader: DataLoader) -> None:
    """Records the original's fingerprint and accuracy, or refuses to mix another model into the folder."""
    mark = fingerprint(original)
    if path.is_file():
        known = json.loads(path.read_text()).get("fingerprint")
        if known is not None and known != mark:
            raise ModifyError(
                f"{str(path.parent)!r} holds a sweep of another model (weights fingerprint {known}, this one {mark}); "
                "choose another output folder."
            )
        if known is not None:
            return
    _write_json(path, {"accuracy": evaluate(original, test_loader), "fingerprint": mark})


def retime(out_dir: str | os.PathLike[str]) -> int:
    """Forgets every stored speed under ``out_dir`` (the next `run_sweep` times all architectures
    again, together); returns how many were dropped."""
    files = list((Path(out_dir) / "speed").glob("*.json"))
    for f in files:
        f.unlink()
    return len(files)


def _check_config(path: Path, config: CompareConfig) -> None:
    """A sweep resumes only with the settings it started with."""
    if not path.is_file():
        _write_json(path, config.as_dict())
        return
    if json.loads(path.read_text()) != json.loads(json.dumps(config.as_dict())):
        raise ModifyError(
            f"{str(path.parent)!r} holds a sweep run with other settings ({path.name}); resume with the same "
            "settings, or choose another output folder."
        )


def load_failures(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The candidates a sweep could not build, with the reason ({"label", "error"} each)."""
    folder = Path(out_dir) / "failed"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def teacher_accuracy(out_dir: str | os.PathLike[str]) -> float | None:
    """The original model's test accuracy the sweep under ``out_dir`` measured, if any."""
    path = Path(out_dir) / "teacher.json"
    return json.loads(path.read_text())["accuracy"] if path.is_file() else None

