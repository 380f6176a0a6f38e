"""`modify compare MODEL --data DATA`: MoD against deleting the blocks and static pruning, at the
same measured speed, after the same fine-tune; resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modify.cli._common import (
    ClassesOpt,
    WeightsOpt,
    check_output,
    fail,
    load_base,
    load_model,
    quiet_torch_logs,
    user_errors,
)

if TYPE_CHECKING:  # the CLI imports torch only inside a command
    from torch import nn
    from torch.utils.data import Dataset

    from modify.study.candidates import Candidate

app = typer.Typer()


PRUNE_HELP = "Torch-Pruning's measured speed-up targets [1.3,1.5,1.7,1.9 and the plans']."


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise fail(f"--seeds {text!r} is not a comma-separated list of integers (such as 0,1).") from None
    if not seeds:
        raise fail("--seeds is empty; give at least one seed (such as 0).")
    return seeds


def _targets(text: str | None, *, option: str = "--plan-speedups") -> tuple[float, ...]:
    if text is None:
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise fail(f"{option} {text!r} is not a comma-separated list of speed-ups (such as 1.3,1.5,1.8).") from None
    if not values or any(v <= 1 for v in values):
        raise fail(f"{option} {text!r}: give speed-ups above 1, comma-separated (such as 1.3,1.5,1.8).")
    return values


def _planned(base, train_set, targets: tuple[float, ...], size: int, out_dir: Path) -> list:
    """The planned candidates (made once, kept in OUT/plans), with progress."""
    from modify.cli.render import PlanProgress, error_console
    from modify.study.latency import Setting
    from modify.study.planned import planned_candidates
    from modify.study.planner import PlanConfig

    config = PlanConfig(speedup=max(targets), setting=Setting(batch=1, threads=1, input_size=size))
    with PlanProgress() as bar:
        candidates, problems = planned_candidates(
            base, train_set, targets=targets, config=config, out_dir=out_dir, on_event=bar.event
        )
    for line in problems:
        error_console().print(f"not planned: {line}", highlight=False)
    return candidates


def _candidates(
    base: nn.Module,
    chosen: set[str],
    max_configs: int | None,
    targets: tuple[float, ...],
    train_set: Dataset,
    *,
    size: int,
    out_dir: Path,
    prune_targets: tuple[float, ...] = (),
) -> list[Candidate]:
    """The sweep's candidates: the first ``max_configs`` of each chosen method's defaults, for the
    blocks the paper's placement converts, and a plan (with its deletion-only twin) per target.
    Torch-Pruning is searched to ``prune_targets`` (default: 1.3, 1.5, 1.7, 1.9 and the targets)."""
    import modify
    from modify.study.candidates import default_candidates

    blocks = [b.name for b in modify.convert(base, input_size=size, recipe="every_other").converted]
    prune_at = sorted(set(prune_targets)) if prune_targets else sorted({1.3, 1.5, 1.7, 1.9, *targets})
    every = default_candidates(blocks=blocks, prune_speedups=prune_at)
    candidates = [
        c
        for method in ("mod", "delete", "prune")
        if method in chosen
        for c in [c for c in every if c.method == method][:max_configs]
    ]
    if targets:
        candidates += _planned(base, train_set, targets, size, out_dir)
    return candidates


def _methods(text: str) -> set[str]:
    methods = {m.strip() for m in text.split(",") if m.strip()}
    sweepable = ("mod", "delete", "prune")
    unknown = sorted(methods - set(sweepable))
    if unknown or not methods:
        raise fail(
            f"--methods {text!r}: choose from {', '.join(sweepable)} "
            "(comma-separated; --plan-speedups adds planned rows)."
        )
    return methods


@app.command()
@user_errors
def compare(
    model: Annotated[
        str, typer.Argument(help="The trained model to make faster: a modify checkpoint, a name or an import path.")
    ],
    data: Annotated[
        str, typer.Option("--data", help="'fashion-mnist' or an image folder with train/ and test/ (ROOT/CLASS/IMG).")
    ],
    teacher: Annotated[str | None, typer.Option("--teacher", help="The model to distil from [MODEL].")] = None,
    out: Annotated[
        str, typer.Option("-o", "--out", help="Folder of the results; an existing one is resumed.")
    ] = "compare_out",
    epochs: Annotated[
        float, typer.Option("--epochs", help="Fine-tuning epochs per configuration (may be a fraction).", min=0)
    ] = 0.5,
    seeds: Annotated[
        str, typer.Option("--seeds", help="Comma-separated seeds; each configuration is fine-tuned once per seed.")
    ] = "0,1",
    methods: Annotated[
        str, typer.Option("--methods", help="Which methods to sweep: mod, delete, prune.")
    ] = "mod,delete,prune",
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N training images.", min=1)] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="Use only the first N test images.", min=1)
    ] = None,
    max_configs: Annotated[
        int | None, typer.Option("--max-configs", help="Run only the first N configurations of each method.", min=1)
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak fine-tuning learning rate.", min=0)] = 0.02,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training images per step.", min=1)] = 128,
    bench_rounds: Annotated[
        int, typer.Option("--bench-rounds", help="Interleaved latency rounds per architecture.", min=1)
    ] = 7,
    bench_time: Annotated[
        float, typer.Option("--bench-time", help="Seconds of timing per model per round.", min=0)
    ] = 0.3,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image side (image folders: 224; fashion-mnist: 32).", min=1)
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder of the data set files (fashion-mnist: the IDX files).")
    ] = None,
    num_classes: ClassesOpt = None,
    weights: WeightsOpt = None,
    prune_speedups: Annotated[str | None, typer.Option("--prune-speedups", help=PRUNE_HELP)] = None,
    plan_speedups: Annotated[
        str | None,
        typer.Option(
            "--plan-speedups",
            help="Also plan for these speed-ups (1.3,1.5,1.8): each plan, "
            "and its deletion-only twin, fine-tuned as every row.",
        ),
    ] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Train nothing: write the report of what OUT holds.")
    ] = False,
    retime: Annotated[
        bool, typer.Option("--retime", help="Time every architecture again, all in shared rounds (runs are kept).")
    ] = False,
) -> None:
    """Sweep MoD conversions, block deletion and Torch-Pruning; write a table, a plot and a verdict."""
    seed_list = _seeds(seeds)
    chosen = _methods(methods)
    targets = _targets(plan_speedups)
    prune_targets = _targets(prune_speedups, option="--prune-speedups")
    quiet_torch_logs()
    from modify.study.store import load_runs, retime as forget_speeds
    from modify.study.sweep import CompareConfig, run_sweep
    from modify.train.data import load_dataset
    from modify.train.finetune import FinetuneConfig

    out_dir = Path(out)
    if retime and report_only:
        raise fail("--retime times the models again; it cannot go with --report-only.")
    check_output(out_dir, kind="folder")  # before --retime forgets anything, and before the sweep
    if retime and out_dir.is_dir():
        forget_speeds(out_dir)
    if not report_only:
        if "prune" in chosen:
            from modify.baselines.prune import require_torch_pruning

            require_torch_pruning()  # the install hint before minutes of work
        base, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
        teacher_model = load_model(teacher, num_classes=num_classes)[0] if teacher is not None else None
        train_set = load_dataset(data, split="train", data_dir=data_dir, limit=limit, size=image_size)
        test_set = load_dataset(data, split="test", data_dir=data_dir, limit=eval_limit, size=image_size)
        size = int(train_set[0][0].shape[-1])
        config = CompareConfig(
            epochs=epochs,
            seeds=seed_list,
            finetune=FinetuneConfig(lr=lr, alpha=0.5, temperature=4.0, warmup=0.03),
            batch_size=batch_size,
            input_size=size,
            bench_rounds=bench_rounds,
            bench_seconds=bench_time,
            train_limit=limit,
            test_limit=eval_limit,
        )
        candidates = _candidates(
            base, chosen, max_configs, targets, train_set, size=size, out_dir=out_dir, prune_targets=prune_targets
        )
        done = {(r.key, r.seed) for r in load_runs(out_dir)} if out_dir.is_dir() else set()
        finished = sum((c.key, s) in done for c in candidates for s in seed_list)

        from modify.cli.render import SweepProgress

        with SweepProgress(len(candidates) * len(seed_list), finished) as bar:
            run_sweep(
                base,
                train_set,
                test_set,
                candidates=candidates,
                config=config,
                out_dir=out_dir,
                teacher=teacher_model,
                on_event=bar.event,
            )
        title = f"{label}: {len(seed_list)} seed(s), {epochs:g} epoch(s) of distillation each"
    else:
        if not (out_dir / "runs").is_dir():
            raise fail(
                f"{str(out_dir)!r} holds no sweep (no runs/ folder); run modify compare without --report-only first."
            )
        title = str(out_dir)
    _report(out_dir, title)


def _report(out_dir: Path, title: str) -> None:
    """The table, the verdict and the files of what ``out_dir`` holds."""
    from modify.cli.render import console, sweep_table
    from modify.study.report import recommendation, summarize, write_report
    from modify.study.store import load_failures, load_runs, teacher_accuracy

    records = load_runs(out_dir)  # every attempt the folder holds, earlier candidate lists' too
    if not any(r.speedup is not None for r in records):
        raise fail(
            f"{str(out_dir)!r} holds no configuration that has been "
            "fine-tuned and timed yet; run modify compare to go on."
        )
    summary = summarize(records, teacher_accuracy=teacher_accuracy(out_dir))
    paths = write_report(summary, out_dir, title=title)
    console().print(sweep_table(summary))
    for line in recommendation(summary):
        typer.echo(f"- {line}")
    for failed in load_failures(out_dir):
        typer.echo(f"- not built: {failed['label']}: {failed['error']}")
    typer.echo(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
