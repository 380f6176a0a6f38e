"""Cutting a block's subgraph out of the traced model as a module of its own.

The copy renames what it uses relative to the block ("layer1.1.conv1" -> "conv1") and rebuilds
the calls whose ``training`` flag tracing froze (functional dropout and stochastic depth, the
batch norm of a traced-through BatchNorm subclass) as modules that follow the block's mode.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks, locate
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> g = locate(gm, find_blocks(gm)[1])
    >>> [name for name, _ in cut(gm, g.fork, g.branch, g.branch_operand).named_children()]
    ['conv1', 'bn1', 'relu', 'conv2', 'bn2']
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.conversion.graph import shape_of
from modify.conversion.tracing import BATCHNORM_META
from modify.errors import SurgeryError

__all__ = ["cut", "get_attribute", "set_attribute"]


def _local_names(targets: list[str]) -> dict[str, str]:
    """Module paths inside a block -> flat names in its copy ("layer1.1.conv1" -> "conv1")."""
    prefix = ""
    if len(targets) > 1:
        common = os.path.commonprefix([t.split(".") for t in targets])
        prefix = ".".join(common)
    elif targets:
        prefix = targets[0].rpartition(".")[0]
    names: dict[str, str] = {}
    for t in targets:
        local = t[len(prefix) + 1 :] if prefix and t.startswith(prefix + ".") else t
        names[t] = local.replace(".", "_")
    return names


def _stochastic_depth() -> tuple[Callable[..., Any] | None, type[nn.Module] | None]:
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth

        return stochastic_depth, StochasticDepth
    except ImportError:  # pragma: no cover
        return None, None


# F.<dropout>(input, p=0.5, training=..., inplace=False) -> the module that reads self.training.
_DROPOUTS: dict[Callable[..., Any], type[nn.Module]] = {
    F.dropout: nn.Dropout,
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
    F.feature_alpha_dropout: nn.FeatureAlphaDropout,
}


def _bound(fn: Callable[..., Any], node: fx.Node) -> dict[str, Any] | None:
    try:
        return dict(inspect.signature(fn).bind(*node.args, **node.kwargs).arguments)
    except (TypeError, ValueError):
        return None


def _mode_module(node: fx.Node) -> nn.Module | None:
    """The module equivalent of a functional call whose ``training`` flag tracing froze."""
    stochastic_depth, StochasticDepth = _stochastic_depth()
    if node.op != "call_function":
        return None
    if stochastic_depth is not None and node.target is stochastic_depth:
        args = _bound(stochastic_depth, node)
        if args is not None and all(not isinstance(args.get(k), fx.Node) for k in ("p", "mode")):
            return StochasticDepth(float(args["p"]), str(args["mode"]))
    module_type = _DROPOUTS.get(node.target)  # type: ignore[arg-type]
    if module_type is not None:
        args = _bound(node.target, node)  # type: ignore[arg-type]
        if (
            args is not None
            and "training" in args
            and not any(isinstance(v, fx.Node) for k, v in args.items() if k != "input")
        ):
            return module_type(float(args.get("p", 0.5)), inplace=bool(args.get("inplace", False)))
    return None


_BATCHNORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batchnorm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """A BatchNorm module for an ``F.batch_norm`` call of a traced-through BatchNorm subclass
    (timm's BatchNormAct2d): tracing froze its ``training`` flag and momentum, the module reads
    ``self.training`` again. Its state is copied from the call's parameters and buffers."""
    settings = node.meta.get(BATCHNORM_META)
    args = _bound(F.batch_norm, node) if settings is not None else None
    shape = shape_of(node)
    if args is None or shape is None or len(shape) not in _BATCHNORMS:
        return None
    tensors = {k: args.get(k) for k in ("running_mean", "running_var", "weight", "bias")}
    if not all(isinstance(t, fx.Node) and t.op == "get_attr" for k, t in tensors.items() if k.startswith("running")):
        return None
    if any(isinstance(t, fx.Node) and t.op != "get_attr" for t in tensors.values()):
        return None  # a computed weight: leave the call as traced
    values = {k: get_attribute(gm, str(t.target)) for k, t in tensors.items() if isinstance(t, fx.Node)}
    mean = values["running_mean"]
    bn = _BATCHNORMS[len(shape)](
        mean.numel(),
        eps=float(args.get("eps", 1e-5)),
        momentum=settings["momentum"],
        affine=values.get("weight") is not None,
        track_running_stats=True,
        device=mean.device,
        dtype=mean.dtype,
    )
    with torch.no_grad():
        for key, value in values.items():
            getattr(bn, key).copy_(value)
    return bn


def cut(
    gm: fx.GraphModule, start: fx.Node, nodes: tuple[fx.Node, ...], end: fx.Node, *, name: str = "Branch"
) -> fx.GraphModule:
    """The subgraph ``nodes`` as a module of its own, ``start`` becoming its input and ``end``
    its output. Modules and parameters it uses are deep-copied, so the original stays untouched,
    and renamed relative to the block ("layer1.1.conv1" -> "conv1"). Node metadata (shapes) is
    kept, and functional stochastic depth / dropout, and the batch norm of a traced-through
    BatchNorm subclass, become modules that follow the block's mode.
    """
    graph = fx.Graph()
    placeholder = graph.placeholder("x")
    placeholder.meta = dict(start.meta)  # the input's shape, which `shrink` scales
    env: dict[fx.Node, fx.Node] = {start: placeholder}
    as_modules = {n: m for n in nodes if (m := _mode_module(n) or _batchnorm_module(gm, n)) is not None}
    copied = [n for n in nodes if n not in as_modules]  # a call rebuilt as a module brings its own state
    attrs = sorted(
        {n.target for n in copied if n.op == "call_module"}
        | {a.target for n in copied for a in n.all_input_nodes if a.op == "get_attr"}
    )
    local = _local_names(attrs)
    root = nn.Module()
    for target, local_name in local.items():
        value = gm.get_submodule(target) if _is_module(gm, target) else get_attribute(gm, target)
        set_attribute(root, local_name, copy.deepcopy(value))

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise SurgeryError(f"the branch reads {n.name!r} from outside the block")
            env[n] = graph.get_attr(local[n.target])  # a parameter the branch uses (ConvNeXt's layer scale)
            env[n].meta = dict(n.meta)
        return env[n]

    used = set(local.values())
    for node in nodes:
        module = as_modules.get(node)
        if module is not None:
            mode_name = _fresh(f"{node.name}_mode", used)
            root.add_module(mode_name, module)
            new = graph.call_module(mode_name, (arg(node.args[0]) if node.args else arg(node.kwargs["input"]),))
            new.meta = dict(node.meta)
        else:
            new = graph.node_copy(node, arg)
            if node.op == "call_module":
                new.target = local[node.target]
        env[node] = new
    graph.output(env[end])
    return fx.GraphModule(root, graph, class_name=name)


def _fresh(name: str, used: set[str]) -> str:
    candidate, i = name, 1
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def _is_module(root: nn.Module, target: str) -> bool:
    try:
        root.get_submodule(target)
        return True
    except AttributeError:
        return False


def get_attribute(root: nn.Module, target: str) -> Any:
    """What an fx ``get_attr`` node with this dotted ``target`` reads: a parameter, buffer or tensor."""
    owner, _, leaf = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, leaf)


def set_attribute(root: nn.Module, target: str, value: nn.Module | nn.Parameter | torch.Tensor) -> None:
    """Puts ``value`` where a ``get_attr`` or ``call_module`` node with this dotted ``target`` finds it."""
    parent, _, leaf = target.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    if isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    elif isinstance(value, nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.register_buffer(leaf, value)
