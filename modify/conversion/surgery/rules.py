"""The per-layer rules of surgery: how each layer type is rebuilt at the reduced width.

`Widths` maps a channel count of the original block to the reduced block's; `LayerInput` says
what a rule knows of the layer's input. Two tables hold the rules, one per way a layer appears
in a traced graph:

- `SHRINKERS`: module type -> `Shrinker`, for a layer called as a module (``self.conv(x)``);
  subclasses match too, the most specific registered class wins.
- `FUNCTIONAL_SHRINKERS`: function -> `FunctionalRule`, for a layer written as a call on
  parameters the module reads itself (``F.layer_norm(x, (C,), self.weight, self.bias)``); the
  rule rewrites the call's constants and cuts its parameters through a `FunctionalCall`.

A layer type of your own that holds channel-sized state gets a rule with `register_shrinker`
(or `register_functional_shrinker`); without one, a block holding it is not converted and the
report says why.

Example:
    >>> conv, seen = nn.Conv2d(64, 16, 3), LayerInput(before=(1, 64, 8, 8), after=(1, 8, 8, 8))
    >>> shrinker_for(conv)(conv, Widths(channels=64, k=8), Init.COPY, seen).weight.shape
    torch.Size([2, 8, 3, 3])
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from modify.errors import ConversionError, SurgeryError
from modify.layers.fresh import fresh_conv_
from modify.layers.options import Init

__all__ = [
    "Widths",
    "LayerInput",
    "Shrinker",
    "SHRINKERS",
    "register_shrinker",
    "shrinker_for",
    "FunctionalCall",
    "FunctionalRule",
    "FUNCTIONAL_SHRINKERS",
    "register_functional_shrinker",
    "channel_state",
    "check_not_degenerate",
    "group_count",
    "leading_slice",
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
        self.fixed = dict(fixed or {})  # counts decided elsewhere (`literals.plan_splits`): d -> reduced d

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


def group_count(groups: int, new_in: int, new_out: int) -> int:
    """The largest group count no larger than before that divides both new widths."""
    return max(g for g in range(1, groups + 1) if new_in % g == 0 and new_out % g == 0)


def leading_slice(t: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """The leading slice of ``t`` with the given sizes."""
    if any(s > d for s, d in zip(sizes, t.shape, strict=False)):  # sizes may name the leading dims only
        raise SurgeryError(
            f"a tensor of shape {tuple(t.shape)} cannot be cut to {sizes}: the reduced layer would be wider"
        )
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
        groups = group_count(m.groups, new_in, new_out)
    kwargs: dict[str, Any] = dict(
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
        **_factory(m),
    )
    if m.transposed:
        kwargs["output_padding"] = m.output_padding
    new = type(m)(new_in, new_out, m.kernel_size, **kwargs)
    with torch.no_grad():
        if init is Init.COPY:
            new.weight.copy_(leading_slice(m.weight, tuple(new.weight.shape)))
            if m.bias is not None:
                new.bias.copy_(m.bias[:new_out])
        else:
            fresh_conv_(new)
    return _finish(new, m, init)


def _slice_state(new: nn.Module, old: nn.Module) -> None:
    """Copies ``old``'s parameters and buffers into ``new``'s (smaller) ones, leading slices."""
    state = old.state_dict()
    target = new.state_dict()
    new.load_state_dict(
        {k: (leading_slice(v, tuple(target[k].shape)) if v.dim() else v.clone()) for k, v in state.items()}
    )


def _shrink_norm(m: nn.Module, w: Widths, init: Init, seen: LayerInput) -> nn.Module:
    """BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm: one channel axis, dim 1."""
    assert isinstance(m, nn.modules.batchnorm._NormBase)
    n = seen.channels(m.num_features, w)
    new = type(m)(
        n, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats, **_factory(m)
    )
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


def check_not_degenerate(old: tuple[int, ...], new: tuple[int, ...], what: str) -> None:
    """A normalization over ``old`` cut to ``new`` must still see more than one value per position."""
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
        type(m) is not nn.LayerNorm
        and before is not None
        and len(shape) == 1
        and tuple(before[-1:]) != shape
        and len(before) > 2
        and before[1] == shape[0]
    )
    dims = _normalized_dims(before, shape, channel_first)
    if seen.after is not None:
        new_shape = tuple(int(seen.after[d]) for d in dims)
    else:
        new_shape = shape[:-1] + (w(shape[-1]),)
    check_not_degenerate(shape, new_shape, f"the LayerNorm {type(m).__name__}{shape}")
    new = type(m)(
        new_shape,
        eps=m.eps,
        elementwise_affine=m.elementwise_affine,
        bias=getattr(m, "bias", None) is not None,
        **_factory(m),
    )
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
    new.fc2 = _shrink_conv(
        m.fc2, Widths(m.fc2.out_channels, channels), init, LayerInput(None, (1, new.fc1.out_channels, 1, 1))
    )
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
    from torchvision.ops import SqueezeExcitation
    from torchvision.ops.misc import FrozenBatchNorm2d

    SHRINKERS[FrozenBatchNorm2d] = _shrink_frozen_bn
    SHRINKERS[SqueezeExcitation] = _shrink_squeeze_excitation
except ImportError:  # pragma: no cover
    pass


def _registered(table: dict[Any, Any], key: Any, rule: Any, replace: bool, what: str) -> None:
    if key in table and not replace and table[key] != rule:
        old = getattr(table[key], "rebuild", table[key])
        raise ConversionError(
            f"{what} {getattr(key, '__qualname__', key)} already has a rule ({getattr(old, '__qualname__', old)}); "
            "pass replace=True to replace it."
        )
    table[key] = rule


def register_shrinker(module_type: type[nn.Module], rule: Shrinker | None = None, *, replace: bool = False) -> Any:
    """Registers ``rule`` as the way to rebuild ``module_type`` (and its subclasses) at a reduced
    width; without ``rule``, a decorator that registers the function it decorates.

    A rule is called as ``rule(module, widths, init, seen)`` and returns the new module: the
    input it will receive has ``seen.channels(...)`` channels, the output it produces a channel
    count of the original block maps to ``widths(count)``; with ``init is Init.COPY`` it copies
    the leading slices of the old weights (`leading_slice`), else it starts fresh.

    Raises:
        ConversionError: ``module_type`` has another rule already and ``replace`` is False.

    Example:
        >>> class Scale(nn.Module):  # a per-channel scale
        ...     def __init__(self, channels: int) -> None:
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.ones(channels))
        >>> @register_shrinker(Scale)
        ... def shrink_scale(m, widths, init, seen):
        ...     new = Scale(seen.channels(m.weight.numel(), widths))
        ...     if init is Init.COPY:
        ...         new.weight.data.copy_(leading_slice(m.weight.data, tuple(new.weight.shape)))
        ...     return new
        >>> shrinker_for(Scale(64))(Scale(64), Widths(64, 8), Init.COPY, LayerInput(None, None)).weight.shape
        torch.Size([8])
        >>> del SHRINKERS[Scale]
    """
    if rule is None:
        return lambda fn: register_shrinker(module_type, fn, replace=replace)
    _registered(SHRINKERS, module_type, rule, replace, "the module type")
    return rule


def shrinker_for(module: nn.Module) -> Shrinker | None:
    """The rule of the most specific registered class of ``module`` (FrozenBatchNorm2d before anything generic)."""
    for kind in type(module).__mro__:
        if kind in SHRINKERS:
            return SHRINKERS[kind]
    return None


def channel_state(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` with more than one element."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors if t.numel() > 1]


# ---------------------------------------------------------------------------------------------
# Functional layers


class FunctionalCall(Protocol):
    """What a functional rule sees of one call in the pass at width k, and how it rewrites it.

    Arguments are named as in the rule's `FunctionalRule.arguments`, whether the graph passes
    them by position or by keyword. A parameter argument (read through ``get_attr``) is cut once
    its consumer decides its shape: `cut` here, or the leading channels by `widths` after the rule.
    """

    input: torch.Tensor  # the call's first argument, as it arrives at the reduced width
    channels: int  # the input's channel count: dim 1, or the last dim of a 1-D input
    widths: Widths  # the block's width map

    def value(self, name: str, default: Any = None) -> Any:
        """The argument as written (a constant), or the original tensor of a parameter."""

    def parameter(self, name: str) -> torch.Tensor | None:
        """The original tensor of a parameter argument not cut yet; None for anything else."""

    def put(self, name: str, value: Any) -> None:
        """A new constant for the argument, in this run and in the graph."""

    def cut(self, name: str, sizes: tuple[int, ...]) -> None:
        """The parameter argument cut to its leading ``sizes`` (nothing if the argument is no such parameter)."""


@dataclasses.dataclass(frozen=True)
class FunctionalRule:
    """How one function's call is rebuilt at a reduced width."""

    arguments: tuple[str, ...]  # the function's parameters in order, its input first
    rebuild: Callable[[FunctionalCall], None]  # rewrites the call's constants, cuts its parameters


