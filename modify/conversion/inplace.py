"""Which MoD blocks may add their k channels into their input tensor itself at inference (in-place
fusion, `enable_inplace_fusion`): only where the block is its input's one reader, found from the
fx graph. `modify.convert` and `modify.get_model` apply it; `modify.deploy.optimize` too.

Example:
    >>> import modify
    >>> model = modify.get_model("resnet18_mod")
    >>> model.layer1[1].fusion.inplace
    True
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Collection

import torch
from torch import fx, nn

from modify.conversion.graph import module_calls
from modify.conversion.tracing import LeafSpec, ModifyTracer
from modify.layers import MoDBlock

__all__ = ["enable_inplace_fusion"]


# Ops whose output may be (a view of) their input: a MoD block reading their output shares its
# storage with their input, so in-place fusion is safe only if that input is unshared too.
_VIEW_METHODS = frozenset(
    {
        "view",
        "view_as",
        "reshape",
        "reshape_as",
        "flatten",
        "unflatten",
        "permute",
        "transpose",
        "t",
        "contiguous",
        "expand",
        "expand_as",
        "squeeze",
        "unsqueeze",
        "narrow",
        "chunk",
        "split",
        "unbind",
        "select",
        "as_strided",
        "detach",
        "to",
        "type",
        "float",
        "__getitem__",
    }
)
_VIEW_FUNCTIONS = frozenset(
    {
        operator.getitem,
        torch.flatten,
        torch.reshape,
        torch.narrow,
        torch.squeeze,
        torch.unsqueeze,
        torch.permute,
        torch.transpose,
        torch.t,
        torch.chunk,
        torch.split,
        torch.unbind,
        torch.select,
        torch.detach,
        nn.functional.dropout,
        nn.functional.dropout2d,
        nn.functional.dropout3d,
        nn.functional.alpha_dropout,
        nn.functional.feature_alpha_dropout,
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.itruediv,
        operator.ifloordiv,
        operator.imod,
        operator.ipow,
        operator.iand,
        operator.ior,
        operator.ixor,
        operator.ilshift,
        operator.irshift,
    }
)
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd, MoDBlock)


def _may_alias_input(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node``'s output may share storage with its first input."""
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        known = type(module).__module__.startswith("torch.nn.") and not isinstance(module, _VIEW_MODULES)
        return not known or bool(getattr(module, "inplace", False))  # user leaves: unknown, so assume so
    if node.op == "call_method":
        return node.target in _VIEW_METHODS or node.target.endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _VIEW_FUNCTIONS or name.endswith("_") or _inplace_argument(node)
    return True


def _inplace_argument(node: fx.Node) -> bool:
    """Whether a call passes ``inplace=True``, by keyword or by position (``F.relu(x, True)``)."""
    if node.kwargs.get("inplace", False):
        return True
    try:
        bound = inspect.signature(node.target).bind_partial(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or arguments that do not bind
        return False
    return bool(bound.arguments.get("inplace", False))


def _owned(node: fx.Node, model: nn.Module) -> bool:
    """Whether the tensor ``node`` makes is read by its one user alone, through every alias."""
    while True:
        if len(node.users) != 1 or node.op not in ("call_module", "call_method", "call_function"):
            return False  # another reader, or the caller's input, a parameter or a buffer
        if not _may_alias_input(node, model):
            return True
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node):
            return False
        node = source


def enable_inplace_fusion(model: nn.Module, *, leaf_modules: Collection[LeafSpec] = ()) -> list[str]:
    """Lets each MoD block fuse into its input in place at inference where that is safe.

    A block may add its k processed channels into its input tensor itself (with gradients off;
    see `Fusion`) when nothing else reads that tensor: not the caller (a model input), not a
    parameter, not another layer, and not through a view or an in-place layer. The answer comes
    from the model's torch.fx graph; where the model does not trace, every block stays out of
    place. `modify.convert` and `modify.get_model` call this, so converted models are fast as
    they come. Call it again after changing the model's forward, and set
    ``block.fusion.inplace = False`` before reading a block's input with hooks.

    Args:
        model: a model holding MoD blocks.
        leaf_modules: modules torch.fx should not trace into, as for `modify.convert`.

    Returns:
        The names of the blocks that fuse in place.

    Example:
        >>> import modify
        >>> model = modify.get_model("resnet18_mod")
        >>> enable_inplace_fusion(model)
        ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, MoDBlock)}
    for block in blocks.values():
        block.fusion.inplace = False
    if not blocks:
        return []
    try:
        graph = ModifyTracer(leaf_modules).trace(model)
    except Exception:
        return []
    calls = module_calls(graph)
    enabled = []
    for node in graph.nodes:
        if node.op == "call_module" and node.target in blocks and node.args and isinstance(node.args[0], fx.Node):
            if _owned(node.args[0], model) and calls[node.target] == 1:
                blocks[node.target].fusion.inplace = True
                enabled.append(node.target)
    return enabled
