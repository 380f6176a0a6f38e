"""modify: model surgery that turns CNNs into CNN Mixture-of-Depths networks.

The public API; heavy modules load on first use of a name, so ``import modify`` stays cheap.

Example:
    >>> import modify
    >>> model = modify.get_model("resnet50_mod")
    >>> modify.profile_model(model).params
    18105949

The front door for a trained model: ``modify.plan(model, speedup=1.5, data=train_set)`` chooses per
block among keep, delete, MoD and narrow for a speed-up measured on this machine, and returns a
version-2 recipe that ``modify.convert(model, recipe=result.recipe)`` applies.
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
    PlanError as PlanError,
    RecipeError as RecipeError,
    TraceError as TraceError,
    UnknownModelError as UnknownModelError,
)

if TYPE_CHECKING:
    from modify.conversion.pipeline import ConversionResult as ConversionResult, convert as convert
    from modify.conversion.recipe import Recipe as Recipe, load_recipe as load_recipe
    from modify.io.checkpoint import load as load, save as save
    from modify.layers import (
        BlockForm as BlockForm,
        ChannelSelector as ChannelSelector,
        Fusion as Fusion,
        FusionSlot as FusionSlot,
        Init as Init,
        MoDBlock as MoDBlock,
        MoDConfig as MoDConfig,
        SelectionOrder as SelectionOrder,
    )
    from modify.measure.benchmark import bench as bench
    from modify.measure.profiling import profile_model as profile_model
    from modify.models import get_model as get_model, list_models as list_models
    from modify.study.latency import Setting as Setting
    from modify.study.planner import PlanConfig as PlanConfig, PlanResult as PlanResult, plan as plan

# name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "bench": "modify.measure.benchmark",
    "BlockForm": "modify.layers",
    "ChannelSelector": "modify.layers",
    "Fusion": "modify.layers",
    "FusionSlot": "modify.layers",
    "Init": "modify.layers",
    "MoDBlock": "modify.layers",
    "MoDConfig": "modify.layers",
    "SelectionOrder": "modify.layers",
    "profile_model": "modify.measure.profiling",
    "convert": "modify.conversion.pipeline",
    "ConversionResult": "modify.conversion.pipeline",
    "save": "modify.io.checkpoint",
    "load": "modify.io.checkpoint",
    "load_recipe": "modify.conversion.recipe",
    "Recipe": "modify.conversion.recipe",
    "get_model": "modify.models",
    "list_models": "modify.models",
    "plan": "modify.study.planner",
    "PlanConfig": "modify.study.planner",
    "PlanResult": "modify.study.planner",
    "Setting": "modify.study.latency",
}

__all__ = sorted(
    [
        *_LAZY,
        "__version__",
        "CheckpointError",
        "ConversionError",
        "ModifyError",
        "NoBlocksError",
        "PlanError",
        "RecipeError",
        "TraceError",
        "UnknownModelError",
    ]
)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