def _functional_conv(call: FunctionalCall) -> None:
    weight, groups, c = call.parameter("weight"), int(call.value("groups", 1)), call.channels
    if weight is None:
        return
    o, i = int(weight.shape[0]), int(weight.shape[1]) * groups
    if groups > 1 and groups == i:  # depthwise stays depthwise, with its channel multiplier
        new_groups, out = c, c * (o // i)
    else:
        out = call.widths(o)
        new_groups = group_count(groups, c, out)
    call.put("groups", new_groups)
    call.cut("weight", (out, c // new_groups, *weight.shape[2:]))
    call.cut("bias", (out,))


def _functional_linear(call: FunctionalCall) -> None:
    weight = call.parameter("weight")
    if weight is not None:
        out = call.widths(int(weight.shape[0]))
        call.cut("weight", (out, int(call.input.shape[-1])))
        call.cut("bias", (out,))


def _functional_layer_norm(call: FunctionalCall) -> None:
    written = call.value("normalized_shape")
    old = tuple(written)
    new = tuple(int(d) for d in call.input.shape[-len(old) :])
    check_not_degenerate(old, new, f"the layer_norm over {old}")
    call.put("normalized_shape", list(new) if isinstance(written, list) else new)
    call.cut("weight", new)
    call.cut("bias", new)


def _functional_group_norm(call: FunctionalCall) -> None:
    groups, c = int(call.value("num_groups")), call.channels
    call.put("num_groups", max(g for g in range(1, groups + 1) if c % g == 0))
    call.cut("weight", (c,))
    call.cut("bias", (c,))


def _functional_norm(call: FunctionalCall) -> None:
    """batch_norm and instance_norm: every per-channel tensor at the input's width."""
    for name in ("running_mean", "running_var", "weight", "bias"):
        call.cut(name, (call.channels,))


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_NORM_TAIL = ("momentum", "eps")
# Function -> its rule: the functional layers the pass rewrites for their reduced input.
FUNCTIONAL_SHRINKERS: dict[Callable[..., Any], FunctionalRule] = {
    F.conv1d: FunctionalRule(_CONV_ARGS, _functional_conv),
    F.conv2d: FunctionalRule(_CONV_ARGS, _functional_conv),
    F.conv3d: FunctionalRule(_CONV_ARGS, _functional_conv),
    F.linear: FunctionalRule(("input", "weight", "bias"), _functional_linear),
    F.layer_norm: FunctionalRule(("input", "normalized_shape", "weight", "bias", "eps"), _functional_layer_norm),
    F.group_norm: FunctionalRule(("input", "num_groups", "weight", "bias", "eps"), _functional_group_norm),
    F.batch_norm: FunctionalRule(
        ("input", "running_mean", "running_var", "weight", "bias", "training", *_NORM_TAIL), _functional_norm
    ),
    F.instance_norm: FunctionalRule(
        ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", *_NORM_TAIL), _functional_norm
    ),
}


def register_functional_shrinker(
    function: Callable[..., Any],
    arguments: tuple[str, ...],
    rule: Callable[[FunctionalCall], None] | None = None,
    *,
    replace: bool = False,
) -> Any:
    """Registers ``rule`` for calls of ``function`` in a traced block (a layer written as
    ``my_op(x, self.weight, ...)``), its parameters named by ``arguments`` in order, the input
    first; without ``rule``, a decorator. The rule rewrites the call through a `FunctionalCall`.

    Raises:
        ConversionError: ``function`` has another rule already and ``replace`` is False.
    """
    if rule is None:
        return lambda fn: register_functional_shrinker(function, arguments, fn, replace=replace)
    _registered(FUNCTIONAL_SHRINKERS, function, FunctionalRule(tuple(arguments), rule), replace, "the function")
    return rule
