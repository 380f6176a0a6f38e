"""After a conversion, training: the data sets (`data`: Fashion-MNIST's IDX files, image folders),
the brief fine-tune with distillation (`finetune`: the loop, `config`: its settings, `state`: what
a resumed run reads back), and block-local distillation (`distill`).

Example:
    >>> from modify.train import FinetuneConfig
    >>> FinetuneConfig(lr=0.05).lr
    0.05
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.train.config import FinetuneConfig as FinetuneConfig
    from modify.train.distill import distill_blocks as distill_blocks
    from modify.train.finetune import evaluate as evaluate, finetune as finetune

_LAZY = {
    "FinetuneConfig": "modify.train.config",
    "finetune": "modify.train.finetune",
    "evaluate": "modify.train.finetune",
    "distill_blocks": "modify.train.distill",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
