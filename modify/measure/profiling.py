"""Parameters and MACs of a model, per block; the only module that imports fvcore.

MACs follow fvcore's convention (one fused multiply-add is one MAC; convolutions, linear layers,
normalisation and adaptive pooling counted, most element-wise work not), which is within 1% of
the paper's counter on ResNets. fvcore would silently drop the operators a MoD block adds, so
`modify` registers handles of its own for them (see `MOD_OP_HANDLES`); every operator that is
still not counted is listed in the report rather than hidden.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from math import prod
from typing import Any

import torch
from torch import nn

__all__ = ["BlockCost", "ProfileReport", "profile_model", "MOD_OP_HANDLES", "CONVENTION"]

CONVENTION = (
    "fvcore MACs: conv, linear, norm, adaptive pooling; plus modify's handles, one MAC per output "
    "element for add, mul, sigmoid, top-k and scatter-add (none for index arithmetic)"
)


def _is_index(value: Any) -> bool:
    # Integer tensors hold channel indices: arithmetic on them (the gather's offsets) is no MAC.
    scalar = getattr(value.type(), "scalarType", lambda: None)()
    return scalar in ("Long", "Int", "Short", "Char", "Byte", "Bool")


def _numel_of_output(inputs: list[Any], outputs: list[Any]) -> int:
    # One operation per output element (element-wise arithmetic, score multiplication, fusion).
    from fvcore.nn.jit_handles import get_shape

    if _is_index(outputs[0]):
        return 0
    shape = get_shape(outputs[0])
    return prod(shape) if shape else 0


def _numel_of_input(inputs: list[Any], outputs: list[Any]) -> int:
    # One comparison per score for top-k; one evaluation per element for the sigmoid.
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(inputs[0])
    return prod(shape) if shape else 0


def _copy(inputs: list[Any], outputs: list[Any]) -> int:
    return 0  # data movement, no arithmetic


# aten operator -> handle. gather and cat are copies (0 MACs) and fvcore already ignores them;
# index_select (the channel gather) is a copy too.
MOD_OP_HANDLES = {
    "aten::index_select": _copy,
    "aten::topk": _numel_of_input,
    "aten::sort": _numel_of_input,
    "aten::sigmoid": _numel_of_input,
    "aten::mul": _numel_of_output,
    "aten::mul_": _numel_of_output,
    "aten::add": _numel_of_output,
    "aten::add_": _numel_of_output,
    "aten::scatter_add": _numel_of_output,
}


@dataclasses.dataclass(frozen=True)
class BlockCost:
    """One row of the per-block table."""

    name: str  # qualified module name ("layer3.1")
    type: str  # module class name ("MoDBlock", "Bottleneck")
    params: int  # parameters of the module
    macs: int  # MACs of the module for the profiled input
    k: int | None = None  # channels processed, for MoD blocks
    channels: int | None = None  # C of MoD blocks


@dataclasses.dataclass(frozen=True)
class ProfileReport:
    """What `profile_model` measured. The library returns it; the CLI renders it.

    Example:
        >>> report = profile_model(nn.Conv2d(3, 8, 3, bias=False), input_size=8)
        >>> report.params, report.macs   # 8*3*3*3 weights; 8*6*6 outputs * 27 MACs each
        (216, 7776)
    """

    model: str  # a label: the name the user gave, or the class name
    input_shape: tuple[int, ...]  # (N, C, H, W) the MACs are for
    params: int  # all parameters
    macs: int  # all counted MACs
    blocks: tuple[BlockCost, ...]  # per-block rows, in model order
    by_operator: dict[str, int]  # MACs per aten operator
    uncounted: dict[str, int]  # operators no handle counts -> how many calls
    convention: str = CONVENTION  # what a MAC means here
    macs_by_module: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)  # every module
    latency_ms: float | None = None  # measured median forward time (with latency=True)
    block_ms: dict[str, float] | None = None  # measured median time per block row

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (without the every-module table)."""
        data = dataclasses.asdict(self)
        data.pop("macs_by_module")
        data["input_shape"] = list(self.input_shape)
        return data


def _block_rows(model: nn.Module, macs_by_module: dict[str, int], depth: int) -> tuple[BlockCost, ...]:
    from modify.layers import MoDBlock

    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        is_mod = isinstance(module, MoDBlock)
        # A row per module down to `depth` levels, and every MoD block wherever it sits; nothing
        # inside a MoD block (its parts are in its own row).
        if (level <= depth or is_mod) and not any(name.startswith(r.name + ".") and r.type == "MoDBlock" for r in rows):
            if level < depth and any(True for _ in module.children()) and not is_mod:
                continue  # a container whose children are listed below it
            rows.append(
                BlockCost(
                    name=name,
                    type=type(module).__name__,
                    params=sum(p.numel() for p in module.parameters()),
                    macs=int(macs_by_module.get(name, 0)),
                    k=module.k if is_mod else None,
                    channels=module.channels if is_mod else None,
                )
            )
    return tuple(rows)


def profile_model(
    model: nn.Module,
    *,
    input_size: int | Sequence[int] = 224,
    batch_size: int = 1,
    in_channels: int = 3,
    depth: int = 2,
    label: str | None = None,
    latency: bool = False,
    threads: int = 1,
) -> ProfileReport:
    """Counts parameters and MACs of ``model`` (in eval mode) for one input.

    Args:
        model: any module taking one (N, C, H, W) tensor.
        input_size: H = W, or (H, W).
        batch_size: N.
        in_channels: C of the input.
        depth: module nesting depth of the per-block rows (MoD blocks always get a row).
        label: the name to show for the model.
        latency: also measure the forward time and each block row's time (batch ``batch_size``,
            ``threads`` threads), so each block's share of time can be set beside its share of MACs.

    Returns:
        A `ProfileReport`.
    """
    from fvcore.nn import FlopCountAnalysis

    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    shape = (batch_size, in_channels, h, w)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, (torch.zeros(shape),))
        analysis.set_op_handle(**MOD_OP_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit tracing deprecation and tracer chatter
            total = int(analysis.total())
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
            by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
            uncounted = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    blocks = _block_rows(model, by_module, depth)
    latency_ms = block_ms = None
    if latency:
        from modify.measure.latency import block_latency

        latency_ms, block_ms = block_latency(
            model, [b.name for b in blocks], input_size=h, batch_size=batch_size, threads=threads
        )
    return ProfileReport(
        model=label or type(model).__name__,
        input_shape=shape,
        params=sum(p.numel() for p in model.parameters()),
        macs=total,
        blocks=blocks,
        by_operator=by_operator,
        uncounted=uncounted,
        macs_by_module=by_module,
        latency_ms=latency_ms,
        block_ms=block_ms,
    )
