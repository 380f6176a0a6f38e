"""The settings of a fine-tuning run (`FinetuneConfig`), what it reports after every step
(`StepInfo`) and at the end (`FinetuneResult`).

Example:
    >>> FinetuneConfig(lr=0.05, optimizer="adamw").optimizer
    <Optimizer.ADAMW: 'adamw'>
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modify.errors import ModifyError
from modify.layers.options import StrChoice

__all__ = ["Optimizer", "Precision", "FinetuneConfig", "StepInfo", "FinetuneResult"]


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
    # Max global gradient norm (None: no clipping). A converged model meets a few inputs with logits
    # in the hundreds; with a replaced block early in the network one such batch sent the gradient
    # norm from about 1 to 219 and left a ResNet-18 at 81.7% instead of 91.4% after half an epoch
    # (benchmarks/results/mod_middle_r18). Clipping at 5 leaves ordinary steps untouched.
    grad_clip: float | None = 5.0
    freeze_unconverted: bool = False  # train only the MoD blocks; the rest stays bit-identical
    block_lr_scale: float = 1.0  # learning rate of the replaced blocks' parameters (MoD, narrowed) / the rest's
    block_norms: str = (
        "train"  # BatchNorms inside MoD blocks: "train" (batch statistics) or "frozen" (running ones, fixed)
    )
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
            (
                self.bn_recalibration_batches >= 0,
                f"bn_recalibration_batches={self.bn_recalibration_batches} must be >= 0",
            ),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip={self.grad_clip} must be positive or None"),
            (self.block_lr_scale > 0, f"block_lr_scale={self.block_lr_scale} must be positive"),
            (self.block_norms in ("train", "frozen"), f"block_norms={self.block_norms!r} must be 'train' or 'frozen'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModifyError(f"FinetuneConfig: {message}.")

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup * total_steps)) if self.warmup < 1 else int(self.warmup)

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: (v.value if isinstance(v := getattr(self, f.name), StrChoice) else v)
            for f in dataclasses.fields(self)
        }


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
