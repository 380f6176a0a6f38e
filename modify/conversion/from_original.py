"""MoD blocks initialised from the original block's weights (`modify.conversion.init`): its most
important channels, with a selector that prefers them (``importance``), or its leading channels
(``copy``). Each reduced layer is matched to the original layer it was cut from, and every
channel width of the block gets one ranking, so consecutive layers stay consistent.

The seam `modify.conversion.init` calls, one MoD block at a time: `copy_important`,
`copy_leading`, then `scale_selectors` for the whole model; `reduced_branch` is the part of a
MoD block both strategies (and ``zero``) write into.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any

import torch
from torch import Tensor, fx, nn

from modify.conversion.selector_units import block_inputs
from modify.errors import ModifyError
from modify.layers import BlockForm, ChannelSelector, MoDBlock
from modify.layers.channel_weights import ChannelConv2d, ChannelNorm2d
from modify.layers.options import SelectionOrder, StrChoice
from modify.layers.selector import StaticSelector

__all__ = ["ImportanceBy", "reduced_branch", "copy_leading", "copy_important", "scale_selectors"]


class ImportanceBy(StrChoice):
    """How inner channels are ranked for ``importance``."""

    BN = "bn"  # |BatchNorm scale| of the norm after the layer (L1 where there is none)
    L1 = "l1"  # L1 norm of the filters producing the channel


def reduced_branch(mod: MoDBlock) -> nn.Module:
    """The reduced block's residual branch (the whole form wraps it in a ReducedBlock)."""
    return mod.block.branch if mod.form is BlockForm.WHOLE and hasattr(mod.block, "branch") else mod.block


def _counterparts(reduced: nn.Module, original: nn.Module, scope: str) -> dict[str, nn.Module]:
    """Maps the flat module names of a reduced part ("conv1", "0_0") to the original block's modules.

    Surgery names a copied module by its path below the common prefix of the branch's modules,
    dots turned to underscores; the prefix is found by trying every module under ``scope``.
    """
    wanted = {n: m for n, m in reduced.named_children() if any(True for _ in m.parameters())}
    if not wanted:
        return {}
    root = original.get_submodule(scope) if scope else original
    for _prefix, candidate in root.named_modules():
        table = {rel.replace(".", "_"): m for rel, m in candidate.named_modules() if rel}
        # isinstance: a per-channel layer (`modify.layers.channel_weights`) matches the layer it widens
        if all(n in table and isinstance(m, type(table[n])) for n, m in wanted.items()):
            return {n: table[n] for n in wanted}
    where = scope or "the model"
    raise ModifyError(
        f"cannot match the reduced block's layers {sorted(wanted)} to the modules of {where!r} in the original model; "
        "pass the model that was converted as original= (the same architecture), or use init='zero'."
    )


def _ranking_l1(weight: Tensor, dim: int) -> Tensor:
    dims = [d for d in range(weight.dim()) if d != dim]
    score = weight.abs().sum(dim=dims) if dims else weight.abs()
    return torch.argsort(score, descending=True, stable=True)


class _Rankings:
    """One channel ranking per original width of a block (see the module docstring)."""

    def __init__(self, by: ImportanceBy) -> None:
        self.by = by
        self.sets: dict[int, Tensor] = {}

    def take(self, size: int, n: int) -> Tensor:
        if size not in self.sets:
            self.sets[size] = torch.arange(size)
        return self.sets[size][:n]


