"""Exporting converted models where users deploy them: ONNX (checked, then run in ONNX Runtime
and compared with PyTorch) and torch.export (saved, reloaded and compared); AOTInductor packages
(`modify.deploy.aoti`) build on the torch.export path.

A MoD block exports as plain operators (TopK, Gather, Mul, Add, Conv), since its shapes never
depend on the data: no custom kernels, no data-dependent guards. For ONNX the fusion into a fixed
slot is written by default as a 1x1 convolution with a residual input (`Fusion.placement`), which
ONNX Runtime runs in its blocked NCHWc layout; slicing and concatenating channels would force two
layout conversions of the whole activation per block. ``export_onnx(..., fusion=FORM)`` writes one
of the other forms of `ONNX_FUSION_FORMS` instead (the same numbers), so that
``benchmarks/ort_fusion_forms.py`` can time them against it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modify.errors import ExportError, first_line
from modify.io.files import atomic_write

__all__ = [
    "ExportError",
    "ExportReport",
    "export_onnx",
    "export_program",
    "fusion_form",
    "placement_fusion",
    "FORMATS",
    "ONNX_FUSION_FORMS",
    "max_difference",
    "trace_setup",
    "failing_part",
]

FORMATS = ("onnx", "torch-export", "aoti")  # aoti: modify.deploy.aoti.export_aoti
# How `export_onnx` writes a fusion into a fixed slot: `modify.layers.fusion.FIXED_SLOT_FORMS`, and
# "folded" (`modify.deploy.onnx_fusion.fold_placements`). "placement" is the default.
ONNX_FUSION_FORMS = ("placement", "concat", "slice-scatter", "scatter-add", "pad", "folded")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it reproduces PyTorch."""

    path: str  # the file written
    format: str  # "onnx", "torch-export" or "aoti"
    batch_sizes: tuple[int, ...]  # batch sizes compared
    max_abs_diff: float  # the largest |exported - PyTorch| over every comparison
    operators: tuple[str, ...] = ()  # ONNX operator types in the graph
    dynamic_batch: bool = False
    fusion: str | None = None  # ONNX: how fixed-slot fusions were written (ONNX_FUSION_FORMS)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _inputs(batch: int, input_size: int, real: torch.Tensor | None) -> list[torch.Tensor]:
    xs = [torch.randn(batch, 3, input_size, input_size)]
    if real is not None:
        xs.append(real[:batch] if real.shape[0] >= batch else real.repeat(batch, 1, 1, 1)[:batch])
    return xs


def max_difference(
    model: nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    sizes: Sequence[int],
    input_size: int,
    real: torch.Tensor | None,
) -> float:
    """The largest |exported(x) - model(x)| over random (and real) inputs at every batch size."""
    worst = 0.0
    with torch.no_grad():
        for batch in sizes:
            for x in _inputs(batch, input_size, real):
                worst = max(worst, float((exported(x) - model(x)).abs().max()))
    return worst


def trace_setup(
    batch_sizes: Sequence[int], dynamic_batch: bool, input_size: int
) -> tuple[tuple[int, ...], torch.Tensor, tuple[dict, ...] | None]:
    """(batch sizes to compare, example input to trace with, torch.export dynamic_shapes or None)."""
    sizes = tuple(batch_sizes) if dynamic_batch else tuple(batch_sizes[:1])
    # A batch of 1 would be specialised away by torch.export: trace a dynamic batch with 2.
    example = torch.randn(max(2, sizes[0]) if dynamic_batch else sizes[0], 3, input_size, input_size)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    return sizes, example, dynamic


def failing_part(e: BaseException) -> str:
    """The line of an exporter's error that names the unsupported operator, else its first line."""
    text = str(e).strip().splitlines()
    for line in text:
        low = line.lower()
        if "unsupported" in low or "not supported" in low or "aten::" in low or "aten." in low:
            return line.strip()[:200]
    return first_line(e, limit=200)


