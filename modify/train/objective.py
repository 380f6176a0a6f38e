"""What fine-tuning minimises and how fast: the loss, ``alpha * KD + (1 - alpha) * CE`` with KD
the KL divergence between the teacher's and the student's softened distributions at temperature
T, times T^2 (Hinton et al. 2015, so its gradients keep their size across temperatures), and the
learning rate of each step, a pure function: linear warm-up, then cosine decay.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = ["lr_at", "distillation_loss", "mixed_loss"]


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
        >>> import torch
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(distillation_loss(z, z, 2.0))
        0.0
    """
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=1)  # (N, classes)
    log_q = F.log_softmax(teacher.float() / t, dim=1)  # (N, classes)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def mixed_loss(
    logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, *, alpha: float, temperature: float
) -> Tensor:
    """``alpha * distillation_loss + (1 - alpha) * cross_entropy``; plain cross-entropy without a teacher.

    Example:
        >>> import torch
        >>> z, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> float(mixed_loss(z, y, None, alpha=0.5, temperature=4.0)) == float(F.cross_entropy(z, y))
        True
    """
    ce = F.cross_entropy(logits.float(), labels)
    if teacher_logits is None:
        return ce
    return alpha * distillation_loss(logits, teacher_logits, temperature) + (1 - alpha) * ce
