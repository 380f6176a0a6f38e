"""The engines a model can be timed in, each behind an ``nn.Module`` call, so the same
interleaved timing (`modify.measure.benchmark.bench_many`) measures every one of them.

- ``eager``: the model as it is (PyTorch's eager mode);
- ``compile``: `torch.compile` (inductor's generated C++/OpenMP kernels on a CPU), static shapes,
  compiled for the timing's input before any timing starts;
- ``onnxruntime``: the file `modify.deploy.export.export_onnx` writes, run by ONNX Runtime's CPU
  provider with the timing's thread count (needs the ``[onnx]`` extra);
- ``aoti``: an AOTInductor package (`modify.deploy.aoti.export_aoti`) compiled into a temporary
  folder for the timing's batch (static shapes, as ``compile``) and thread count, then loaded.

``compile`` and ``aoti`` need a C++ compiler on a CPU; without one `prepare` says what to
install in one line.

Example:
    >>> import torch
    >>> m = prepare(torch.nn.Conv2d(3, 4, 1), "eager", input_size=8)
    >>> m(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 4, 8, 8])
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from torch import nn

from modify.errors import ModifyError
from modify.layers.options import StrChoice

__all__ = ["Engine", "OrtModule", "prepare", "ONNX_HINT"]

ONNX_HINT = "pip install 'modify[onnx]' (onnx, onnxruntime, onnxscript)"


class Engine(StrChoice):
    """Where a model runs when it is timed."""

    EAGER = "eager"  # PyTorch eager mode
    COMPILE = "compile"  # torch.compile (inductor)
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime, CPU provider
    AOTI = "aoti"  # an AOTInductor package (torch.export + inductor, compiled ahead of time)


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an nn.Module call, so a benchmark times it like a model.

    The model is exported with `modify.deploy.export.export_onnx` (dynamic batch) to ``path``
    unless ``export=False`` (then the file at ``path`` is used).
    """

    def __init__(
        self, model: nn.Module, path: str, threads: int, *, input_size: int = 224, export: bool = True
    ) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModifyError(f"the onnxruntime engine needs ONNX Runtime: {ONNX_HINT}") from None
        from modify.deploy.export import export_onnx

        if export:
            export_onnx(model, path, input_size=input_size, dynamic_batch=True, batch_sizes=(1, 2), force=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


def prepare(
    model: nn.Module,
    engine: Engine | str,
    *,
    input_size: int = 224,
    batch: int = 1,
    threads: int = 1,
    workdir: str | None = None,
    tag: str = "model",
) -> nn.Module:
    """``model`` ready to be timed in ``engine`` (eval mode); compiled ones are compiled and run
    once on a (batch, 3, input_size, input_size) input here, so compiling stays out of the timing.

    Raises:
        ModifyError: a missing extra (ONNX Runtime) or C++ compiler (compile, aoti), with the
            line that installs it.
    """
    engine = Engine.from_str(engine)
    model = model.eval()
    if engine is Engine.EAGER:
        return model
    threads = threads or os.cpu_count() or 1
    if engine is Engine.ONNXRUNTIME:
        folder = workdir or tempfile.mkdtemp(prefix="modify-ort-")
        return OrtModule(
            model, os.path.join(folder, f"{tag}-{time.monotonic_ns()}.onnx"), threads, input_size=input_size
        )
    from modify.deploy.aoti import AotiModule, cxx_compiler, export_aoti

    cxx_compiler()  # inductor's CPU kernels are C++: say what to install rather than fail deep inside
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # both bake the thread count into their kernels
    try:
        if engine is Engine.COMPILE:
            compiled = torch.compile(model, dynamic=False)
            with torch.inference_mode():
                compiled(torch.randn(batch, 3, input_size, input_size))  # compiles for this shape
            return compiled
        folder = workdir or tempfile.mkdtemp(prefix="modify-aoti-")
        path = os.path.join(folder, f"{tag}-{time.monotonic_ns()}.pt2")
        export_aoti(model, path, input_size=input_size, batch_sizes=(batch,), force=True)  # checked against eager
        return AotiModule(path)
    finally:
        torch.set_num_threads(previous)
