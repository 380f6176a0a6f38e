"""Brief fine-tuning of a converted model: distillation from the original, resumable, DDP-ready.

    result = finetune(mod_model, train_loader, teacher=original, epochs=1, eval_data=test_loader)

One loop serves a single process and ``torchrun``: under ``torchrun --nproc_per_node=N`` (the
environment has ``WORLD_SIZE`` > 1) the model is wrapped in `DistributedDataParallel` (gloo on
CPU, nccl on GPUs), a `DataLoader` is re-sampled with a `DistributedSampler` (its batch size is
per process, so the global batch is N times it, the PyTorch convention), gradients are averaged,
and only rank 0 reports progress, evaluates and writes checkpoints.

The loss is ``alpha * KD + (1 - alpha) * CE`` with KD the KL divergence between the teacher's and
the student's softened distributions at temperature T, times T^2 (Hinton et al. 2015), so its
gradients keep their size across temperatures; without a teacher it is plain cross-entropy.
The learning rate follows `lr_at`, a pure function: linear warm-up, then cosine decay (both in
`modify.train.objective`).

Resuming: with ``checkpoint_dir`` and ``checkpoint_every``, a state file (model, optimizer,
grad scaler, step, RNG states, data position, losses) is replaced atomically every N steps, so a
run killed at any moment loses at most the steps since the last one. ``resume=True`` restores it
and continues with the same schedule and the same data order: the RNG state at the start of the
epoch is restored, the data iterator rebuilt (a shuffling DataLoader draws the same order), the
batches already used are skipped, and the RNG state at the checkpoint is restored. That holds for
any data whose order depends only on torch's, Python's and NumPy's global RNGs (a DataLoader,
shuffled or not) or on nothing (a deterministic generator).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modify.errors import ModifyError
from modify.train.config import FinetuneConfig, FinetuneResult, Precision, StepInfo
from modify.train.distributed import Dist, pick_device, setup_distributed, shard
from modify.train.evaluation import autocast_for, evaluate, labelled_batches, recalibrate_bn
from modify.train.objective import distillation_loss, lr_at, mixed_loss
from modify.train.optim import freeze_unconverted, frozen_block_norms, make_optimizer
from modify.train.state import (
    STATE_FILE,
    SavedRun,
    check_same_run,
    read_state,
    rng_state,
    seed_all,
    set_rng_state,
    state_path,
    write_state,
)

__all__ = [
    "FinetuneConfig",
    "StepInfo",
    "FinetuneResult",
    "finetune",
    "lr_at",
    "distillation_loss",
    "mixed_loss",
    "recalibrate_bn",
    "evaluate",
    "freeze_unconverted",
    "STATE_FILE",
]


# -- the loop ------------------------------------------------------------------------------------


def _precision(config: FinetuneConfig, device: torch.device) -> str:
    p = config.precision
    if p is Precision.AUTO:
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p is Precision.FP16 and device.type != "cuda":
        raise ModifyError(f"precision='fp16' needs a CUDA device, not {device}; use 'bf16' or 'off' on CPU.")
    return {Precision.OFF: "fp32", Precision.BF16: "bf16", Precision.FP16: "fp16"}[p]


def _total_steps(data: Iterable[Any], epochs: float | None, steps: int | None) -> tuple[int, int | None]:
    """(total steps, steps per epoch or None)."""
    try:
        per_epoch: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch == 0:
        raise ModifyError(
            "the training data holds no batch; check its size and batch size (drop_last with too few images?)."
        )
    if steps is not None and epochs is not None:
        raise ModifyError(f"give epochs ({epochs}) or steps ({steps}), not both.")
    if steps is not None:
        if steps < 1:
            raise ModifyError(f"steps={steps} must be at least 1.")
        return steps, per_epoch
    epochs = 1 if epochs is None else epochs
    if epochs <= 0:
        raise ModifyError(f"epochs={epochs} must be positive.")
    if per_epoch is None:
        raise ModifyError(
            "the training data has no length, so epochs cannot be turned into steps; pass steps= instead."
        )
    return max(1, int(round(epochs * per_epoch))), per_epoch


def finetune(
    model: nn.Module,
    train_data: Iterable[Any],
    *,
    teacher: nn.Module | None = None,
    config: FinetuneConfig | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    eval_data: Iterable[Any] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FinetuneResult:
    """Fine-tunes ``model`` in place on ``train_data``, distilling from ``teacher`` if given.

    Args:
        model: the (converted) model; trained in place and left in eval mode.
        train_data: (images, labels) batches: a DataLoader, or any iterable (a generator is one
            pass; a re-iterable object is iterated once per epoch).
        teacher: the original model; its logits are the distillation target. Run in eval mode.
        config: a `FinetuneConfig`; defaults otherwise.
        epochs, steps: how long; at most one of them (default one epoch). ``epochs`` may be a
            fraction; data without a length (a generator) needs ``steps``, and a one-pass
            iterable that runs out ends the run early.
        eval_data: batches to measure top-1 accuracy on, before and after (rank 0 only).
        on_step: called with a `StepInfo` after every step (rank 0 only); for progress bars.
        checkpoint_dir: where the state file ``finetune_state.pt`` lives.
        checkpoint_every: write the state every N steps (and at the end). Needs checkpoint_dir.
        resume: continue from the state in ``checkpoint_dir`` if there is one (a fresh run otherwise).

    Returns:
        A `FinetuneResult`.

    Raises:
        ModifyError: bad arguments, or a state file written with other settings.
    """
    config = config or FinetuneConfig()
    started = time.perf_counter()
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ModifyError(f"checkpoint_every={checkpoint_every} needs checkpoint_dir= (where to write the state).")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ModifyError(f"checkpoint_every={checkpoint_every} must be at least 1.")
    if resume and checkpoint_dir is None:
        raise ModifyError("resume=True needs checkpoint_dir= (where the state of the earlier run is).")
    request = _Request(
        model=model,
        train_data=train_data,
        teacher=teacher,
        config=config,
        epochs=epochs,
        steps=steps,
        eval_data=eval_data,
        on_step=on_step,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        started=started,
    )
    d = setup_distributed(config.device)
    try:
        return _run(request, d)
    finally:
        if d.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclasses.dataclass(frozen=True)
class _Request:
    """The arguments of one `finetune` call."""

    model: nn.Module
    train_data: Iterable[Any]
    teacher: nn.Module | None
    config: FinetuneConfig
    epochs: float | None
    steps: int | None
    eval_data: Iterable[Any] | None
    on_step: Callable[[StepInfo], None] | None
    checkpoint_dir: str | os.PathLike[str] | None
    checkpoint_every: int | None
    resume: bool
    started: float  # perf_counter at the call


@dataclasses.dataclass
class _Progress:
    """Where a run is; what the state file saves and a resumed run starts from."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already used
    losses: list[float] = dataclasses.field(default_factory=list)
    lrs: list[float] = dataclasses.field(default_factory=list)
    epoch_rng: dict[str, Any] | None = None  # RNG state at the start of the current epoch
    correct: int = 0  # training images classified right by this process in this run
    seen: int = 0
    train_seconds: float = 0.0
    written: str | None = None  # the state file last written


