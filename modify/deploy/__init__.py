"""Deploying a converted model: `optimize` (BatchNorm folded, in-place fusion, channels_last),
`export` (ONNX, checked in ONNX Runtime; torch.export), `aoti` (AOTInductor packages) and
`engines` (where a model is timed: eager, compile, onnxruntime, aoti).

Example:
    >>> from modify.deploy import optimize_for_inference
    >>> import modify
    >>> type(optimize_for_inference(modify.get_model("resnet18_mod").eval())).__name__
    'ResNet'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.deploy.aoti import export_aoti as export_aoti
    from modify.deploy.export import export_onnx as export_onnx, export_program as export_program
    from modify.deploy.optimize import optimize_for_inference as optimize_for_inference

_LAZY = {
    "optimize_for_inference": "modify.deploy.optimize",
    "export_onnx": "modify.deploy.export",
    "export_program": "modify.deploy.export",
    "export_aoti": "modify.deploy.aoti",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
