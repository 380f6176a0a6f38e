"""Building the width-k copy of a residual block, layer by layer.

A discovered block is cut out of the traced graph (its residual branch, and the element-wise
operations that follow its skip-add), copied, and every channel dimension in it is scaled by
k / C: the block's own width C becomes k, an inner width d becomes max(1, round(d * k / C)). So
a ResNet Bottleneck 256 -> 64 -> 256 at k = 4 becomes 4 -> 1 -> 4 (the paper's reduced block),
and a MobileNetV2 block with expansion 6 keeps its ratio (k -> 6k -> k). Groups follow the width:
a depthwise convolution stays depthwise.

Each layer type has a shrinker in `SHRINKERS`; a layer with parameters and no shrinker makes the
block unconvertible (reported with its type), never half-converted.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch
from torch import fx, nn

from modify.discover import SiteGraph
from modify.layers.options import StrChoice

__all__ = ["InitMode", "SurgeryError", "Widths", "cut", "shrink", "check_shape", "reduced_parts", "SHRINKERS", "PARAMETER_FREE"]


class InitMode(StrChoice):
    """How the reduced block's weights start."""

    SCRATCH = "scratch"  # fresh initialisation, as the paper trains its MoD blocks
    COPY = "copy"  # the original block's weights, its leading channels (exact when k = C)


class SurgeryError(Exception):
    """A block that cannot be shrunk; the message is the reason a report shows."""


class Widths:
    """Maps a channel count of the original block to the reduced block's.

    Example:
        >>> w = Widths(channels=256, k=4)
        >>> w(256), w(64), w(1024)
        (4, 1, 16)
    """

    def __init__(self, channels: int, k: int) -> None:
        self.channels = channels
        self.k = k

    def __call__(self, d: int) -> int:
        if d == self.channels:
            return self.k
        return max(1, round(d * self.k / self.channels))


def _groups(groups: int, old_in: int, old_out: int, new_in: int, new_out: int) -> int:
    if groups == 1:
        return 1
    if groups == old_in == old_out:  # depthwise stays depthwise
        return new_in
    # Grouped: the largest group count no larger than before that divides both new widths.
    return max(g for g in range(1, groups + 1) if new_in % g == 0 and new_out % g == 0)


def _take(t: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """The leading slice of ``t`` with the given sizes."""
    return t[tuple(slice(0, s) for s in sizes)].clone()


def _shrink_conv(m: nn.Module, w: Widths, init: InitMode) -> nn.Module:
    assert isinstance(m, nn.modules.conv._ConvNd)
    new_in, new_out = w(m.in_channels), w(m.out_channels)
    groups = _groups(m.groups, m.in_channels, m.out_channels, new_in, new_out)
    new = type(m)(
        new_in, new_out, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
        groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode,
    )  # fmt: skip
    if init is InitMode.COPY:
        new.weight.data.copy_(_take(m.weight.data, tuple(new.weight.shape)))
        if m.bias is not None:
            new.bias.data.copy_(m.bias.data[:new_out])
    else:  # torchvision's initialisation of its CNNs
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    return new


def _shrink_batchnorm(m: nn.Module, w: Widths, init: InitMode) -> nn.Module:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    n = w(m.num_features)
    new = type(m)(n, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats)
    if init is InitMode.COPY:
        new.load_state_dict({k: (v[:n].clone() if v.dim() else v.clone()) for k, v in m.state_dict().items()})
    return new


def _shrink_linear(m: nn.Module, w: Widths, init: InitMode) -> nn.Module:
    assert isinstance(m, nn.Linear)
    new = nn.Linear(w(m.in_features), w(m.out_features), bias=m.bias is not None)
    if init is InitMode.COPY:
        new.weight.data.copy_(_take(m.weight.data, tuple(new.weight.shape)))
        if m.bias is not None:
            new.bias.data.copy_(m.bias.data[: new.out_features])
    return new


def _shrink_layernorm(m: nn.Module, w: Widths, init: InitMode) -> nn.Module:
    assert isinstance(m, nn.LayerNorm)
    shape = tuple(m.normalized_shape[:-1]) + (w(m.normalized_shape[-1]),)
    new = type(m)(shape, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=m.bias is not None)
    if init is InitMode.COPY and m.elementwise_affine:
        new.load_state_dict({k: _take(v, tuple(getattr(new, k.split(".")[-1]).shape)) for k, v in m.state_dict().items()})
    return new


def _shrink_groupnorm(m: nn.Module, w: Widths, init: InitMode) -> nn.Module:
    assert isinstance(m, nn.GroupNorm)
    channels = w(m.num_channels)
    groups = max(g for g in range(1, m.num_groups + 1) if channels % g == 0)
    new = nn.GroupNorm(groups, channels, eps=m.eps, affine=m.affine)
    if init is InitMode.COPY and m.affine:
        new.load_state_dict({k: v[:channels].clone() for k, v in m.state_dict().items()})
    return new


Shrinker = Callable[[nn.Module, Widths, InitMode], nn.Module]

# Layer type -> shrinker. Subclasses match too (BatchNorm1d/2d/3d, Conv1d/2d/3d).
SHRINKERS: dict[type[nn.Module], Shrinker] = {
    nn.modules.conv._ConvNd: _shrink_conv,
    nn.modules.batchnorm._BatchNorm: _shrink_batchnorm,
    nn.Linear: _shrink_linear,
    nn.LayerNorm: _shrink_layernorm,
    nn.GroupNorm: _shrink_groupnorm,
}

# Modules without channel-sized state: copied as they are.
PARAMETER_FREE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout, nn.Dropout2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Upsample,
)  # fmt: skip


