"""Which parameters a fine-tune trains and how: the optimiser's groups (no weight decay on norms,
biases and scalars; the replaced blocks' own learning-rate scale), and the modules held in eval
mode (everything but the MoD blocks with ``freeze_unconverted``; the reduced blocks' BatchNorms
with ``block_norms="frozen"``).

Example:
    >>> import torch
    >>> groups = param_groups(torch.nn.Linear(3, 2), weight_decay=1e-4)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(1, 0.0001), (1, 0.0)]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modify.errors import ModifyError
from modify.train.config import FinetuneConfig, Optimizer

__all__ = ["freeze_unconverted", "frozen_block_norms", "param_groups", "make_optimizer"]


def freeze_unconverted(model: nn.Module) -> list[nn.Module]:
    """Leaves only the MoD blocks trainable; returns the modules that stay frozen (kept in eval
    mode while training, so their BatchNorm statistics do not move either)."""
    from modify.layers import MoDBlock

    inside: set[int] = set()
    for m in model.modules():
        if isinstance(m, MoDBlock):
            inside.update(id(x) for x in m.modules())
    if not inside:
        raise ModifyError(
            "freeze_unconverted=True but the model has no MoD block; convert it first or drop the freezing."
        )
    frozen = [m for m in model.modules() if id(m) not in inside]
    for m in frozen:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return frozen


def frozen_block_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms inside MoD blocks' reduced blocks (kept in eval mode with ``block_norms="frozen"``)."""
    from modify.layers import MoDBlock

    return [
        bn
        for m in model.modules()
        if isinstance(m, MoDBlock)
        for bn in m.block.modules()
        if isinstance(bn, nn.modules.batchnorm._BatchNorm)
    ]


def param_groups(model: nn.Module, weight_decay: float, block_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Decay and no-decay groups (norms, biases and scalars get none), each with its ``lr_scale``:
    ``block_lr_scale`` for the parameters of replaced blocks, 1 for the rest."""
    from modify.conversion.init import replaced_blocks

    in_blocks = {id(p) for *_, b in replaced_blocks(model) for p in b.parameters()} if block_lr_scale != 1.0 else set()
    parts = [(1.0, [p for p in model.parameters() if id(p) not in in_blocks])]
    if in_blocks:
        parts.append((block_lr_scale, [p for p in model.parameters() if id(p) in in_blocks]))
    groups = []
    for scale, params in parts:
        trainable = [p for p in params if p.requires_grad]
        no_decay = [p for p in trainable if p.dim() <= 1]
        groups.append(
            {"params": [p for p in trainable if p.dim() > 1], "weight_decay": weight_decay, "lr_scale": scale}
        )
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": scale})
    return groups


def make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay, config.block_lr_scale)
    if not any(g["params"] for g in groups):
        raise ModifyError(
            "the model has no trainable parameter; unfreeze some (freeze_unconverted=False) before fine-tuning."
        )
    if config.optimizer is Optimizer.ADAMW:
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
