"""modify: model surgery that turns CNNs into CNN Mixture-of-Depths networks.

The public API; heavy modules load on first use of a name, so ``import modify`` stays cheap.

Example:
    >>> import modify
    >>> model = modify.get_model("resnet50_mod")
    >>> modify.profile_model(model).params
    18105949
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr
from modify._version import __version__ as __version__
from modify.errors import (
    CheckpointError as CheckpointError,
    ConversionError as ConversionError,
    ModifyError as ModifyError,
    NoBlocksError as NoBlocksError,
    RecipeError as RecipeError,
    TraceError as TraceError,
    UnknownModelError as UnknownModelError,
)

if TYPE_CHECKING:
    from modify.benchmark import bench as bench
    from modify.layers import (
        BlockForm as BlockForm,
        ChannelSelector as ChannelSelector,
        Fusion as Fusion,
        FusionSlot as FusionSlot,
        MoDBlock as MoDBlock,
        MoDConfig as MoDConfig,
        SelectionOrder as SelectionOrder,
    )
    from modify.checkpoint import load as load, save as save
    from modify.pipeline import ConversionResult as ConversionResult, convert as convert
    from modify.profiling import profile_model as profile_model
    from modify.recipe import Recipe as Recipe, load_recipe as load_recipe
    from modify.zoo import get_model as get_model, list_models as list_models

# name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "bench": "modify.benchmark",
    "BlockForm": "modify.layers",
    "ChannelSelector": "modify.layers",
    "Fusion": "modify.layers",
    "FusionSlot": "modify.layers",
    "MoDBlock": "modify.layers",
    "MoDConfig": "modify.layers",
    "SelectionOrder": "modify.layers",
    "profile_model": "modify.profiling",
    "convert": "modify.pipeline",
    "ConversionResult": "modify.pipeline",
    "save": "modify.checkpoint",
    "load": "modify.checkpoint",
    "load_recipe": "modify.recipe",
    "Recipe": "modify.recipe",
    "get_model": "modify.zoo",
    "list_models": "modify.zoo",
}

__all__ = sorted(
    [*_LAZY, "__version__", "CheckpointError", "ConversionError", "ModifyError", "NoBlocksError",
     "RecipeError", "TraceError", "UnknownModelError"]
)  # fmt: skip

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
