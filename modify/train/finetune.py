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
The learning rate follows `lr_at`, a pure function: linear warm-up, then cosine decay.

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

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modify.errors import ModifyError
from modify.layers.options import StrChoice

__all__ = [
    "Optimizer",
    "Precision",
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

STATE_FILE = "finetune_state.pt"
STATE_FORMAT = "modify.finetune_state"
STATE_VERSION = 1


class Optimizer(StrChoice):
    """The optimiser."""

    SGD = "sgd"  # SGD with Nesterov-free momentum
    ADAMW = "adamw"


class Precision(StrChoice):
    """Mixed precision of the forward passes (the weights and the optimiser stay fp32)."""

    AUTO = "auto"  # bf16 on a CUDA device that supports it, else fp16 with a grad scaler; off on CPU
    OFF = "off"  # fp32
    BF16 = "bf16"  # torch.autocast bf16 (CUDA or CPU)
    FP16 = "fp16"  # torch.autocast fp16 with a grad scaler (CUDA only)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How `finetune` trains; every field has a default that suits a brief recovery run.

    Example:
        >>> FinetuneConfig(lr=0.05, optimizer="adamw").optimizer
        <Optimizer.ADAMW: 'adamw'>
    """

    lr: float = 0.01  # peak learning rate, reached at the end of the warm-up
    min_lr: float = 0.0  # learning rate at the end of the cosine decay
    warmup: float = 0.05  # warm-up length: a fraction of the steps (< 1) or a step count (>= 1)
    optimizer: Optimizer = Optimizer.SGD  # "sgd" or "adamw"
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    weight_decay: float = 1e-4  # decoupled for AdamW, L2 for SGD; not applied to norms and biases
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weights cross-entropy
    temperature: float = 4.0  # T of the softened distributions
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    freeze_unconverted: bool = False  # train only the MoD blocks; the rest stays bit-identical
    bn_recalibration_batches: int = 0  # after training, re-estimate BatchNorm statistics on N batches
    precision: Precision = Precision.AUTO  # mixed precision of the forward passes
    seed: int = 0  # seeds the RNGs at the start of a fresh run; DistributedSampler's seed
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = cuda:LOCAL_RANK if available, else cpu

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", Optimizer.from_str(self.optimizer))
            object.__setattr__(self, "precision", Precision.from_str(self.precision))
        except ValueError as e:
            raise ModifyError(f"FinetuneConfig: {e}") from None
        checks = [
            (self.lr > 0, f"lr={self.lr} must be positive"),
            (0 <= self.min_lr <= self.lr, f"min_lr={self.min_lr} must lie in 0..lr ({self.lr})"),
            (self.warmup >= 0, f"warmup={self.warmup} must be >= 0 (a fraction below 1, or a step count)"),
            (0 <= self.alpha <= 1, f"alpha={self.alpha} must lie in 0..1"),
            (self.temperature > 0, f"temperature={self.temperature} must be positive"),
            (self.bn_recalibration_batches >= 0, f"bn_recalibration_batches={self.bn_recalibration_batches} must be >= 0"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip={self.grad_clip} must be positive or None"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModifyError(f"FinetuneConfig: {message}.")

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup * total_steps)) if self.warmup < 1 else int(self.warmup)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), StrChoice) else v) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What `on_step` receives after every optimisation step (rank 0 only)."""

    step: int  # steps done, 1-based
    total_steps: int
    epoch: int  # 0-based epoch of this step
    loss: float  # this step's loss
    accuracy: float  # this step's training accuracy (fraction of its batch)
    lr: float  # the learning rate this step used
    images_per_second: float  # training throughput of this run so far (all processes)
    seconds: float  # wall time of this run so far


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` did. Accuracies are fractions in 0..1."""

    steps: int  # optimisation steps done in total (a resumed run counts the earlier ones)
    total_steps: int  # steps the schedule was laid out for
    epochs: float  # steps / steps per epoch (nan when the data has no length)
    losses: tuple[float, ...]  # loss of every step, the earlier run's included on resume
    lrs: tuple[float, ...]  # learning rate of every step
    train_accuracy: float  # over every training image this process saw in this run
    eval_accuracy_before: float | None  # on eval_data before training (None without eval_data)
    eval_accuracy_after: float | None  # after training (and BN recalibration)
    images_per_second: float  # training images per second of this run, all processes together
    seconds: float  # wall time of this call
    train_seconds: float  # time in training steps (data loading included; eval and checkpoints not)
    resumed_from: int | None  # the step a resumed run started at; None for a fresh run
    world_size: int  # processes that trained together
    precision: str  # "fp32", "bf16" or "fp16"
    checkpoint: str | None  # the state file last written, if any
    config: FinetuneConfig


# -- pure pieces ---------------------------------------------------------------------------------


def lr_at(step: int, *, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate of 0-based ``step``: linear warm-up to ``base_lr`` over ``warmup_steps``,
    then cosine decay to ``min_lr`` at ``total_steps``.

    Example:
        >>> [round(lr_at(s, total_steps=10, base_lr=1.0, warmup_steps=2), 3) for s in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(distillation_loss(z, z, 2.0))
        0.0
    """
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=1)  # (N, classes)
    log_q = F.log_softmax(teacher.float() / t, dim=1)  # (N, classes)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def mixed_loss(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, *, alpha: float, temperature: float) -> Tensor:
    """``alpha * distillation_loss + (1 - alpha) * cross_entropy``; plain cross-entropy without a teacher.

    Example:
        >>> z, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> float(mixed_loss(z, y, None, alpha=0.5, temperature=4.0)) == float(F.cross_entropy(z, y))
        True
    """
    ce = F.cross_entropy(logits.float(), labels)
    if teacher_logits is None:
        return ce
    return alpha * distillation_loss(logits, teacher_logits, temperature) + (1 - alpha) * ce


# -- helpers that are useful on their own --------------------------------------------------------


def _batches(data: Iterable[Any], limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ModifyError(f"a data batch is a {type(batch).__name__}; expected (images, labels) pairs.")
        yield batch[0], batch[1]


def recalibrate_bn(model: nn.Module, data: Iterable[Any], batches: int, *, device: torch.device | str | None = None) -> int:
    """Re-estimates every BatchNorm's running statistics from ``batches`` batches of ``data``.

    The statistics are reset and accumulated as a cumulative average (``momentum=None``) in
    training mode without gradients; parameters are not touched and each module's mode and
    momentum are restored. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = torch.device(device) if device is not None else _device_of(model)
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for images, _ in _batches(data, batches):
                model(images.to(device, non_blocking=True))
                used += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, mode in modes.items():
            m.training = mode
    return used


def evaluate(model: nn.Module, data: Iterable[Any], *, device: torch.device | str | None = None, precision: str = "fp32") -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``data``, in eval mode without gradients."""
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad(), _autocast(device, precision):
            for images, labels in _batches(data):
                logits = model(images.to(device, non_blocking=True))
                correct += int((logits.argmax(1) == labels.to(device)).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    return correct / max(1, total)


def freeze_unconverted(model: nn.Module) -> list[nn.Module]:
    """Leaves only the MoD blocks trainable; returns the modules that stay frozen (kept in eval
    mode while training, so their BatchNorm statistics do not move either)."""
    from modify.layers import MoDBlock

    inside: set[int] = set()
    for m in model.modules():
        if isinstance(m, MoDBlock):
            inside.update(id(x) for x in m.modules())
    if not inside:
        raise ModifyError("freeze_unconverted=True but the model has no MoD block; convert it first or drop the freezing.")
    frozen = [m for m in model.modules() if id(m) not in inside]
    for m in frozen:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return frozen


# -- the loop ------------------------------------------------------------------------------------


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _precision(config: FinetuneConfig, device: torch.device) -> str:
    p = config.precision
    if p is Precision.AUTO:
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p is Precision.FP16 and device.type != "cuda":
        raise ModifyError(f"precision='fp16' needs a CUDA device, not {device}; use 'bf16' or 'off' on CPU.")
    return {Precision.OFF: "fp32", Precision.BF16: "bf16", Precision.FP16: "fp16"}[p]


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _plain_python_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    except ImportError:
        pass
    return state


def _plain_python_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        try:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        except ImportError:
            pass


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


@dataclasses.dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this call started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_hint: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owned = True
    return _Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), owned=owned)


def _pick_device(config: FinetuneConfig, d: _Dist) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _shard(train_data: Iterable[Any], d: _Dist, seed: int) -> Iterable[Any]:
    """This process's share of the data: a DataLoader re-sampled with a DistributedSampler; any
    other iterable by taking every world-th batch."""
    if d.world <= 1:
        return train_data
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if isinstance(train_data, DataLoader):
        if isinstance(train_data.sampler, DistributedSampler):
            return train_data
        sampler = DistributedSampler(
            train_data.dataset, num_replicas=d.world, rank=d.rank,
            shuffle=isinstance(train_data.sampler, RandomSampler), seed=seed, drop_last=train_data.drop_last,
        )  # fmt: skip
        return DataLoader(
            train_data.dataset, batch_size=train_data.batch_size, sampler=sampler, num_workers=train_data.num_workers,
            collate_fn=train_data.collate_fn, pin_memory=train_data.pin_memory, drop_last=train_data.drop_last,
            persistent_workers=train_data.persistent_workers if train_data.num_workers > 0 else False,
        )  # fmt: skip
    return _EveryNth(train_data, d.world, d.rank)


class _EveryNth:
    def __init__(self, data: Iterable[Any], n: int, offset: int) -> None:
        self.data, self.n, self.offset = data, n, offset

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            if i % self.n == self.offset:
                yield batch

    def __len__(self) -> int:
        total = len(self.data)  # type: ignore[arg-type]
        return (total - self.offset + self.n - 1) // self.n


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 else decay).append(p)  # norms, biases and scalars: no decay
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay)
    if not any(g["params"] for g in groups):
        raise ModifyError("the model has no trainable parameter; unfreeze some (freeze_unconverted=False) before fine-tuning.")
    if config.optimizer is Optimizer.ADAMW:
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def _total_steps(data: Iterable[Any], epochs: float | None, steps: int | None) -> tuple[int, int | None]:
    """(total steps, steps per epoch or None)."""
    try:
        per_epoch: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch == 0:
        raise ModifyError("the training data holds no batch; check its size and batch size (drop_last with too few images?).")
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
        raise ModifyError("the training data has no length, so epochs cannot be turned into steps; pass steps= instead.")
    return max(1, int(round(epochs * per_epoch))), per_epoch


def _state_path(checkpoint_dir: str | os.PathLike[str]) -> Path:
    return Path(checkpoint_dir) / STATE_FILE


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModifyError(f"cannot read the fine-tuning state {str(path)!r} ({type(e).__name__}); delete it to start afresh.") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ModifyError(f"{str(path)!r} is not a modify fine-tuning state; delete it or choose another checkpoint_dir.")
    if state.get("version") != STATE_VERSION:
        raise ModifyError(
            f"{str(path)!r} is a fine-tuning state of version {state.get('version')!r}, this modify writes and resumes "
            f"version {STATE_VERSION}; finish the run with the modify that started it, or delete the state to start afresh."
        )
    return state


_SCHEDULE_FIELDS = ("lr", "min_lr", "warmup", "optimizer", "momentum", "weight_decay", "alpha", "temperature", "seed")


def _check_same_run(state: dict[str, Any], config: FinetuneConfig, total_steps: int, path: Path) -> None:
    saved = state["config"]
    for name in _SCHEDULE_FIELDS:
        now = config.as_dict()[name]
        if saved.get(name) != now:
            raise ModifyError(
                f"the state in {str(path)!r} was written with {name}={saved.get(name)!r}, this run has {name}={now!r}; "
                "resume with the same settings, or drop resume to start afresh."
            )
    if state["total_steps"] != total_steps:
        raise ModifyError(
            f"the state in {str(path)!r} plans {state['total_steps']} steps, this run {total_steps}; "
            "resume with the same epochs/steps and data, or drop resume to start afresh."
        )


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
    d = _setup_distributed(config.device)
    try:
        return _run(model, train_data, teacher, config, epochs, steps, eval_data, on_step, checkpoint_dir, checkpoint_every, resume, d, started)
    finally:
        if d.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(
    model: nn.Module,
    train_data: Iterable[Any],
    teacher: nn.Module | None,
    config: FinetuneConfig,
    epochs: float | None,
    steps: int | None,
    eval_data: Iterable[Any] | None,
    on_step: Callable[[StepInfo], None] | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    checkpoint_every: int | None,
    resume: bool,
    d: _Dist,
    started: float,
) -> FinetuneResult:
    device = _pick_device(config, d)
    precision = _precision(config, device)
    data = _shard(train_data, d, config.seed)
    total_steps, per_epoch = _total_steps(data, epochs, steps)
    warmup = config.warmup_steps(total_steps)
    grad_flags = [(p, p.requires_grad) for m in (model, teacher) if m is not None for p in m.parameters()]
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    frozen = freeze_unconverted(model) if config.freeze_unconverted else []

    state_path = _state_path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _read_state(state_path) if resume and state_path is not None and state_path.is_file() else None
    if state is not None:
        _check_same_run(state, config, total_steps, state_path)  # type: ignore[arg-type]
        model.load_state_dict(state["model"])
    else:
        _seed_all(config.seed)  # a fresh run is reproducible whatever the caller's RNG state

    eval_before = evaluate(model, eval_data, device=device, precision=precision) if eval_data is not None and d.main and state is None else None
    if state is not None:
        eval_before = state.get("eval_before")

    net: nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, epoch, position = 0, 0, 0
    losses: list[float] = []
    lrs: list[float] = []
    epoch_rng: dict[str, Any] | None = None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        losses, lrs = list(state["losses"]), list(state["lrs"])
        epoch_rng = state["epoch_rng"]
    resumed_from = step if state is not None else None

    correct = seen = 0
    train_seconds = 0.0
    written: str | None = None

    def save_state() -> None:
        nonlocal written
        if state_path is None or not d.main:
            return
        from modify.io.files import atomic_write

        payload = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "config": config.as_dict(), "total_steps": total_steps,
            "step": step, "epoch": epoch, "position": position, "epoch_rng": epoch_rng, "rng": _rng_state(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "losses": list(losses), "lrs": list(lrs), "eval_before": eval_before,
        }  # fmt: skip
        written = str(atomic_write(state_path, lambda tmp: torch.save(payload, tmp), force=True))

    model.train()
    for m in frozen:
        m.eval()
    single_pass = isinstance(train_data, Iterator)  # a generator: one pass, whatever the epochs
    while step < total_steps:
        if state is not None and epoch_rng is not None:
            _set_rng_state(epoch_rng)  # the order of the interrupted epoch
        else:
            epoch_rng = _rng_state()
            position = 0
        sampler = getattr(data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        iterator = iter(data)
        if state is not None:
            for _ in range(position):  # the batches the interrupted run already used
                if next(iterator, None) is None:
                    break
            _set_rng_state(state["rng"])
            state = None
        tick = time.perf_counter()
        for images, labels in _batches(iterator):
            images = images.to(device, non_blocking=True)  # (N, 3, H, W)
            labels = labels.to(device, non_blocking=True)  # (N,)
            lr = lr_at(step, total_steps=total_steps, base_lr=config.lr, warmup_steps=warmup, min_lr=config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device, precision):
                logits = net(images)  # (N, classes)
                target = None
                if teacher is not None and config.alpha > 0:  # alpha = 0 is plain training: no teacher pass
                    with torch.no_grad():
                        target = teacher(images)  # (N, classes)
                loss = mixed_loss(logits, labels, target, alpha=config.alpha, temperature=config.temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            hits = int((logits.detach().argmax(1) == labels).sum())
            correct += hits
            seen += len(labels)
            step += 1
            position += 1
            losses.append(float(loss.detach()))
            lrs.append(lr)
            now = time.perf_counter()
            train_seconds += now - tick
            if on_step is not None and d.main:
                on_step(StepInfo(
                    step=step, total_steps=total_steps, epoch=epoch, loss=losses[-1], accuracy=hits / len(labels), lr=lr,
                    images_per_second=seen * d.world / max(train_seconds, 1e-9), seconds=now - started,
                ))  # fmt: skip
            if checkpoint_every is not None and step % checkpoint_every == 0 and step < total_steps:
                save_state()
            if step >= total_steps:
                break
            tick = time.perf_counter()
        if step >= total_steps or position == 0 or single_pass:
            break  # done, no data at all, or a one-pass iterable used up
        epoch += 1
        epoch_rng = None
    if checkpoint_every is not None:
        save_state()

    if config.bn_recalibration_batches:
        recalibrate_bn(model, data, config.bn_recalibration_batches, device=device)
        if d.world > 1:  # each process saw its own shard; keep rank 0's statistics everywhere
            import torch.distributed as dist

            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    for buffer in m.buffers(recurse=False):
                        dist.broadcast(buffer, 0)
    model.eval()
    for p, flag in grad_flags:
        p.requires_grad_(flag)
    eval_after = evaluate(model, eval_data, device=device, precision=precision) if eval_data is not None and d.main else None
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return FinetuneResult(
        steps=step,
        total_steps=total_steps,
        epochs=step / per_epoch if per_epoch else float("nan"),
        losses=tuple(losses),
        lrs=tuple(lrs),
        train_accuracy=correct / max(1, seen),
        eval_accuracy_before=eval_before,
        eval_accuracy_after=eval_after,
        images_per_second=seen * d.world / max(train_seconds, 1e-9),
        seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        resumed_from=resumed_from,
        world_size=d.world,
        precision=precision,
        checkpoint=written,
        config=config,
    )