def _shrinker_for(module: nn.Module) -> Shrinker | None:
    for kind, shrinker in SHRINKERS.items():
        if isinstance(module, kind):
            return shrinker
    return None


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


def cut(
    gm: fx.GraphModule, start: fx.Node, nodes: tuple[fx.Node, ...], end: fx.Node, *, name: str = "Branch"
) -> fx.GraphModule:
    """The subgraph ``nodes`` as a module of its own, ``start`` becoming its input and ``end``
    its output. Modules and parameters it uses are deep-copied, so the original stays untouched,
    and renamed relative to the block ("layer1.1.conv1" -> "conv1").
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("x")}
    attrs = sorted({n.target for n in nodes if n.op == "call_module"}
                   | {a.target for n in nodes for a in n.all_input_nodes if a.op == "get_attr"})  # fmt: skip
    local = _local_names(attrs)
    root = nn.Module()
    for target, name in local.items():
        value = gm.get_submodule(target) if _is_module(gm, target) else _get_tensor(gm, target)
        value = copy.deepcopy(value)
        if isinstance(value, nn.Module):
            root.add_module(name, value)
        elif isinstance(value, nn.Parameter):
            root.register_parameter(name, value)
        else:
            root.register_buffer(name, value)

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise SurgeryError(f"the branch reads {n.name!r} from outside the block")
            env[n] = graph.get_attr(local[n.target])  # a parameter the branch uses (ConvNeXt's layer scale)
        return env[n]

    for node in nodes:
        new = graph.node_copy(node, arg)
        if node.op == "call_module":
            new.target = local[node.target]
        env[node] = new
    graph.output(env[end])
    return fx.GraphModule(root, graph, class_name=name)


def _is_module(root: nn.Module, target: str) -> bool:
    try:
        root.get_submodule(target)
        return True
    except AttributeError:
        return False


def _get_tensor(root: nn.Module, target: str) -> torch.Tensor:
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


def shrink(sub: fx.GraphModule, widths: Widths, init: InitMode | str = InitMode.SCRATCH) -> fx.GraphModule:
    """Rewrites every layer of ``sub`` (a block cut with `cut`) to the reduced widths, in place.

    Raises:
        SurgeryError: a layer type with parameters that has no shrinker; the message names it.
    """
    init = InitMode.from_str(init)
    done: set[str] = set()
    for node in sub.graph.nodes:
        if node.target in done:
            continue  # a module called twice (torchvision's ResNets reuse their ReLU)
        if node.op == "call_module":
            module = sub.get_submodule(node.target)
            shrinker = _shrinker_for(module)
            if shrinker is not None:
                _set(sub, node.target, shrinker(module, widths, init))
            elif isinstance(module, PARAMETER_FREE) or not any(True for _ in module.parameters()):
                pass
            else:
                raise SurgeryError(f"no rule shrinks a {type(module).__name__} ({node.target}) to k channels")
            done.add(node.target)
        elif node.op == "get_attr":
            tensor = sub.get_parameter(node.target) if _is_param(sub, node.target) else sub.get_buffer(node.target)
            sizes = tuple(widths(d) if d > 1 else d for d in tensor.shape)
            sliced = _take(tensor.data, sizes)
            _set(sub, node.target, nn.Parameter(sliced, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced)
            done.add(node.target)
    sub.recompile()
    return sub


def _is_param(root: nn.Module, target: str) -> bool:
    try:
        root.get_parameter(target)
        return True
    except AttributeError:
        return False


def check_shape(sub: nn.Module, k: int, height: int, width: int) -> None:
    """Runs ``sub`` on a (1, k, H, W) input: a hard-coded width anywhere in it shows up here."""
    was_training = sub.training
    sub.eval()
    try:
        with torch.no_grad():
            out = sub(torch.zeros(1, k, height, width))
    except Exception as e:  # any failure means the block did not shrink cleanly
        raise SurgeryError(f"the block does not run at width {k}: {type(e).__name__}: {e}".splitlines()[0]) from e
    finally:
        sub.train(was_training)
    if tuple(out.shape) != (1, k, height, width):
        raise SurgeryError(f"the block at width {k} returns shape {tuple(out.shape)}, not (1, {k}, {height}, {width})")


def reduced_parts(
    gm: fx.GraphModule, graph: SiteGraph, channels: int, k: int, height: int, width: int, init: InitMode | str
) -> tuple[fx.GraphModule, fx.GraphModule | None, fx.GraphModule | None]:
    """(branch at width k, post-add ops at width k, post-add ops at full width) of one block."""
    widths = Widths(channels, k)
    branch = shrink(cut(gm, graph.fork, graph.branch, graph.branch_operand), widths, init)
    check_shape(branch, k, height, width)
    post_full = post_k = None
    if graph.post:
        post_full = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd")
        post_k = shrink(cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd"), widths, init)
    return branch, post_k, post_full