@dataclasses.dataclass
class _Loop:
    """What every step uses: the model (and its DDP wrapper), the teacher, optimizer and scaler."""

    request: _Request
    d: Dist
    data: Iterable[Any]  # this process's share
    device: torch.device
    precision: str
    total_steps: int
    warmup: int
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    path: Path | None  # the state file
    eval_before: float | None

    def save(self, progress: _Progress) -> None:
        if self.path is None or not self.d.main:
            return
        model = self.request.model
        progress.written = write_state(
            self.path,
            SavedRun(
                config=self.request.config.as_dict(),
                total_steps=self.total_steps,
                step=progress.step,
                epoch=progress.epoch,
                position=progress.position,
                epoch_rng=progress.epoch_rng,
                rng=rng_state(),
                model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict(),
                losses=list(progress.losses),
                lrs=list(progress.lrs),
                eval_before=self.eval_before,
            ),
        )


def _run(request: _Request, d: Dist) -> FinetuneResult:
    config, model, teacher = request.config, request.model, request.teacher
    device = pick_device(config, d)
    precision = _precision(config, device)
    data = shard(request.train_data, d, config.seed)
    total_steps, per_epoch = _total_steps(data, request.epochs, request.steps)
    grad_flags = [(p, p.requires_grad) for m in (model, teacher) if m is not None for p in m.parameters()]
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    frozen = freeze_unconverted(model) if config.freeze_unconverted else []
    path = state_path(request.checkpoint_dir) if request.checkpoint_dir is not None else None
    state = read_state(path) if request.resume and path is not None and path.is_file() else None
    if state is not None:
        check_same_run(state, config, total_steps, path)  # type: ignore[arg-type]
        try:
            model.load_state_dict(state.model)
        except RuntimeError as e:  # missing, unexpected or misshapen weights
            first = str(e).strip().splitlines()[-1].strip()[:160]
            raise ModifyError(
                f"the state in {str(path)!r} holds another model's weights ({first}); resume with the model "
                "that wrote it, or drop resume to start afresh."
            ) from None
        eval_before = state.eval_before
    else:
        seed_all(config.seed)  # a fresh run is reproducible whatever the caller's RNG state
        eval_before = _evaluate_on_main(request, d, device, precision)
    loop = _Loop(
        request=request,
        d=d,
        data=data,
        device=device,
        precision=precision,
        total_steps=total_steps,
        warmup=config.warmup_steps(total_steps),
        net=_wrap(model, d, device),
        optimizer=make_optimizer(model, config),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        path=path,
        eval_before=eval_before,
    )
    progress = _restore(loop, state)
    model.train()
    for m in (*frozen, *(frozen_block_norms(model) if config.block_norms == "frozen" else ())):
        m.eval()
    _train(loop, progress, state)
    if request.checkpoint_every is not None:
        loop.save(progress)
    _recalibrate(loop)
    model.eval()
    for p, flag in grad_flags:
        p.requires_grad_(flag)
    return _result(loop, progress, per_epoch, resumed_from=state.step if state is not None else None)


