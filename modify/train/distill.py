"""Block-local distillation: each MoD block (and each narrowed block) learns to reproduce the
block it replaced.

Before the global fine-tune, every MoD block is trained on its own to map the inputs the
original block saw to the outputs the original block produced, both recorded from the original
model on a few training batches (no labels). Each block sees the original network's
activations, so the blocks train independently and in seconds; the global fine-tune then only
has to mend what the blocks cannot reproduce.

Example:
    >>> import torch, torchvision, modify
    >>> net = torchvision.models.resnet18(num_classes=10).eval()
    >>> result = modify.convert(net, k=0.25, input_size=32)
    >>> report = distill_blocks(result, net, [torch.randn(8, 3, 32, 32)], steps=3)
    >>> [b.module for b in report.blocks][:2], report.blocks[0].loss_after <= report.blocks[0].loss_before * 1.5
    (['layer1.1', 'layer2.1'], True)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modify.conversion.init import replaced_blocks, set_to_deletion
from modify.errors import ModifyError
from modify.layers import FusionSlot, MoDBlock
from modify.train.evaluation import recalibrate_bn

__all__ = ["BlockFit", "DistillReport", "distill_blocks", "record_blocks"]


@dataclasses.dataclass(frozen=True)
class BlockFit:
    """How well one MoD block reproduces its original block (mean squared error per element)."""

    module: str  # where the MoD block lives in the converted model
    name: str  # the block it replaced, in the original model
    loss_deleted: float  # the error of the block's shortcut alone (what deleting it would give)
    loss_before: float  # the MoD block's error before block-local training
    loss_after: float  # and after it (= loss_before when the training did not help and was undone)
    kept: bool = True  # False: the trained weights fitted worse and the block was restored
    at_deletion: bool = False  # it still fitted worse than its deletion, so it was set to exactly that (a zero update)


@dataclasses.dataclass(frozen=True)
class DistillReport:
    """What `distill_blocks` did."""

    blocks: tuple[BlockFit, ...]
    images: int  # images whose activations were recorded
    steps: int  # optimisation steps per block
    seconds: float


def _param_groups(block: nn.Module, lr: float, selector_lr_scale: float) -> list[dict[str, Any]]:
    """One group of the block's trainable parameters, or, with a selector learning rate of its own,
    the selector's (at ``lr * selector_lr_scale``; none when 0) and the rest."""
    params = [p for p in block.parameters() if p.requires_grad]
    if selector_lr_scale == 1.0 or not isinstance(block, MoDBlock):
        return [{"params": params}]
    chosen = {id(p) for p in block.selector.parameters()}
    groups = [{"params": [p for p in params if id(p) not in chosen]}]
    if selector_lr_scale > 0:
        groups.append({"params": [p for p in params if id(p) in chosen], "lr": lr * selector_lr_scale})
    return groups


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def record_blocks(
    original: nn.Module, names: list[str], data: Iterable[Any], images: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """(inputs, outputs) of the named modules of ``original`` over the first ``images`` images
    of ``data``, in eval mode."""
    modules = dict(original.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ModifyError(
            f"block-local distillation: the original model has no module {missing[0]!r}; blocks written inline "
            "have no module to record, so distil only models whose blocks are modules."
        )
    seen: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in names}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            seen[name][0].append(args[0].detach().clone())  # the block input (N, C, H, W)
            seen[name][1].append(out.detach().clone())  # its output (N, C, H, W)

        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    was_training = original.training
    original.eval()
    try:
        seen_images = 0
        for batch in data:
            if seen_images >= images:
                break
            x = _images(batch)[: images - seen_images]
            original(x)
            seen_images += len(x)
    finally:
        for h in hooks:
            h.remove()
        original.train(was_training)
    return {n: (torch.cat(ins), torch.cat(outs)) for n, (ins, outs) in seen.items()}


def _error(block: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    # Clones: without autograd a MoD block set for in-place fusion adds into its input.
    with torch.no_grad():
        total = sum(
            F.mse_loss(block(x[i : i + batch].clone()), y[i : i + batch], reduction="sum").item()
            for i in range(0, len(x), batch)
        )
    return total / y.numel()


def _routing_loss(block: MoDBlock, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy between the selector's scores and the k channels the original block changes
    most for each image: with fusion into the selected positions, updating those k loses the least
    of the block's update (unselected channels keep their input)."""
    change = (y - x).pow(2).sum((2, 3))  # (B, C) energy of the block's update per channel
    target = torch.zeros_like(change).scatter_(1, change.topk(block.k, dim=1).indices, 1.0)  # (B, C) 0/1
    scores = block.selector.scores(x).clamp(1e-6, 1 - 1e-6)  # (B, C) in (0, 1)
    return F.binary_cross_entropy(scores, target)


def _recalibrate(block: nn.Module, x: Tensor, batch: int) -> None:
    """Re-estimates the block's BatchNorm statistics on the recorded inputs: the running averages
    left by training lag behind the weights they were computed with."""
    # Copies: without autograd a MoD block set for in-place fusion adds into its input.
    chunks = [(x[i : i + batch].clone(), None) for i in range(0, len(x), batch)]
    recalibrate_bn(block, chunks, len(chunks))


def distill_blocks(
    result_or_model: Any,
    original: nn.Module,
    data: Iterable[Any],
    *,
    images: int = 2048,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 64,
    route_weight: float = 0.0,
    selector_lr_scale: float = 1.0,
    seed: int = 0,
) -> DistillReport:
    """Trains every MoD block and narrowed block of a converted model, in place, to reproduce
    its original block.

    Args:
        result_or_model: a `ConversionResult` (or its ``.model`` when the blocks keep their names).
        original: the model that was converted; read, never changed.
        data: image batches, or (images, labels) batches; labels are not used.
        images: how many images of ``data`` to record activations of. Memory: every MoD
            block's input and output for each, 2 x 4 bytes x C x H x W per image and block (at
            32x32 inputs a ResNet-18 needs about 130 MB for 2048 images; at 224x224, 50 times more).
        steps: AdamW steps per block on the recorded activations.
        lr: AdamW's learning rate (cosine decay to zero).
        batch_size: images per step.
        route_weight: for blocks that fuse into the selected channels' own positions
            (``fusion: original``), the weight of a loss that teaches the selector to pick, per
            image, the k channels the original block changes most (0: output error alone).
        selector_lr_scale: the selectors' learning rate as a share of ``lr`` (0: frozen). At 1,
            AdamW moves a selector weight by up to ``lr`` a step, far beyond its fresh scale
            (1 / sqrt(C)), and the hidden units can die: on the converged ResNet-18's layer1.0
            at k = C/2 every unit is dead after it, and the block feeds one fixed channel set to
            every image (benchmarks/selector_fate.py).
        seed: seeds the sampling of the recorded activations.

    Returns:
        A `DistillReport` with each block's error as deleted, before and after. A block whose
        error grew is put back as it was (``kept=False``); one that then still fits worse than its
        deletion is set to exactly its deletion where a zero update makes it so (the ``branch``
        form, a narrowed block: ``at_deletion=True``), so distillation never leaves a block below
        deleting it.
    """
    started = time.perf_counter()
    blocks = replaced_blocks(result_or_model)
    if not blocks:
        raise ModifyError("block-local distillation found no MoD or narrowed block in the model; convert it first.")
    recorded = record_blocks(original, [name for _, name, _ in blocks], data, images)
    generator = torch.Generator().manual_seed(seed)
    fits = []
    for path, name, block in blocks:
        x, y = recorded[name]  # (M, C, H, W) each: the original block's input and output
        was_training = block.training
        deleted = float(F.mse_loss(x, y).item()) if x.shape == y.shape else float("nan")
        before = _error(block.eval(), x, y, batch_size)
        start = copy.deepcopy(block.state_dict())
        optimizer = torch.optim.AdamW(_param_groups(block, lr, selector_lr_scale), lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        block.train()
        routed = route_weight > 0 and isinstance(block, MoDBlock) and block.fusion.slot is FusionSlot.ORIGINAL
        for _ in range(steps):
            pick = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
            xb, yb = x[pick], y[pick]  # (B, C, H, W)
            loss = F.mse_loss(block(xb), yb)
            if routed:
                loss = loss + route_weight * _routing_loss(block, xb, yb)
            block.zero_grad(set_to_none=True)  # the selector too where it is not optimised
            loss.backward()
            optimizer.step()
            schedule.step()
        _recalibrate(block, x, batch_size)
        after = _error(block.eval(), x, y, batch_size)
        kept = after <= before
        if not kept:
            block.load_state_dict(start)
            after = before
        at_deletion = False
        if after > deleted and set_to_deletion(block) is not None:  # never worse than deleting the block
            after, at_deletion = _error(block.eval(), x, y, batch_size), True
        block.train(was_training)
        fits.append(BlockFit(path, name, deleted, before, after, kept, at_deletion))
    return DistillReport(
        tuple(fits), images=len(next(iter(recorded.values()))[0]), steps=steps, seconds=time.perf_counter() - started
    )
