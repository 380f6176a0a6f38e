"""`optimize_for_inference`: the MoD path made fast without custom kernels.

- BatchNorm folded into the convolution before it (also inside the reduced blocks), so a
  reduced block's k-channel convolutions run without separate normalisation passes;
- in-place fusion (`enable_inplace_fusion`, which `modify.convert` and `modify.get_model` already
  apply): where a MoD block is the only reader of its input, the k processed channels are added
  into the input tensor itself (at inference, with gradients off) instead of building a new
  full-width tensor;
- optionally channels_last memory format, which speeds up convolutions on many CPUs.

The model keeps its class and module names; only conv/BN pairs and fusion flags change.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from modify.conversion.graph import module_calls
from modify.conversion.inplace import enable_inplace_fusion
from modify.conversion.tracing import trace_graph
from modify.layers import MoDBlock

__all__ = ["optimize_for_inference", "fold_batchnorm", "enable_inplace_fusion"]  # the last from conversion.inplace


def fold_batchnorm(model: nn.Module) -> int:
    """Folds every BatchNorm that directly follows a Conv2d (its only reader) into it, in place,
    in eval mode. Returns how many were folded.

    Raises:
        TraceError: torch.fx cannot trace the model (the message names the module).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> fold_batchnorm(m), type(m[1]).__name__
        (1, 'Identity')
    """
    model.eval()
    graph = trace_graph(model, into_mod_blocks=True)  # through MoD blocks: their reduced blocks fold too
    calls = module_calls(graph)
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[node.target] != 1 or calls[user.target] != 1:
            continue
        conv, bn = model.get_submodule(node.target), model.get_submodule(user.target)
        if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
            model.set_submodule(node.target, fuse_conv_bn_eval(conv, bn))
            model.set_submodule(user.target, nn.Identity())
            folded += 1
    return folded


def optimize_for_inference(
    model: nn.Module, *, fold_bn: bool = True, inplace_fusion: bool = True, channels_last: bool = False
) -> nn.Module:
    """A copy of ``model`` for fast eager inference (eval mode; call it under torch.inference_mode).

    Example:
        >>> import modify
        >>> fast = optimize_for_inference(modify.get_model("resnet18_mod"))
        >>> fast.layer1[1].fusion.inplace, type(fast.bn1).__name__
        (True, 'Identity')
    """
    model = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(model)
    if inplace_fusion:
        enable_inplace_fusion(model)
    else:
        for block in model.modules():
            if isinstance(block, MoDBlock):
                block.fusion.inplace = False
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