def _wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    if d.world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _evaluate_on_main(request: _Request, d: Dist, device: torch.device, precision: str) -> float | None:
    if request.eval_data is None or not d.main:
        return None
    return evaluate(request.model, request.eval_data, device=device, precision=precision)


def _restore(loop: _Loop, state: SavedRun | None) -> _Progress:
    if state is None:
        return _Progress()
    loop.optimizer.load_state_dict(state.optimizer)
    loop.scaler.load_state_dict(state.scaler)
    return _Progress(
        step=state.step,
        epoch=state.epoch,
        position=state.position,
        losses=list(state.losses),
        lrs=list(state.lrs),
        epoch_rng=state.epoch_rng,
    )


def _train(loop: _Loop, progress: _Progress, state: SavedRun | None) -> None:
    """Epochs until the planned steps are done (or a one-pass iterable runs out). A resumed run
    first replays the interrupted epoch's data order and skips the batches it already used."""
    single_pass = isinstance(loop.request.train_data, Iterator)  # a generator: one pass, whatever the epochs
    while progress.step < loop.total_steps:
        if state is not None and progress.epoch_rng is not None:
            set_rng_state(progress.epoch_rng)  # the order of the interrupted epoch
        else:
            progress.epoch_rng = rng_state()
            progress.position = 0
        sampler = getattr(loop.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(progress.epoch)
        iterator = iter(loop.data)
        if state is not None:
            for _ in range(progress.position):  # the batches the interrupted run already used
                if next(iterator, None) is None:
                    break
            set_rng_state(state.rng)
            state = None
        _epoch(loop, progress, iterator)
        if progress.step >= loop.total_steps or progress.position == 0 or single_pass:
            break  # done, no data at all, or a one-pass iterable used up
        progress.epoch += 1
        progress.epoch_rng = None


def _epoch(loop: _Loop, progress: _Progress, iterator: Iterator[Any]) -> None:
    every = loop.request.checkpoint_every
    tick = time.perf_counter()
    for images, labels in labelled_batches(iterator):
        hits, n = _step(loop, progress, images, labels)
        now = time.perf_counter()
        progress.train_seconds += now - tick
        on_step = loop.request.on_step
        if on_step is not None and loop.d.main:
            on_step(
                StepInfo(
                    step=progress.step,
                    total_steps=loop.total_steps,
                    epoch=progress.epoch,
                    loss=progress.losses[-1],
                    accuracy=hits / n,
                    lr=progress.lrs[-1],
                    seconds=now - loop.request.started,
                    images_per_second=progress.seen * loop.d.world / max(progress.train_seconds, 1e-9),
                )
            )
        if every is not None and progress.step % every == 0 and progress.step < loop.total_steps:
            loop.save(progress)
        if progress.step >= loop.total_steps:
            return
        tick = time.perf_counter()


def _step(loop: _Loop, progress: _Progress, images: Tensor, labels: Tensor) -> tuple[int, int]:
    """One optimisation step; returns (training hits, batch size)."""
    config, teacher, optimizer, scaler = loop.request.config, loop.request.teacher, loop.optimizer, loop.scaler
    images = images.to(loop.device, non_blocking=True)  # (N, 3, H, W)
    labels = labels.to(loop.device, non_blocking=True)  # (N,)
    lr = lr_at(
        progress.step, total_steps=loop.total_steps, base_lr=config.lr, warmup_steps=loop.warmup, min_lr=config.min_lr
    )
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with autocast_for(loop.device, loop.precision):
        logits = loop.net(images)  # (N, classes)
        target = None
        if teacher is not None and config.alpha > 0:  # alpha = 0 is plain training: no teacher pass
            with torch.no_grad():
                target = teacher(images)  # (N, classes)
        loss = mixed_loss(logits, labels, target, alpha=config.alpha, temperature=config.temperature)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for p in loop.request.model.parameters() if p.requires_grad], config.grad_clip
        )
    scaler.step(optimizer)
    scaler.update()
    hits = int((logits.detach().argmax(1) == labels).sum())
    progress.correct += hits
    progress.seen += len(labels)
    progress.step += 1
    progress.position += 1
    progress.losses.append(float(loss.detach()))
    progress.lrs.append(lr)
    return hits, len(labels)


