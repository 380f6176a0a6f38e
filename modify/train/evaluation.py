"""Measuring during and after fine-tuning: top-1 accuracy (`evaluate`), BatchNorm statistics
re-estimated on data (`recalibrate_bn`), and the (images, labels) batches both read.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> evaluate(net, [(torch.zeros(3, 4), torch.tensor([0, 0, 0]))]) in (0.0, 1.0)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from modify.errors import ModifyError
from modify.module_state import kept_modes

__all__ = ["evaluate", "recalibrate_bn", "compare_outputs", "labelled_batches", "autocast_for"]


def labelled_batches(data: Iterable[Any], limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) of each of the first ``limit`` batches of ``data``; a batch that is no such pair is an error."""
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ModifyError(f"a data batch is a {type(batch).__name__}; expected (images, labels) pairs.")
        yield batch[0], batch[1]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on ``device`` for "bf16" or "fp16"; nothing for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def recalibrate_bn(
    model: nn.Module, data: Iterable[Any], batches: int, *, device: torch.device | str | None = None
) -> int:
    """Re-estimates every BatchNorm's running statistics from ``batches`` batches of ``data``.

    The statistics are reset and accumulated as a cumulative average (``momentum=None``) in
    training mode without gradients; parameters are not touched and each module's mode and
    momentum are restored. Norms whose statistics are fixed by design (``fixed_statistics``, as
    `modify.layers.ChannelNorm2d`) are left as they are. Returns the number of batches used.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and not getattr(m, "fixed_statistics", False)
    ]
    if not norms or batches <= 0:
        return 0
    momenta = {m: m.momentum for m in norms}
    device = torch.device(device) if device is not None else _device_of(model)
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        with kept_modes(model), torch.no_grad():
            model.train()
            for images, _ in labelled_batches(data, batches):
                model(images.to(device, non_blocking=True))
                used += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
    return used


def evaluate(
    model: nn.Module, data: Iterable[Any], *, device: torch.device | str | None = None, precision: str = "fp32"
) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``data``, in eval mode without gradients."""
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad(), autocast_for(device, precision):
            for images, labels in labelled_batches(data):
                logits = model(images.to(device, non_blocking=True))
                correct += int((logits.argmax(1) == labels.to(device)).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    return correct / max(1, total)


def compare_outputs(
    model: nn.Module, reference: nn.Module, data: Iterable[Any], *, device: torch.device | str | None = None
) -> dict[str, float]:
    """``model`` against ``reference`` (its teacher, the original) on ``data``, in eval mode:
    top-1 ``accuracy``, the labels' negative log-likelihood ``nll``, the mean KL divergence
    ``kl`` from the reference's output distribution to the model's, and top-1 ``agreement``.

    Accuracy moves in steps of one image; NLL and KL move with every probability, so they separate
    models whose accuracies tie within the seed spread.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    modes = (model.training, reference.training)
    model.eval()
    reference.eval()
    sums = {"accuracy": 0.0, "nll": 0.0, "kl": 0.0, "agreement": 0.0}
    total = 0
    try:
        with torch.no_grad():
            for images, labels in labelled_batches(data):
                images, labels = images.to(device, non_blocking=True), labels.to(device)
                mine = torch.log_softmax(model(images).float(), dim=1)  # (N, classes)
                theirs = torch.log_softmax(reference(images).float(), dim=1)  # (N, classes)
                sums["accuracy"] += float((mine.argmax(1) == labels).sum())
                sums["nll"] += float(torch.nn.functional.nll_loss(mine, labels, reduction="sum"))
                sums["kl"] += float((theirs.exp() * (theirs - mine)).sum())
                sums["agreement"] += float((mine.argmax(1) == theirs.argmax(1)).sum())
                total += len(labels)
    finally:
        model.train(modes[0])
        reference.train(modes[1])
    return {k: v / max(1, total) for k, v in sums.items()}
