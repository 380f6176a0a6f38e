"""What a user would do instead of converting: the baselines every conversion is judged against.

- `delete_blocks`: the planned residual blocks replaced by their shortcut (depth pruning), chosen
  by the same recipes as a conversion.
- `prune_channels`: static channel pruning with Torch-Pruning's DepGraph pruner (the
  ``[baselines]`` extra), to a MAC ratio or to a measured speed-up.

Both return models that `modify.save` / `modify.load`, `modify.profile_model`, `modify.bench` and
`modify.train.finetune.finetune` take like a converted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.baselines.delete import (
        DeletionResult as DeletionResult,
        Shortcut as Shortcut,
        delete_blocks as delete_blocks,
    )
    from modify.baselines.prune import PruningResult as PruningResult, prune_channels as prune_channels

_LAZY = {
    "DeletionResult": "modify.baselines.delete",
    "Shortcut": "modify.baselines.delete",
    "delete_blocks": "modify.baselines.delete",
    "PruningResult": "modify.baselines.prune",
    "prune_channels": "modify.baselines.prune",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
