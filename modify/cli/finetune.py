"""`modify finetune CHECKPOINT --data DATA`: brief distillation fine-tuning of a converted model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modify.cli._common import (
    INIT_HELP,
    check_output,
    fail,
    load_base,
    load_model,
    parse_init,
    quiet_torch_logs,
    user_errors,
)

if TYPE_CHECKING:  # the CLI imports torch only inside a command
    from torch.utils.data import DataLoader, Dataset

    from modify.train.config import FinetuneResult

app = typer.Typer()


def _default_output(checkpoint: str) -> Path:
    p = Path(checkpoint)
    stem = p.stem if p.suffix else p.name.replace(":", "_").replace("/", "_")
    return p.with_name(f"{stem}_ft.pt") if p.suffix else Path(f"{stem}_ft.pt")


@app.command()
@user_errors
def finetune(
    checkpoint: Annotated[str, typer.Argument(help="The converted model: a modify checkpoint (modify convert -o).")],
    data: Annotated[
        str, typer.Option("--data", help="Training data: 'fashion-mnist' or an image folder (ROOT/CLASS/IMG).")
    ],
    teacher: Annotated[
        str | None,
        typer.Option("--teacher", help="The original model to distil from: a checkpoint, name or import path."),
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help="Epochs to train (may be a fraction); default 1.", min=0)
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimisation steps instead of epochs.", min=1)] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Where to write the fine-tuned checkpoint [CHECKPOINT_ft.pt].")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the state in --checkpoint-dir, if any.")
    ] = False,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder of the data set files (fashion-mnist: the IDX files).")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="Data to measure accuracy on before and after (test split).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per step (per process under torchrun).", min=1)
    ] = 128,
    lr: Annotated[
        float, typer.Option("--lr", help="Peak learning rate (cosine schedule, linear warm-up).", min=0)
    ] = 0.01,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adamw.")] = "sgd",
    alpha: Annotated[
        float, typer.Option("--alpha", help="Weight of the distillation loss (1 - alpha: cross-entropy).", min=0, max=1)
    ] = 0.5,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature T.", min=0)] = 4.0,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Write a resumable state every N steps.", min=1)
    ] = None,
    checkpoint_dir: Annotated[
        str | None, typer.Option("--checkpoint-dir", help="Folder of the resumable state [OUTPUT.state].")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help=f"{INIT_HELP} Re-initialises them first (copy and importance need --teacher); default: as they are.",
        ),
    ] = None,
    freeze: Annotated[
        bool, typer.Option("--freeze", help="Train only the MoD blocks; the rest stays bit-identical.")
    ] = False,
    bn_recalibrate: Annotated[
        int,
        typer.Option("--bn-recalibrate", help="Re-estimate BatchNorm statistics on N batches after training.", min=0),
    ] = 0,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), off, bf16, fp16.")
    ] = "auto",
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N training images.", min=1)] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="Use only the first N evaluation images.", min=1)
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image side (image folders: 224; fashion-mnist: 32).", min=1)
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.", min=0)] = 0,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", help="Classes of a --teacher given by name.", min=1)
    ] = None,
    teacher_weights: Annotated[
        Path | None,
        typer.Option(
            "--teacher-weights", help="Your weights for --teacher (a state_dict file, as convert's --weights)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of a fresh run (shuffling, initialisation).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print one JSON object at the end.")] = False,
) -> None:
    """Fine-tune a converted model briefly, distilling from the original; write it atomically."""
    parse_init(init)
    if init in ("copy", "importance") and teacher is None:
        raise fail(f"--init {init} copies from the original model; pass it as --teacher MODEL.")
    if epochs is not None and steps is not None:
        raise fail(f"give --epochs ({epochs:g}) or --steps ({steps}), not both.")
    if teacher_weights is not None and teacher is None:
        raise fail("--teacher-weights loads weights into --teacher; pass --teacher MODEL too.")
    out = Path(output) if output else _default_output(checkpoint)
    check_output(out, force=force)
    state_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".state")
    if checkpoint_every or resume:  # the resumable state is written too
        check_output(state_dir, kind="folder", option="--checkpoint-dir")
    quiet_torch_logs()

    import torch
    from torch.utils.data import DataLoader

    from modify.io.checkpoint import save
    from modify.train.finetune import FinetuneConfig, finetune as run_finetune

    # Configuration errors surface before anything heavy is loaded.
    config = FinetuneConfig(
        lr=lr,
        optimizer=optimizer,
        alpha=alpha,
        temperature=temperature,
        freeze_unconverted=freeze,
        bn_recalibration_batches=bn_recalibrate,
        precision=precision,
        seed=seed,
    )
    model, label = load_model(checkpoint)
    teacher_model = (
        load_base(teacher, weights=str(teacher_weights) if teacher_weights else None, num_classes=num_classes)[0]
        if teacher is not None
        else None
    )
    train_set, loader, eval_loader = _loaders(
        data,
        eval_data,
        data_dir=data_dir,
        limit=limit,
        eval_limit=eval_limit,
        size=image_size,
        batch_size=batch_size,
        workers=workers,
    )
    if init is not None:
        from modify.conversion.init import initialize

        torch.manual_seed(seed)
        calibration = next(iter(DataLoader(train_set, batch_size=min(256, len(train_set)))))[0]
        initialize(model, init, original=teacher_model, data=calibration)

    from modify.cli.render import FinetuneProgress, console, finetune_table

    kwargs = dict(
        teacher=teacher_model,
        config=config,
        epochs=epochs,
        steps=steps,
        eval_data=eval_loader,
        checkpoint_dir=state_dir if (checkpoint_every or resume) else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    if as_json:
        result = run_finetune(model, loader, **kwargs)
    else:
        total = steps or max(1, round((epochs if epochs is not None else 1) * len(loader)))
        with FinetuneProgress(total, description=label) as bar:
            result = run_finetune(model, loader, on_step=bar.update, **kwargs)
    written = save(model, out, force=force)
    if as_json:
        typer.echo(json.dumps(_json(result, written)))
        return
    console().print(finetune_table(result, str(written)))


def _loaders(
    data: str,
    eval_data: str | None,
    *,
    data_dir: str | None,
    limit: int | None,
    eval_limit: int | None,
    size: int | None,
    batch_size: int,
    workers: int,
) -> tuple[Dataset, DataLoader, DataLoader | None]:
    """(training set, its shuffled loader, the evaluation loader or None)."""
    from torch.utils.data import DataLoader

    from modify.train.data import load_dataset

    train_set = load_dataset(data, split="train", data_dir=data_dir, limit=limit, size=size)
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) >= batch_size, num_workers=workers
    )
    if eval_data is None:
        return train_set, loader, None
    eval_set = load_dataset(eval_data, split="test", data_dir=data_dir, limit=eval_limit, size=size)
    return train_set, loader, DataLoader(eval_set, batch_size=max(batch_size, 256), num_workers=workers)


def _json(result: FinetuneResult, written: Path) -> dict[str, object]:
    """What --json prints: the run's numbers and where the model went."""
    return {
        "output": str(written),
        "steps": result.steps,
        "total_steps": result.total_steps,
        "epochs": result.epochs,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "train_accuracy": result.train_accuracy,
        "eval_accuracy_before": result.eval_accuracy_before,
        "eval_accuracy_after": result.eval_accuracy_after,
        "images_per_second": result.images_per_second,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "state": result.checkpoint,
    }
