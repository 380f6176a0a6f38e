"""Measuring a model: MACs and parameters (`profiling`, the only user of fvcore), latency
(`latency`: per block; `benchmark`: two models interleaved), the conversion's block report
(`report`), which channels the selectors pick (`routes`), and the PNGs (`plots`). The
comparison with the alternatives is a study: `modify.study`.

Example:
    >>> from modify.measure import profile_model
    >>> import torchvision
    >>> profile_model(torchvision.models.resnet18(weights=None), input_size=32).params
    11689512
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.measure.benchmark import bench as bench
    from modify.measure.profiling import profile_model as profile_model

_LAZY = {"bench": "modify.measure.benchmark", "profile_model": "modify.measure.profiling"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
