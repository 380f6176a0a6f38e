"""Building the width-k copy of a residual block, layer by layer.

A discovered block is cut out of the traced graph (its residual branch, and the element-wise
operations that follow its skip-add), copied, and every channel dimension in it is scaled by
k / C: the block's own width C becomes k, an inner width d becomes max(1, round(d * k / C)). So
a ResNet Bottleneck 256 -> 64 -> 256 at k = 4 becomes 4 -> 1 -> 4 (the paper's reduced block),
a MobileNetV2 block with expansion 6 keeps its ratio (k -> 6k -> k), and an SE squeeze of width s
becomes max(1, round(s * k / C)).

Shrinking is driven by shapes: the copy is run once, layer by layer, on a (1, k, H, W) input, and
each layer is rebuilt for the input it actually receives (its input width) and the scaled width
it produces (its output width). Groups follow the width (a depthwise convolution stays
depthwise), dilation, padding and strides are kept, a parameter read through ``get_attr``
(ConvNeXt's layer scale, shape (C, 1, 1)) is sliced to the shape its consumer broadcasts
against, and functional layers (``F.layer_norm`` with a constant normalized shape, as
torchvision's LayerNorm2d traces to; ``F.conv2d(x, self.weight)``) get their constants and
parameters rewritten the same way.

Each module type has a shrinker in `SHRINKERS`; a module that holds channel-sized state and has
no shrinker, a layer that would degenerate at width k (a LayerNorm over one channel), or a
block that does not run at width k makes the block unconvertible: `SurgeryError`, whose message
is the reason the conversion report shows. A block is never half-converted.

Training-time randomness written functionally (torchvision's ``stochastic_depth(x, p, mode,
self.training)``, ``F.dropout(x, p, training=self.training)``) is traced with ``training`` frozen
to a constant; in the reduced block it becomes the equivalent module (``StochasticDepth``,
``nn.Dropout``) so it follows the MoD block's own train/eval mode again.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import operator
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modify.channel_literals import (
    SplitError,
    plan_splits,
    rescale_shape,
    rescale_slice,
    rescale_split,
)
from modify.discover import SiteGraph
from modify.errors import SurgeryError
from modify.layers.options import Init
from modify.tracing import BATCHNORM_META

__all__ = [
    "SurgeryError",
    "Widths",
    "LayerInput",
    "cut",
    "shrink",
    "check_shape",
    "reduced_parts",
    "SHRINKERS",
]


class Widths:
    """Maps a channel count of the original block to the reduced block's.

    Example:
        >>> w = Widths(channels=256, k=4)
        >>> w(256), w(64), w(1024), w(16)
        (4, 1, 16, 1)
    """

    def __init__(self, channels: int, k: int, fixed: dict[int, int] | None = None) -> None:
        self.channels = channels
        self.k = k
        self.fixed = dict(fixed or {})  # counts decided elsewhere (`modify.splits`): d -> reduced d

    def __call__(self, d: int) -> int:
        if d in self.fixed:
            return self.fixed[d]
        if d == self.channels:
            return self.k
        return max(1, round(d * self.k / self.channels))

    def with_fixed(self, fixed: dict[int, int]) -> Widths:
        """The same map with some counts decided elsewhere."""
        return Widths(self.channels, self.k, {**self.fixed, **fixed})


@dataclasses.dataclass(frozen=True)
class LayerInput:
    """What a shrinker knows about the input of the layer it rebuilds.

    Example:
        >>> LayerInput(before=(1, 64, 8, 8), after=(1, 2, 8, 8)).channels(64)
        2
    """

    before: tuple[int, ...] | None  # the input's shape in the original block; None if unknown
    after: tuple[int, ...] | None  # the reduced input's shape; None if unknown (then widths decide)

    def channels(self, original: int, widths: Widths | None = None, *, dim: int = 1) -> int:
        """The reduced input's size along ``dim`` (``original`` scaled by ``widths`` when unknown)."""
        if self.after is not None and -len(self.after) <= dim < len(self.after):
            return int(self.after[dim])
        return widths(original) if widths is not None else original


Shrinker = Callable[[nn.Module, Widths, Init, LayerInput], nn.Module]


# ---------------------------------------------------------------------------------------------
# Per-layer rules


