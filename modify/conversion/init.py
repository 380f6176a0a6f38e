"""How a converted model's MoD blocks start: the strategies applied after `modify.convert`.

    result = modify.convert(model, c=64)
    report = modify.conversion.init.initialize(result, "importance", original=model)

Four strategies (`modify.layers.Init`, the same words as ``modify convert --init`` and ``modify
finetune --init``), each rewriting the selector and the reduced block of every MoD block in
place; nothing outside the MoD blocks is touched. `modify.convert` applies them itself
(``init=...``); `initialize` applies one to a model converted earlier.

``scratch``
    Fresh weights, the paper's setting and `convert`'s default: convolutions Kaiming-normal
    (fan-out), norms at weight 1 / bias 0 with reset statistics, linear layers at PyTorch's
    default. Applying it to a model converted with ``init="copy"`` re-draws everything.

``copy``
    The original block's weights, its leading channels (exact when k = C), with a fresh
    selector: what `modify.convert` cuts with ``init="copy"``.

``zero``
    ``scratch``, then the last layer with parameters of the reduced block's residual branch (a
    BatchNorm in ResNets and MobileNets, else a convolution or a layer-scale tensor) gets weight
    and bias zero, so the branch outputs exactly zero, in training and in evaluation.
    What that makes the MoD block depends on its form:

    - ``branch`` form: the block computes ``post(fuse(x, s * 0)) = post(x)``: exactly the
      original block with its residual branch removed (for a ResNet, ``relu(x)``, which is ``x``
      since the block input is itself a ReLU output). This is "the original minus the converted
      block's contribution", exactly.
    - ``whole`` form (the project's default): the reduced block keeps its own identity
      shortcut and final activation, ``post(x_sel + branch(x_sel))``; with the branch at zero it
      is ``post(x_sel)``, and the MoD block adds ``s * post(x_sel)`` to the first k channels. No
      weight setting makes that exactly zero and still trainable (a score is a sigmoid, never 0;
      pushing the post-ReLU to 0 kills every gradient of the block), so in this form ``zero``
      means "the reduced block starts as its own shortcut": the added term is a score-weighted
      copy of the selected channels, bounded by them. The report's ``exact_zero`` says which
      case each block is in. Convert with a recipe whose ``mod: {form: branch}`` for the exact form.

``importance``
    Derived from the original block's weights:

    - The reduced block is the original block restricted to its most important channels. The
      block width C is ranked by how much the block reads each input channel (L1 norm of the
      weights of the first layer that reads the block input); every inner width d is ranked by
      the |scale| of the BatchNorm that normalises it (``by="bn"``, default) or by the L1 norm
      of the filters that produce it (``by="l1"``). Every dimension of one size in the block uses
      one ranking, so consecutive layers stay consistent (a Bottleneck's two inner widths share
      the first BatchNorm's ranking). The block's output rows are the same top-k channels it
      reads, matching its own shortcut (``x_sel + branch(x_sel)``); the fusion still adds them
      into the fixed slot (the first k channels), as the paper does. Slot j of the reduced block
      holds the weights of the channel the selector feeds it: the j-th most important in score
      order, the j-th smallest index of the k in index order and from a static selector.
    - The selector is set to rank those channels first, in importance order, for every input.
      fc2 has no bias, so a prior cannot be a constant; instead hidden unit 0 of fc1 becomes
      a multiple of the mean of the pooled input (positive after a ReLU), and fc2's column 0
      holds the prior logits, so logit_i = mean(x) * v_i ranks channels by v whatever the
      input's scale. The two factors are balanced (`_set_prior`): with all of the prior in fc2,
      the first fine-tuning steps killed unit 0 and left every score at 0.5. The
      other hidden units keep their random weights, shrunk by ``selector_noise``, so the
      selector is input-dependent from the start and fine-tuning can make it more so. With
      ``data`` (a batch of images), the mean is measured and the logits scaled so the chosen
      channels score about sigmoid(3) = 0.95 and the others sigmoid(-3) = 0.05; without it,
      unit scale is assumed. Limitation: a block whose input has negative channel means for
      most images (a linear residual stream, MobileNetV2) gets hidden unit 0 with the sign the
      data shows (or, without data, a positive sign that may leave unit 0 at zero, and then the
      selector ranks by its random units until fine-tuning moves it).
    - Grouped (not depthwise) convolutions fall back to the leading channels, as ``copy`` does.

With ``data`` (a batch of real images), every strategy ends by reviving the selector's dead
hidden units (`modify.conversion.selector_units.revive_selectors`): a fresh unit whose weights
make it negative on every image (common when the block input is a ReLU output, so every pooled
channel is >= 0) would output 0 and never get a gradient; with all of a selector's units dead
every score is 0.5 and the block selects no differently per image, however long it trains.
Such a unit's weights are negated, which makes it fire. The report counts them (``revived``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, fx, nn

from modify.conversion.from_original import ImportanceBy, copy_important, copy_leading, reduced_branch, scale_selectors
from modify.conversion.selector_units import collapse_selectors, revive_selectors
from modify.conversion.surgery import get_attribute
from modify.errors import ModifyError
from modify.layers import BlockForm, ChannelSelector, MoDBlock, ReducedBlock
from modify.layers.fresh import fresh_conv_
from modify.layers.options import Init

__all__ = [
    "Init",
    "ImportanceBy",
    "BlockInit",
    "InitReport",
    "initialize",
    "mod_blocks",
    "replaced_blocks",
    "zero_updates",
    "revive_dead_selectors",
    "collapse_dead_selectors",
    "set_to_deletion",
]


@dataclasses.dataclass(frozen=True)
class BlockInit:
    """What `initialize` did to one MoD block."""

    module: str  # where the MoD block lives in the converted model
    name: str  # the block's name in the original model
    channels: int  # C
    k: int
    form: str  # "whole" or "branch"
    zeroed: str | None = None  # the layer set to zero ("zero"), in the reduced branch
    exact_zero: bool | None = None  # "zero": the MoD block adds exactly nothing (branch form)
    preferred: tuple[int, ...] = ()  # "importance": the k channels the selector ranks first, in order
    revived: int = 0  # selector hidden units that fired on none of ``data``, sign-flipped to fire


@dataclasses.dataclass(frozen=True)
class InitReport:
    """The outcome of `initialize`."""

    strategy: Init
    blocks: tuple[BlockInit, ...]


def mod_blocks(result_or_model: Any) -> list[tuple[str, str, MoDBlock]]:
    """(module path, original block name, block) of every MoD block, in model order.

    With a `ConversionResult` the original names come from ``result.converted``; with a bare
    model they are taken to be the module paths (true for blocks that are modules of their own).
    """
    model = getattr(result_or_model, "model", result_or_model)
    names: dict[str, str] = {}
    for c in getattr(result_or_model, "converted", ()) or ():
        names[c.module] = c.name
    return [(path, names.get(path, path), m) for path, m in model.named_modules() if isinstance(m, MoDBlock)]


def replaced_blocks(result_or_model: Any) -> list[tuple[str, str, nn.Module]]:
    """(module path, original block name, module) of every block that has weights of its own
    after a conversion: MoD blocks and narrowed blocks (`modify.layers.ReducedBlock` outside a MoD
    block), in model order. Deleted blocks hold nothing to train."""
    model = getattr(result_or_model, "model", result_or_model)
    names = {c.module: c.name for c in getattr(result_or_model, "converted", ()) or ()}
    found: list[tuple[str, str, nn.Module]] = []
    inside: set[int] = set()
    for path, m in model.named_modules():
        if id(m) in inside or not isinstance(m, (MoDBlock, ReducedBlock)):
            continue
        inside.update(id(x) for x in m.modules())
        found.append((path, names.get(path, path), m))
    return found


def initialize(
    result_or_model: Any,
    strategy: Init | str,
    *,
    original: nn.Module | None = None,
    data: Tensor | None = None,
    by: ImportanceBy | str = ImportanceBy.BN,
    selector_noise: float = 0.1,
) -> InitReport:
    """Re-initialises every MoD block of a converted model in place (see the module docstring).

    Args:
        result_or_model: a `ConversionResult` or its ``.model``.
        strategy: ``"scratch"``, ``"copy"``, ``"zero"`` or ``"importance"``.
        original: the model that was converted (``copy`` and ``importance`` read its blocks' weights).
        data: optional images (N, 3, H, W): with them, every selector hidden unit that fires on
            none of them is sign-flipped so it fires (`modify.conversion.selector_units`), and
            the ``importance`` selector is scaled to them.
        by: how ``importance`` ranks inner channels, ``"bn"`` or ``"l1"``.
        selector_noise: ``importance`` shrinks the selector's other weights by this factor.

    Raises:
        ModifyError: ``importance`` without ``original``, or an original block that does not
            match its MoD block.

    Example:
        >>> import torchvision, modify
        >>> net = torchvision.models.resnet18(num_classes=10)
        >>> result = modify.convert(net, c=64, input_size=32)
        >>> report = initialize(result, "importance", original=net)
        >>> len(report.blocks[0].preferred), report.blocks[0].k
        (1, 1)
    """
    strategy = Init.from_str(strategy)
    by = ImportanceBy.from_str(by)
    model = getattr(result_or_model, "model", result_or_model)
    blocks = mod_blocks(result_or_model)
    if strategy in (Init.IMPORTANCE, Init.COPY) and original is None:
        raise ModifyError(
            f"init='{strategy}' reads the original blocks' weights; pass original=<the model before convert> "
            "(CLI: --teacher MODEL), or use init='zero' / 'scratch'."
        )
    done: list[BlockInit] = []
    priors: dict[int, Tensor] = {}
    with torch.no_grad():
        for path, name, mod in blocks:
            base = dict(module=path, name=name, channels=mod.channels, k=mod.k, form=mod.form.value)
            if strategy is Init.IMPORTANCE:
                assert original is not None
                preferred, priors[id(mod)] = copy_important(mod, original, name, by=by, noise=selector_noise)
                done.append(BlockInit(**base, preferred=tuple(preferred)))
            elif strategy is Init.COPY:
                assert original is not None
                copy_leading(mod, original, name)
                done.append(BlockInit(**base))
            else:
                _scratch(mod)
                if strategy is Init.ZERO:
                    zeroed = _zero_branch(reduced_branch(mod))
                    done.append(
                        BlockInit(**base, zeroed=zeroed, exact_zero=mod.form is BlockForm.BRANCH and zeroed is not None)
                    )
                else:
                    done.append(BlockInit(**base))
        if strategy is Init.IMPORTANCE and data is not None:
            scale_selectors(model, [b for _, _, b in blocks], priors, data)
    if data is not None:
        revived = revive_dead_selectors(result_or_model, data)
        done = [dataclasses.replace(d, revived=revived[d.module]) for d in done]
    return InitReport(strategy=strategy, blocks=tuple(done))


def revive_dead_selectors(result_or_model: Any, data: Tensor) -> dict[str, int]:
    """Sign-flips every selector hidden unit of the MoD blocks that fires on none of ``data``
    (N, 3, H, W) (`modify.conversion.selector_units`); returns block path -> units flipped.
    `initialize` does this whenever it is given data; a model converted with ``init="copy"``
    and not re-initialised needs it before training.

    Example:
        >>> import torchvision, modify
        >>> result = modify.convert(torchvision.models.resnet18(num_classes=10), c=64, input_size=32, init="copy")
        >>> sorted(revive_dead_selectors(result, torch.randn(4, 3, 32, 32)))
        ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    """
    model = getattr(result_or_model, "model", result_or_model)
    blocks = mod_blocks(result_or_model)
    flipped = revive_selectors(model, [b for _, _, b in blocks], data)
    return {path: n for (path, _, _), n in zip(blocks, flipped, strict=True)}


def collapse_dead_selectors(result_or_model: Any, data: Tensor) -> list[str]:
    """Replaces every MoD block's selector whose hidden units all stay silent on ``data``
    (N, 3, H, W) by the fixed set it picks at score 0.5 (`modify.conversion.selector_units.collapse_selectors`):
    the same outputs on that data, without the scoring. Returns the block paths collapsed.
    Use it after training (block distillation kills a ResNet's selectors: ``benchmarks/selector_fate.py``).

    Example:
        >>> import torchvision, modify
        >>> result = modify.convert(torchvision.models.resnet18(num_classes=10), c=64, input_size=32, init="copy")
        >>> sel = mod_blocks(result)[0][2].selector
        >>> with torch.no_grad():
        ...     _ = sel.fc1.weight.copy_(-sel.fc1.weight.abs())  # dead on inputs >= 0 (a ReLU's output)
        >>> collapse_dead_selectors(result, torch.randn(4, 3, 32, 32))
        ['layer1.1']
    """
    model = getattr(result_or_model, "model", result_or_model)
    return collapse_selectors(model, [(path, b) for path, _, b in mod_blocks(result_or_model)], data)


def set_to_deletion(block: nn.Module) -> str | None:
    """Zeroes the last layer of a replaced block's branch where that makes the block exactly its
    deletion: a MoD block in the ``branch`` form, or a narrowed block (``post(x + branch(x))``).
    Returns the layer zeroed, or None where no zero makes it the deletion (the ``whole`` form)."""
    with torch.no_grad():
        if isinstance(block, MoDBlock) and block.form is BlockForm.BRANCH:
            return _zero_branch(block.block)
        if isinstance(block, ReducedBlock):
            return _zero_branch(block.branch)
    return None


def zero_updates(result_or_model: Any) -> dict[str, str | None]:
    """Zeroes the last layer with parameters of every MoD block's reduced branch, whatever its
    weights were (copied, important channels): in the ``branch`` form each block then starts
    as its deletion, bit for bit, and trains away from it. Returns block -> the layer zeroed."""
    with torch.no_grad():
        return {path: _zero_branch(reduced_branch(mod)) for path, _, mod in mod_blocks(result_or_model)}


# -- scratch and zero ----------------------------------------------------------------------------


def _reset(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            fresh_conv_(m)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
        elif isinstance(m, (nn.Linear, nn.LayerNorm, nn.GroupNorm)):
            m.reset_parameters()
    if isinstance(module, fx.GraphModule):  # parameters the branch reads with get_attr (layer scale)
        for _, p in module.named_parameters(recurse=False):
            p.fill_(1e-6 if p.dim() else 1.0)


def _scratch(mod: MoDBlock) -> None:
    _reset(mod.block)
    if isinstance(mod.selector, ChannelSelector):
        mod.selector.fc1.reset_parameters()
        mod.selector.fc2.reset_parameters()


def _zero_branch(branch: nn.Module) -> str | None:
    """Zeroes the last layer with parameters of ``branch``; returns its name (None if there is none)."""
    last: tuple[str, Any] | None = None
    if isinstance(branch, fx.GraphModule):
        for node in branch.graph.nodes:
            if node.op == "call_module":
                m = branch.get_submodule(node.target)
                if any(True for _ in m.parameters(recurse=False)):
                    last = (str(node.target), m)
            elif node.op == "get_attr":
                value = get_attribute(branch, str(node.target))
                if isinstance(value, nn.Parameter):
                    last = (str(node.target), value)
    else:
        for n, m in branch.named_modules():
            if any(True for _ in m.parameters(recurse=False)):
                last = (n, m)
    if last is None:
        return None
    name, target = last
    if isinstance(target, nn.Parameter):
        target.zero_()
    else:
        for p in target.parameters(recurse=False):
            p.zero_()
    return name