def _recalibrate(loop: _Loop) -> None:
    batches = loop.request.config.bn_recalibration_batches
    if not batches:
        return
    model = loop.request.model
    recalibrate_bn(model, loop.data, batches, device=loop.device)
    if loop.d.world > 1:  # each process saw its own shard; keep rank 0's statistics everywhere
        import torch.distributed as dist

        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                for buffer in m.buffers(recurse=False):
                    dist.broadcast(buffer, 0)


def _result(loop: _Loop, progress: _Progress, per_epoch: int | None, *, resumed_from: int | None) -> FinetuneResult:
    request, d = loop.request, loop.d
    eval_after = _evaluate_on_main(request, d, loop.device, loop.precision)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return FinetuneResult(
        steps=progress.step,
        total_steps=loop.total_steps,
        epochs=progress.step / per_epoch if per_epoch else float("nan"),
        losses=tuple(progress.losses),
        lrs=tuple(progress.lrs),
        train_accuracy=progress.correct / max(1, progress.seen),
        eval_accuracy_before=loop.eval_before,
        eval_accuracy_after=eval_after,
        images_per_second=progress.seen * d.world / max(progress.train_seconds, 1e-9),
        seconds=time.perf_counter() - request.started,
        train_seconds=progress.train_seconds,
        resumed_from=resumed_from,
        world_size=d.world,
        precision=loop.precision,
        checkpoint=progress.written,
        config=request.config,
    )