def _factory(m: nn.Module) -> dict[str, Any]:
    """device / dtype of a module's state, so its reduced copy lives where it did."""
    t = next(iter(m.parameters()), None)
    if t is None:
        t = next(iter(m.buffers()), None)
    if t is None or not t.is_floating_point():
        return {"device": t.device} if t is not None else {}
    return {"device": t.device, "dtype": t.dtype}


def _groups(groups: int, new_in: int, new_out: int) -> int:
    """The largest group count no larger than before that divides both new widths."""
    return max(g for g in range(1, groups + 1) if new_in % g == 0 and new_out % g == 0)


def _take(t: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """The leading slice of ``t`` with the given sizes."""
    if any(s > d for s, d in zip(sizes, t.shape)):
        raise SurgeryError(f"a tensor of shape {tuple(t.shape)} cannot be cut to {sizes}: the reduced layer would be wider")
    return t[tuple(slice(0, s) for s in sizes)].clone()


def _finish(new: nn.Module, old: nn.Module, init: Init) -> nn.Module:
    """Mode and trainability as the original: copied weights keep requires_grad (a frozen layer
    stays frozen), fresh ones are trainable."""
    new.train(old.training)
    if init is Init.COPY:
        frozen = {name for name, p in old.named_parameters() if not p.requires_grad}
        for name, p in new.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
    return new


def _shrink_conv(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    assert isinstance(m, nn.modules.conv._ConvNd)
    new_in = seen.channels(m.in_channels, w)
    if m.groups > 1 and m.groups == m.in_channels:
        # depthwise (with its channel multiplier) stays depthwise on whatever width arrives
        groups, new_out = new_in, new_in * (m.out_channels // m.in_channels)
    else:
        new_out = w(m.out_channels)
        groups = _groups(m.groups, new_in, new_out)
    kwargs: dict[str, Any] = dict(
        stride=m.stride, padding=m.padding, dilation=m.dilation, groups=groups, bias=m.bias is not None,
        padding_mode=m.padding_mode, **_factory(m),
    )  # fmt: skip
    if m.transposed:
        kwargs["output_padding"] = m.output_padding
    new = type(m)(new_in, new_out, m.kernel_size, **kwargs)
    with torch.no_grad():
        if init is Init.COPY:
            new.weight.copy_(_take(m.weight, tuple(new.weight.shape)))
            if m.bias is not None:
                new.bias.copy_(m.bias[:new_out])
        else:  # torchvision's initialisation of its CNNs
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    return _finish(new, m, init)


def _slice_state(new: nn.Module, old: nn.Module) -> None:
    """Copies ``old``'s parameters and buffers into ``new``'s (smaller) ones, leading slices."""
    state = old.state_dict()
    target = new.state_dict()
    new.load_state_dict({k: (_take(v, tuple(target[k].shape)) if v.dim() else v.clone()) for k, v in state.items()})


def _shrink_norm(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    """BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm: one channel axis, dim 1."""
    assert isinstance(m, nn.modules.batchnorm._NormBase)
    n = seen.channels(m.num_features, w)
    new = type(m)(n, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats, **_factory(m))
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _shrink_frozen_bn(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    """torchvision's FrozenBatchNorm2d (detection backbones): statistics and affine as buffers."""
    n = seen.channels(m.weight.shape[0], w)
    new = type(m)(n, eps=m.eps).to(**_factory(m))
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _normalized_dims(before: tuple[int, ...] | None, shape: tuple[int, ...], channel_first: bool) -> list[int]:
    """Positions (negative, from the end) of the input dims a LayerNorm normalizes over."""
    if channel_first:
        return [1 - len(before)] if before is not None else [-1]  # LayerNorm2d: dim 1 of (N, C, H, W)
    return list(range(-len(shape), 0))


def _check_not_degenerate(old: tuple[int, ...], new: tuple[int, ...], what: str) -> None:
    if math.prod(new) == 1 < math.prod(old):
        raise SurgeryError(
            f"{what} normalizes over {math.prod(old)} values per position, and over 1 at this k: its output "
            "would be a constant (no signal, no gradient). Give this block a larger k (k >= 2)."
        )


def _shrink_layernorm(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    assert isinstance(m, nn.LayerNorm)
    shape = tuple(m.normalized_shape)
    before = seen.before
    # nn.LayerNorm normalizes the trailing dims; a subclass such as torchvision's LayerNorm2d
    # permutes a channel-first input and normalizes dim 1.
    channel_first = (
        type(m) is not nn.LayerNorm and before is not None and len(shape) == 1
        and tuple(before[-1:]) != shape and len(before) > 2 and before[1] == shape[0]
    )  # fmt: skip
    dims = _normalized_dims(before, shape, channel_first)
    if seen.after is not None:
        new_shape = tuple(int(seen.after[d]) for d in dims)
    else:
        new_shape = shape[:-1] + (w(shape[-1]),)
    _check_not_degenerate(shape, new_shape, f"the LayerNorm {type(m).__name__}{shape}")
    new = type(m)(new_shape, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=getattr(m, "bias", None) is not None,
                  **_factory(m))  # fmt: skip
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _shrink_groupnorm(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    assert isinstance(m, nn.GroupNorm)
    channels = seen.channels(m.num_channels, w)
    groups = max(g for g in range(1, m.num_groups + 1) if channels % g == 0)
    new = nn.GroupNorm(groups, channels, eps=m.eps, affine=m.affine, **_factory(m))
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _shrink_linear(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    assert isinstance(m, nn.Linear)
    new = nn.Linear(seen.channels(m.in_features, w, dim=-1), w(m.out_features), bias=m.bias is not None, **_factory(m))
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _shrink_prelu(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    assert isinstance(m, nn.PReLU)
    if m.num_parameters == 1:
        return copy.deepcopy(m)
    new = nn.PReLU(seen.channels(m.num_parameters, w), **_factory(m))
    if init is Init.COPY:
        _slice_state(new, m)
    return _finish(new, m, init)


def _shrink_squeeze_excitation(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    """torchvision's SqueezeExcitation when it is a leaf: C' -> s -> C' with s scaled by k / C."""
    new = copy.deepcopy(m)
    channels = seen.channels(m.fc1.in_channels, w)
    new.fc1 = _shrink_conv(m.fc1, w, init, LayerInput(None, (1, channels, 1, 1)))
    new.fc2 = _shrink_conv(m.fc2, Widths(m.fc2.out_channels, channels), init, LayerInput(None, (1, new.fc1.out_channels, 1, 1)))
    return new


# Module type -> shrinker. Subclasses match too (BatchNorm1d/2d/3d, Conv1d/2d/3d, transposed).
SHRINKERS: dict[type[nn.Module], Shrinker] = {
    nn.modules.conv._ConvNd: _shrink_conv,
    nn.modules.batchnorm._NormBase: _shrink_norm,
    nn.Linear: _shrink_linear,
    nn.LayerNorm: _shrink_layernorm,
    nn.GroupNorm: _shrink_groupnorm,
    nn.PReLU: _shrink_prelu,
}
try:  # torchvision is a dependency, but surgery works on any torch model
    from torchvision.ops import SqueezeExcitation as _SE
    from torchvision.ops.misc import FrozenBatchNorm2d as _FrozenBN

    SHRINKERS[_FrozenBN] = _shrink_frozen_bn
    SHRINKERS[_SE] = _shrink_squeeze_excitation
except ImportError:  # pragma: no cover
    pass


def _shrinker_for(module: nn.Module) -> Shrinker | None:
    # The most specific registered class wins (FrozenBatchNorm2d before anything generic).
    for kind in type(module).__mro__:
        if kind in SHRINKERS:
            return SHRINKERS[kind]
    return None


def _channel_state(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` with more than one element."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors if t.numel() > 1]


# ---------------------------------------------------------------------------------------------
# Cutting a block out of the traced graph


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
        if args is not None and "training" in args and not any(isinstance(v, fx.Node) for k, v in args.items() if k != "input"):
            return module_type(float(args.get("p", 0.5)), inplace=bool(args.get("inplace", False)))
    return None


_BATCHNORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batchnorm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """A BatchNorm module for an ``F.batch_norm`` call of a traced-through BatchNorm subclass
    (timm's BatchNormAct2d): tracing froze its ``training`` flag and momentum, the module reads
    ``self.training`` again. Its state is copied from the call's parameters and buffers."""
    settings = node.meta.get(BATCHNORM_META)
    args = _bound(F.batch_norm, node) if settings is not None else None
    shape = _shape(node)
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
        mean.numel(), eps=float(args.get("eps", 1e-5)), momentum=settings["momentum"],
        affine=values.get("weight") is not None, track_running_stats=True, device=mean.device, dtype=mean.dtype,
    )  # fmt: skip
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
    attrs = sorted({n.target for n in copied if n.op == "call_module"}
                   | {a.target for n in copied for a in n.all_input_nodes if a.op == "get_attr"})  # fmt: skip
    local = _local_names(attrs)
    root = nn.Module()
    for target, local_name in local.items():
        value = gm.get_submodule(target) if _is_module(gm, target) else get_attribute(gm, target)
        _set(root, local_name, copy.deepcopy(value))

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


def _set(root: nn.Module, target: str, value: nn.Module | nn.Parameter | torch.Tensor) -> None:
    parent, _, leaf = target.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    if isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    elif isinstance(value, nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.register_buffer(leaf, value)


# ---------------------------------------------------------------------------------------------
# Shrinking: one pass over the copy, each layer rebuilt for the input it receives


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


_BROADCASTING = frozenset(
    {operator.mul, operator.add, operator.sub, operator.truediv, operator.iadd, operator.imul,
     torch.mul, torch.add, torch.sub, torch.div, torch.addcmul, torch.where, torch.maximum, torch.minimum}
)  # fmt: skip
_BROADCASTING_METHODS = frozenset({"mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "addcmul", "expand_as"})


class _Pending:
    """A get_attr tensor not yet sliced: its first consumer decides its reduced shape."""

    def __init__(self, node: fx.Node, tensor: torch.Tensor) -> None:
        self.node = node
        self.tensor = tensor


class _Pass:
    """Runs a cut block once at width k, rebuilding each layer for its actual input."""

    def __init__(self, sub: fx.GraphModule, widths: Widths, init: Init, conv_outputs: dict[str, int] | None = None) -> None:
        self.sub = sub
        self.widths = widths
        self.init = init
        self.conv_outputs = conv_outputs or {}  # conv target -> output width (`modify.splits`)
        self.done: set[str] = set()
        self.channel_sizes = {widths.channels}
        for node in sub.graph.nodes:
            shape = _shape(node)
            if shape is not None and len(shape) >= 3:
                self.channel_sizes.add(shape[1])

    # -- get_attr tensors ------------------------------------------------------------------

    def _store(self, pending: _Pending, value: torch.Tensor) -> torch.Tensor:
        old = pending.tensor
        value = nn.Parameter(value, old.requires_grad) if isinstance(old, nn.Parameter) else value
        _set(self.sub, pending.node.target, value)
        self.done.add(pending.node.target)
        self.env[pending.node] = value
        return value

    def _slice_by_broadcast(self, pending: _Pending, others: list[tuple[fx.Node, torch.Tensor]]) -> torch.Tensor:
        """``pending`` sliced so it broadcasts against the reduced operand as it did against the original."""
        t = pending.tensor
        target = list(t.shape)
        node, value = max(others, key=lambda item: item[1].dim())
        before = _shape(node)
        if before is None:
            return self._slice_by_widths(pending)
        for i in range(1, t.dim() + 1):
            if i <= len(before) and i <= value.dim() and t.shape[-i] == before[-i] and t.shape[-i] > 1:
                target[-i] = int(value.shape[-i])
        return self._store(pending, _take(t.data, tuple(target)))

    def _slice_by_widths(self, pending: _Pending) -> torch.Tensor:
        t = pending.tensor
        sizes = tuple(self.widths(d) if d > 1 and d in self.channel_sizes else d for d in t.shape)
        return self._store(pending, _take(t.data, sizes))

    def _resolve(self, value: Any, others: list[tuple[fx.Node, torch.Tensor]] | None = None) -> Any:
        if isinstance(value, _Pending):
            if value.node in self.env and not isinstance(self.env[value.node], _Pending):
                return self.env[value.node]
            return self._slice_by_broadcast(value, others) if others else self._slice_by_widths(value)
        return value

    # -- functional layers -----------------------------------------------------------------

    def _functional(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Rewrites constants and parameters of a functional layer for its reduced input."""
        fn = node.target
        names = _FUNCTIONAL_ARGS.get(fn)  # type: ignore[arg-type]
        if names is None:
            return False
        values = dict(zip(names, args))
        values.update(kwargs)
        x = self._resolve(values[names[0]])
        if not isinstance(x, torch.Tensor):
            return False

        def put(name: str, value: Any) -> None:
            # The run gets the new value; the graph too, unless it is a tensor (its get_attr now
            # reads the sliced one) or the graph computes it (a node stays a node).
            position = names.index(name)
            in_args = position < len(args)
            original = node.args[position] if in_args else node.kwargs.get(name)
            if in_args:
                args[position] = value
            else:
                kwargs[name] = value
            if isinstance(value, torch.Tensor) or isinstance(original, fx.Node):
                return
            if in_args:
                node.update_arg(position, value)
            else:
                node.update_kwarg(name, value)

        def param(name: str, sizes: tuple[int, ...]) -> None:
            value = values.get(name)
            if isinstance(value, _Pending):
                put(name, self._store(value, _take(value.tensor.data, sizes)))

        c = int(x.shape[1]) if x.dim() > 1 else int(x.shape[-1])
        if fn is F.layer_norm:
            old = tuple(values["normalized_shape"])
            new = tuple(int(d) for d in x.shape[-len(old):])
            _check_not_degenerate(old, new, f"the layer_norm over {old}")
            put("normalized_shape", list(new) if isinstance(values["normalized_shape"], list) else new)
            param("weight", new)
            param("bias", new)
        elif fn is F.group_norm:
            groups = int(values["num_groups"])
            put("num_groups", max(g for g in range(1, groups + 1) if c % g == 0))
            param("weight", (c,))
            param("bias", (c,))
        elif fn is F.batch_norm or fn is F.instance_norm:
            for name in ("running_mean", "running_var", "weight", "bias"):
                param(name, (c,))
        elif fn is F.linear:
            weight = values["weight"]
            out = self.widths(int(weight.tensor.shape[0])) if isinstance(weight, _Pending) else None
            if out is not None:
                param("weight", (out, int(x.shape[-1])))
                param("bias", (out,))
        else:  # conv1d/2d/3d
            weight, groups = values["weight"], int(values.get("groups", 1))
            if isinstance(weight, _Pending):
                o, i = int(weight.tensor.shape[0]), int(weight.tensor.shape[1]) * groups
                if groups > 1 and groups == i:
                    new_groups, out = c, c * (o // i)
                else:
                    out = self.widths(o)
                    new_groups = _groups(groups, c, out)
                put("groups", new_groups)
                param("weight", (out, c // new_groups, *weight.tensor.shape[2:]))
                param("bias", (out,))
        for name, value in list(values.items()):
            if isinstance(value, _Pending):  # any other parameter it reads
                put(name, self._resolve(value))
        return True

    # -- the pass --------------------------------------------------------------------------

    def _module(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
        target = str(node.target)
        module = self.sub.get_submodule(target)
        if target in self.done:
            return module  # a module called twice (torchvision's ResNets reuse their ReLU)
        self.done.add(target)
        shrinker = _shrinker_for(module)
        first = next((a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)), None)
        value = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        seen = LayerInput(_shape(first), tuple(value.shape) if value is not None else None)
        if shrinker is not None:
            widths = self.widths
            if target in self.conv_outputs:  # one of several convolutions whose outputs are concatenated
                widths = widths.with_fixed({module.out_channels: self.conv_outputs[target]})
            module = shrinker(module, widths, self.init, seen)
            _set(self.sub, target, module)
        else:
            state = _channel_state(module)
            unchanged = self.widths.k == self.widths.channels and seen.after == seen.before
            if state and not unchanged:  # at k = C (the identity configuration) a copy is exact
                raise SurgeryError(
                    f"no rule shrinks a {type(module).__name__} ({target}), which holds channel-sized "
                    f"state ({', '.join(state[:3])}); register one in modify.surgery.SHRINKERS"
                )
        return module

    def run(self, x: torch.Tensor | None) -> None:
        self.env: dict[fx.Node, Any] = {}
        for node in self.sub.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = x
                continue
            if node.op == "get_attr":
                if node.target in self.done:
                    self.env[node] = get_attribute(self.sub, node.target)
                else:
                    self.env[node] = _Pending(node, get_attribute(self.sub, node.target))
                continue
            if node.op == "output":
                return
            args = list(fx.node.map_arg(node.args, lambda n: self.env[n]))
            kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: self.env[n]))
            if x is None:  # no shapes to go by: shrink statically, run nothing
                self._static(node, args, kwargs)
                continue
            if node.op == "call_module":
                args = [self._resolve(a) for a in args]
                kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
                module = self._module(node, tuple(args), kwargs)
                self.env[node] = _run_eval(module, args, kwargs)
                continue
            self._rescale_split(node, args, kwargs)
            self._rescale_literals(node, args)
            if not self._functional(node, args, kwargs):
                tensors = [
                    (n, self.env[n]) for n in node.all_input_nodes
                    if isinstance(self.env.get(n), torch.Tensor)
                ]  # fmt: skip
                broadcast = node.target in _BROADCASTING or (node.op == "call_method" and node.target in _BROADCASTING_METHODS)
                args = [self._resolve(a, tensors if broadcast else None) for a in args]
                kwargs = {k: self._resolve(v, tensors if broadcast else None) for k, v in kwargs.items()}
            if node.op == "call_function":
                self.env[node] = node.target(*args, **kwargs)
            else:  # call_method
                self_arg, *rest = args
                self.env[node] = getattr(self_arg, node.target)(*rest, **kwargs)
        for node, value in list(self.env.items()):
            if isinstance(value, _Pending):  # read by nothing that ran: slice it by the widths rule
                self._resolve(value)

    def _rescale_split(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> None:
        """A channel split's sizes, rescaled to the width that actually arrives (graph and run)."""
        x = self._resolve(args[0]) if args else None
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            return
        try:
            sizes = rescale_split(node, int(x.shape[1]))
        except SplitError as e:
            raise SurgeryError(f"the block {e}") from e
        if sizes is None:
            return
        if len(node.args) > 1:
            node.update_arg(1, sizes)
            args[1] = sizes
        else:
            key = "split_size_or_sections" if "split_size_or_sections" in node.kwargs else "split_size"
            node.update_kwarg(key, sizes)
            kwargs[key] = sizes

    def _rescale_literals(self, node: fx.Node, args: list[Any]) -> None:
        """Channel slices and reshape sizes written as numbers, for the width that arrives."""
        if not args:
            return
        x = self._resolve(args[0])
        if not isinstance(x, torch.Tensor):
            return
        if len(args) == 2 and x.dim() >= 3:
            index = rescale_slice(node, args[1], int(x.shape[1]), self.widths)
            if index is not None:
                node.update_arg(1, index)
                args[1] = index
                return
        packed = len(args) == 2 and isinstance(args[1], (list, tuple))
        sizes = list(args[1]) if packed else args[1:]
        new = rescale_shape(node, sizes, tuple(x.shape))
        if new is None:
            return
        if packed:
            node.update_arg(1, type(args[1])(new))
            args[1] = type(args[1])(new)
        else:
            for i, value in enumerate(new, start=1):
                if isinstance(node.args[i], int):
                    node.update_arg(i, value)
                args[i] = value

    def _static(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Shrinking without shapes (a graph that never went through shape propagation)."""
        if node.op == "call_module":
            self._module(node, (), {})
        for value in (*args, *kwargs.values()):
            if isinstance(value, _Pending):
                self._resolve(value)
        self.env[node] = None


# function -> its argument names, in order, for the functional layers `_Pass` rewrites.
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_FUNCTIONAL_ARGS: dict[Callable[..., Any], tuple[str, ...]] = {
    F.conv1d: _CONV_ARGS,
    F.conv2d: _CONV_ARGS,
    F.conv3d: _CONV_ARGS,
    F.linear: ("input", "weight", "bias"),
    F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
    F.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    F.instance_norm: ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"),
}


def _run_eval(module: nn.Module, args: list[Any], kwargs: dict[str, Any]) -> Any:
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        return module(*args, **kwargs)
    finally:
        for m, training in modes.items():
            m.training = training


def _device_dtype(sub: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*sub.parameters(), *sub.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def shrink(sub: fx.GraphModule, widths: Widths, init: Init | str = Init.SCRATCH) -> fx.GraphModule:
    """Rewrites every layer of ``sub`` (a block cut with `cut`) to the reduced widths, in place.

    When the input carries a shape (``tensor_meta``, as `cut` copies it from a traced graph),
    ``sub`` is run once on a (1, k, H, W) input and each layer is rebuilt for the input it
    actually receives; otherwise every channel count is scaled by ``widths`` alone.

    Raises:
        SurgeryError: a layer that holds channel-sized state and has no shrinker, a layer that
            would degenerate at width k, or a block that does not run at width k; the message
            names the layer.
    """
    init = Init.from_str(init)
    placeholder = next(n for n in sub.graph.nodes if n.op == "placeholder")
    before = _shape(placeholder)
    x = None
    if before is not None and len(before) >= 2:
        device, dtype = _device_dtype(sub)
        generator = torch.Generator().manual_seed(0)
        shape = (1, widths(before[1]), *before[2:])
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)  # (1, k, H, W)
    plan = plan_splits(sub, widths, widths.channels)
    widths = widths.with_fixed(plan.totals)
    try:
        with torch.no_grad():
            _Pass(sub, widths, init, plan.conv_outputs).run(x)
    except SurgeryError:
        raise
    except Exception as e:  # a layer that does not fit the reduced widths
        if "more than 1 value per channel" in str(e):  # NF-ResNet's weight standardisation of a 1-input filter
            raise SurgeryError(
                f"at width {widths.k} a normalization in the block would see a single value per channel "
                f"({_first_line(e)}); give it a larger k"
            ) from e
        raise SurgeryError(f"the block does not run at width {widths.k}: {_first_line(e)}") from e
    sub.recompile()
    return sub


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:200]}"


def check_shape(sub: nn.Module, k: int, height: int, width: int) -> None:
    """Checks that ``sub`` maps (N, k, H, W) to (N, k, H, W) with finite values, in eval mode
    (batch 1) and in train mode (batch 2; its buffers, such as running statistics, are restored
    after): a hard-coded width, a training-only path that does not fit, or a degenerate layer
    shows up here. Modes, buffers and the global random state are left as they were.

    Raises:
        SurgeryError: it fails to run, returns another shape, or returns non-finite values.
    """
    device, dtype = _device_dtype(sub)
    expected = (k, height, width)
    generator = torch.Generator().manual_seed(0)
    modes = {m: m.training for m in sub.modules()}
    saved = [(b, b.detach().clone()) for b in sub.buffers()]
    for training, batch in ((False, 1), (True, 2)):
        x = torch.randn(batch, k, height, width, generator=generator, dtype=dtype).to(device)  # (N, k, H, W)
        try:
            sub.train(training)
            cuda = [device.index or 0] if device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                out = sub(x)
        except Exception as e:  # any failure means the block did not shrink cleanly
            mode = "train" if training else "eval"
            raise SurgeryError(f"the block does not run at width {k} in {mode} mode: {_first_line(e)}") from e
        finally:
            for m, was in modes.items():
                m.training = was
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, *expected):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SurgeryError(f"the block at width {k} returns shape {shape}, not {(batch, *expected)}")
        if not torch.isfinite(out).all():
            raise SurgeryError(f"the block at width {k} returns non-finite values")


def reduced_parts(
    gm: fx.GraphModule, graph: SiteGraph, channels: int, k: int, height: int, width: int, init: Init | str
) -> tuple[fx.GraphModule, fx.GraphModule | None, fx.GraphModule | None]:
    """(branch at width k, post-add ops at width k, post-add ops at full width) of one block.

    Raises:
        SurgeryError: the block cannot be rebuilt at width k; nothing of it is kept.
    """
    widths = Widths(channels, k)
    try:
        branch = shrink(cut(gm, graph.fork, graph.branch, graph.branch_operand), widths, init)
        check_shape(branch, k, height, width)
        post_full = post_k = None
        if graph.post:
            post_full = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd")
            post_k = shrink(cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd"), widths, init)
            check_shape(post_k, k, height, width)
    except SurgeryError:
        raise
    except Exception as e:  # never let one odd block abort the whole conversion
        raise SurgeryError(f"the block could not be cut out and shrunk: {_first_line(e)}") from e
    return branch, post_k, post_full