@contextlib.contextmanager
def fusion_form(model: nn.Module, form: str = "placement") -> Iterator[int]:
    """Within the block, every MoD fusion into a fixed slot is computed as ``form`` (one of
    `modify.layers.fusion.FIXED_SLOT_FORMS`; "placement": ``x + conv1x1(y, P)``).

    The placement weights are temporary non-persistent buffers (constants in an exported graph);
    the model is as before on exit. Yields how many fusions were switched.
    """
    from modify.layers import Fusion
    from modify.layers.fusion import FIXED_SLOT_FORMS
    from modify.layers.options import FusionSlot

    if form not in FIXED_SLOT_FORMS:
        raise ExportError(f"fusion form {form!r} is not one of {', '.join(FIXED_SLOT_FORMS)}.")
    fusions = [m for m in model.modules() if isinstance(m, Fusion) and m.slot is not FusionSlot.ORIGINAL]
    reference = next(model.parameters(), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else None
    for fusion in fusions:
        if form == "placement":
            fusion.register_buffer("placement_weight", fusion.placement(dtype, device), persistent=False)
        fusion.export_form = form
    try:
        yield len(fusions)
    finally:
        for fusion in fusions:
            fusion.export_form = None
            fusion._buffers.pop("placement_weight", None)


def placement_fusion(model: nn.Module) -> contextlib.AbstractContextManager[int]:
    """`fusion_form` with the placement convolution: ``x + conv1x1(y, P)``."""
    return fusion_form(model, "placement")


ONNX_HINT = "pip install 'modify[onnx]'"


def _onnx_packages() -> tuple[Any, Any]:
    """onnx and onnxruntime, or one line naming the extra that installs them (and onnxscript,
    which torch's ONNX exporter needs)."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)}: {ONNX_HINT} (or use --format torch-export).")
    import onnx
    import onnxruntime

    return onnx, onnxruntime


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int = 224,
    dynamic_batch: bool = False,
    batch_sizes: Sequence[int] = (1, 2),
    real_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-4,
    force: bool = False,
    fusion: str = "placement",
) -> ExportReport:
    """Exports to ONNX, checks the file with ``onnx.checker``, runs it in ONNX Runtime on the CPU
    and compares with PyTorch on random (and, if given, real) inputs.

    Without ``dynamic_batch`` the file has a fixed batch size, the first of ``batch_sizes``, and
    only that size is compared. ``fusion`` (one of `ONNX_FUSION_FORMS`) chooses the operators a
    MoD fusion into a fixed slot is written with: "placement" (``x + Conv1x1(y, P)``), "concat"
    (Slice, Add, Concat), "slice-scatter" (ScatterND), "scatter-add" (ScatterElements), "pad"
    (Pad, Add) or "folded" (the placement folded into the convolutions reading the block's
    output where only convolutions do, `modify.deploy.onnx_fusion`); the numbers are the same.

    Raises:
        ExportError: the exporter fails (the message names the operator or module), the checker
            rejects the file, or a difference exceeds ``tolerance``.
    """
    if fusion not in ONNX_FUSION_FORMS:
        raise ExportError(f"fusion form {fusion!r} is not one of {', '.join(ONNX_FUSION_FORMS)}.")
    onnx, ort = _onnx_packages()

    model = model.eval()
    sizes, example, dynamic = trace_setup(batch_sizes, dynamic_batch, input_size)
    kwargs: dict = {"dynamo": True, "input_names": ["input"], "output_names": ["output"]}
    if dynamic is not None:
        kwargs["dynamic_shapes"] = dynamic

    def write(tmp: str) -> None:
        try:
            traced = "placement" if fusion == "folded" else fusion
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), fusion_form(model, traced):
                program = torch.onnx.export(model, (example,), None, **kwargs)
            program.save(tmp)
        except Exception as e:
            raise ExportError(
                f"torch.onnx could not export {type(model).__name__}: {failing_part(e)}. "
                "Try --format torch-export, or report the operator."
            ) from e

    def write_folded(tmp: str) -> None:
        from modify.deploy.onnx_fusion import fold_placements

        write(tmp)
        proto = onnx.load(tmp)
        fold_placements(proto)
        onnx.save(proto, tmp)

    target = atomic_write(path, write_folded if fusion == "folded" else write, force=force)
    try:
        onnx.checker.check_model(str(target))
    except Exception as e:
        raise ExportError(f"onnx.checker rejected {str(target)!r}: {first_line(e)}") from e
    proto = onnx.load(str(target))
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = max_difference(
        model, lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]), sizes, input_size, real_inputs
    )
    if worst > tolerance:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {tolerance:.0e}) on {str(target)!r}.")
    ops = tuple(sorted({n.op_type for n in proto.graph.node}))
    return ExportReport(str(target), "onnx", sizes, worst, ops, dynamic_batch, fusion)


def export_program(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int = 224,
    dynamic_batch: bool = False,
    batch_sizes: Sequence[int] = (1, 2),
    real_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-5,
    force: bool = False,
) -> ExportReport:
    """`torch.export.export`, saved with `torch.export.save`, reloaded and compared with eager."""
    model = model.eval()
    sizes, example, dynamic = trace_setup(batch_sizes, dynamic_batch, input_size)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    except Exception as e:
        raise ExportError(f"torch.export could not export {type(model).__name__}: {failing_part(e)}.") from e
    target = atomic_write(path, lambda tmp: torch.export.save(program, tmp), force=force)
    reloaded = torch.export.load(str(target)).module()
    worst = max_difference(model, reloaded, sizes, input_size, real_inputs)
    if worst > tolerance:
        raise ExportError(f"the reloaded program differs from eager by {worst:.2e} (> {tolerance:.0e}).")
    return ExportReport(str(target), "torch-export", sizes, worst, (), dynamic_batch)


def suffix_for(fmt: str) -> str:
    """The file ending of ``fmt``: AOTInductor packages are .pt2 files too, named apart from
    torch.export's so that both can sit beside the checkpoint."""
    return {"onnx": ".onnx", "aoti": ".aoti.pt2"}.get(fmt, ".pt2")


def default_output(checkpoint: str, fmt: str) -> Path:
    return Path(checkpoint).with_suffix(suffix_for(fmt))
