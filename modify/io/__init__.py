"""Models in and out: names and import paths (`names`: torchvision, timm:NAME, the paper's
architectures), checkpoints (`checkpoint`: save / load without pickled modules), a user's
weights files (`weights`), and atomic writes with the user's umask (`files`).

Example:
    >>> from modify.io import get_model
    >>> get_model("resnet18", num_classes=10).fc.out_features
    10
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modify._lazy import lazy_getattr

if TYPE_CHECKING:
    from modify.io.checkpoint import load as load, save as save
    from modify.io.files import atomic_write as atomic_write, check_output_path as check_output_path
    from modify.io.names import get_model as get_model, list_models as list_models
    from modify.io.resolve import resolve_model as resolve_model
    from modify.io.weights import load_state_dict_file as load_state_dict_file

_LAZY = {
    "get_model": "modify.io.names",
    "list_models": "modify.io.names",
    "resolve_model": "modify.io.resolve",
    "save": "modify.io.checkpoint",
    "load": "modify.io.checkpoint",
    "load_state_dict_file": "modify.io.weights",
    "atomic_write": "modify.io.files",
    "check_output_path": "modify.io.files",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