def _input_layers(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The layers with parameters that read the block input (through parameter-free ops only); the
    input is the first placeholder (a per-channel branch takes the selected indices second)."""
    found: list[nn.Module] = []
    seen: set[fx.Node] = set()
    frontier = [n for n in graph.nodes if n.op == "placeholder"][:1]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" and str(user.target) in modules:
                found.append(modules[str(user.target)])
            elif user.op != "output":
                frontier.append(user)
    return found


def _rank_inputs(layers: list[nn.Module], channels: int) -> Tensor:
    score = torch.zeros(channels)
    for m in layers:
        w = getattr(m, "weight", None)
        if w is None:
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and w.shape[1] == channels:
            score += w.abs().sum(dim=[d for d in range(w.dim()) if d != 1])
        elif isinstance(m, nn.Linear) and w.shape[1] == channels:
            score += w.abs().sum(dim=0)
        elif w.dim() >= 1 and w.shape[0] == channels:  # depthwise conv, norms: per-channel
            score += w.abs().reshape(channels, -1).sum(dim=1)
    return torch.argsort(score, descending=True, stable=True)


def _producer_ranking(order: list[tuple[str, nn.Module]], i: int, size: int, by: ImportanceBy) -> Tensor:
    """Ranking of the ``size`` output channels of layer ``order[i]``."""
    name, m = order[i]
    if by is ImportanceBy.BN:
        for _, later in order[i + 1 :]:
            if isinstance(later, nn.modules.batchnorm._BatchNorm) and later.num_features == size and later.affine:
                return torch.argsort(later.weight.abs(), descending=True, stable=True)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
        return torch.argsort(m.weight.abs(), descending=True, stable=True)
    return _ranking_l1(m.weight, 0)


def _ordered(reduced: nn.Module) -> list[str]:
    """Module names in the order the part calls them."""
    if isinstance(reduced, fx.GraphModule):
        names: list[str] = []
        for node in reduced.graph.nodes:
            if node.op == "call_module" and str(node.target) not in names:
                names.append(str(node.target))
        return names
    return [n for n, _ in reduced.named_children()]


def _copy_part(reduced: nn.Module, original: nn.Module, scope: str, ranks: _Rankings) -> None:
    """Copies the original layers' most important channels into the reduced part's layers."""
    pairs = _counterparts(reduced, original, scope)
    order = [(n, pairs[n]) for n in _ordered(reduced) if n in pairs]
    for i, (name, orig) in enumerate(order):
        new = reduced.get_submodule(name)
        if isinstance(orig, nn.modules.conv._ConvNd):
            out_set = _ensure(
                ranks, orig.out_channels, functools.partial(_producer_ranking, order, i, orig.out_channels, ranks.by)
            )
            rows = out_set[: new.out_channels]
            if orig.groups == 1:
                cols = ranks.take(orig.in_channels, new.in_channels)
                new.weight.copy_(orig.weight[rows][:, cols])
            elif orig.groups == orig.in_channels == orig.out_channels and new.groups == new.in_channels:
                new.weight.copy_(orig.weight[rows])  # depthwise: one filter per channel
            else:  # grouped: the leading channels, as init="copy"
                new.weight.copy_(orig.weight[tuple(slice(0, s) for s in new.weight.shape)])
                rows = torch.arange(new.out_channels)
            if orig.bias is not None:
                new.bias.copy_(orig.bias[rows])
        elif isinstance(orig, nn.Linear):
            out_set = _ensure(
                ranks, orig.out_features, functools.partial(_producer_ranking, order, i, orig.out_features, ranks.by)
            )
            rows = out_set[: new.out_features]
            cols = ranks.take(orig.in_features, new.in_features)
            new.weight.copy_(orig.weight[rows][:, cols])
            if orig.bias is not None:
                new.bias.copy_(orig.bias[rows])
        elif isinstance(orig, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            size = (
                orig.num_features
                if hasattr(orig, "num_features")
                else (orig.num_channels if isinstance(orig, nn.GroupNorm) else orig.normalized_shape[-1])
            )
            keep = _ensure(ranks, size, functools.partial(_producer_ranking, order, i, size, ranks.by))
            state = {}
            for key, value in orig.state_dict().items():
                target = new.state_dict()[key]
                if value.dim() == 0:
                    state[key] = value.clone()
                elif isinstance(orig, nn.LayerNorm):
                    state[key] = value[..., keep[: target.shape[-1]]].clone()
                else:
                    state[key] = value[keep[: target.shape[0]]].clone()
            new.load_state_dict(state)
        else:  # a layer type without a channel rule: the leading slice of every tensor
            state = {
                k: v[tuple(slice(0, s) for s in new.state_dict()[k].shape)].clone()
                for k, v in orig.state_dict().items()
            }
            new.load_state_dict(state)
    if isinstance(reduced, fx.GraphModule):  # get_attr tensors (ConvNeXt's layer scale)
        for name, p in reduced.named_parameters(recurse=False):
            source = _find_tensor(original, scope, name)
            if source is None:
                continue
            index = tuple(
                ranks.take(d, s) if d > 1 and d in ranks.sets else slice(0, s)
                for d, s in zip(source.shape, p.shape, strict=True)
            )
            value = source
            for axis, ix in enumerate(index):
                value = value.index_select(axis, ix) if isinstance(ix, Tensor) else value.narrow(axis, 0, p.shape[axis])
            p.copy_(value)


def _find_tensor(original: nn.Module, scope: str, local: str) -> Tensor | None:
    root = original.get_submodule(scope) if scope else original
    for rel, t in list(root.named_parameters()) + list(root.named_buffers()):
        if rel.replace(".", "_") == local or rel.replace(".", "_").endswith("_" + local):
            return t
    return None


def _ensure(ranks: _Rankings, size: int, make: Any) -> Tensor:
    if size not in ranks.sets:
        ranks.sets[size] = make()
    return ranks.sets[size]


def _scope(name: str) -> str:
    """The module under which a block's layers live: the block, or the module holding an inline block."""
    return name.partition(":")[0] if ":" in name else name


def copy_important(
    mod: MoDBlock, original: nn.Module, name: str, *, by: ImportanceBy, noise: float
) -> tuple[list[int], Tensor]:
    """``importance``: the reduced block takes the original block's most important channels and the
    selector is set to prefer them. Returns (the k preferred channels in order, the prior logits (C,))."""
    scope = _scope(name)
    try:
        original.get_submodule(scope) if scope else original
    except AttributeError:
        raise ModifyError(
            f"the original model has no module {scope!r} (MoD block "
            f"{name!r}); pass the model that was converted as original=."
        ) from None
    branch = reduced_branch(mod)
    pairs = _counterparts(branch, original, scope)
    ranks = _Rankings(by)
    inputs = _input_layers(branch.graph, pairs) if isinstance(branch, fx.GraphModule) else list(pairs.values())[:1]
    ranking = _rank_inputs(inputs, mod.channels)  # (C,) most important first
    ranks.sets[mod.channels] = _in_slot_order(mod, ranking)
    _copy_part(branch, original, scope, ranks)
    _own_channel_order(branch, ranks.sets[mod.channels])
    post = getattr(mod.block, "post", None) if mod.form is BlockForm.WHOLE else None
    if post is not None and any(True for _ in post.parameters()):
        _copy_part(post, original, scope, ranks)
    prior = _prior_selector(mod, ranking, noise)
    return [int(i) for i in ranking[: mod.k]], prior


def _own_channel_order(branch: nn.Module, copied: Tensor) -> None:
    """Puts channel c's weights at position c in the C-wide layers of a per-channel branch
    (``weights="channel"``), which `_copy_part` filled in the order ``copied`` (C,) of the block's
    C channels: position j held channel ``copied[j]``."""
    back = torch.argsort(copied)  # position of channel c in the copy
    for m in branch.modules():
        if isinstance(m, ChannelConv2d):
            m.weight.copy_(m.weight[:, back] if m.side == "in" else m.weight[back])
            if m.bias is not None and m.side == "out":
                m.bias.copy_(m.bias[back])
        elif isinstance(m, ChannelNorm2d):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    t.copy_(t[back])


def _in_slot_order(mod: MoDBlock, ranking: Tensor) -> Tensor:
    """``ranking`` (C,) with its first k in the order the selector feeds them to the reduced block,
    so slot j's weights are those of the channel slot j receives. In score order slot j gets the
    j-th highest score, which the prior gives the j-th most important channel: ``ranking`` as is.
    In index order, and from a static selector, the k channels arrive in ascending index."""
    k = mod.k
    ascending = isinstance(mod.selector, StaticSelector) or mod.selector.order is SelectionOrder.INDEX
    return torch.cat([ranking[:k].sort().values, ranking[k:]]) if ascending else ranking


def copy_leading(mod: MoDBlock, original: nn.Module, name: str) -> None:
    """``copy``: the reduced block takes the original block's leading channels (what `modify.convert`
    with init="copy" cuts), and the selector starts fresh."""
    scope = _scope(name)
    branch = reduced_branch(mod)
    ranks = _Rankings(ImportanceBy.BN)
    pairs = _counterparts(branch, original, scope)
    tensors = [t for m in pairs.values() for t in m.state_dict().values()]
    if isinstance(branch, fx.GraphModule):
        tensors += [
            t for n, _ in branch.named_parameters(recurse=False) if (t := _find_tensor(original, scope, n)) is not None
        ]
    for t in tensors:
        for d in t.shape:
            ranks.sets.setdefault(int(d), torch.arange(int(d)))  # every ranking the identity: leading channels
    _copy_part(branch, original, scope, ranks)
    post = getattr(mod.block, "post", None) if mod.form is BlockForm.WHOLE else None
    if post is not None and any(True for _ in post.parameters()):
        _copy_part(post, original, scope, ranks)
    if isinstance(mod.selector, ChannelSelector):
        mod.selector.fc1.reset_parameters()
        mod.selector.fc2.reset_parameters()


# Prior logits: the chosen channels at +3 .. +2 (scores 0.95 .. 0.88, in importance order), the rest at -3.
_HIGH, _LOW, _SPREAD = 3.0, -3.0, 1.0


def _prior_selector(mod: MoDBlock, ranking: Tensor, noise: float) -> Tensor:
    """Sets the selector to rank ``ranking[:k]`` first (a static selector: to take exactly
    those); returns the prior logits (C,)."""
    sel = mod.selector
    c, k = mod.channels, mod.k
    v = torch.full((c,), _LOW)
    v[ranking[:k]] = _HIGH - _SPREAD * torch.arange(k, dtype=torch.float32) / max(1, k)
    if isinstance(sel, StaticSelector):
        sel.set_channels(ranking[:k])
        return v
    _set_prior(sel, v, sign=1.0, magnitude=1.0)
    sel.fc2.weight[:, 1:].mul_(noise)
    return v


def _set_prior(sel: nn.Module, v: Tensor, *, sign: float, magnitude: float) -> None:
    """Hidden unit 0 = relu(a * mean of the pooled input), fc2's column 0 = v / (a * magnitude),
    so logit_i = v_i for an input of mean ``magnitude``.

    The product is what the prior needs; the split between the two factors decides how fast
    training moves them. With a = 1 / C and the logits in fc2, one step of SGD on a block whose
    output hurts moves a by far more than a itself, unit 0 dies (its ReLU never fires again) and
    every score sits at sigmoid(0) = 0.5 from then on: within 1 to 5 steps at lr 0.002-0.02 on a
    ResNet-18. Balancing the factors (a per channel as large as fc2's entries) makes each step
    change both by the same small share.
    """
    c = v.numel()
    balance = math.sqrt(float(v.abs().max()) * c / magnitude)  # a = balance / C, fc2 = v / (magnitude * balance)
    sel.fc1.weight[0].fill_(sign * balance / c)
    sel.fc2.weight[:, 0].copy_(v / (magnitude * balance))


def scale_selectors(model: nn.Module, blocks: list[MoDBlock], priors: dict[int, Tensor], data: Tensor) -> None:
    """Measures each block's pooled input mean on ``data`` and scales its prior to it."""
    seen = block_inputs(model, blocks, data, lambda x: x.mean(dim=(1, 2, 3)))  # (N,) channel mean of the pooled input
    means = {id(b): m.tolist() for b, m in zip(blocks, seen, strict=True)}
    for b in blocks:
        values = means[id(b)]
        prior = priors.get(id(b))
        if not values or prior is None or not isinstance(b.selector, ChannelSelector):
            continue
        positive = sum(v > 0 for v in values) >= len(values) / 2
        magnitude = statistics.median(abs(v) for v in values)
        if not math.isfinite(magnitude) or magnitude <= 0:
            continue
        _set_prior(b.selector, prior, sign=1.0 if positive else -1.0, magnitude=magnitude)
