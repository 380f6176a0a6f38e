"""AOTInductor: a converted model compiled ahead of time into one package (``.pt2``) that
`torch._inductor.aoti_load_package` runs from Python, and AOTInductor's C++ runtime without it.

torch.export traces the model (a MoD block is plain TopK, gather, add and convolutions, with
shapes that never depend on the data), inductor generates C++/OpenMP kernels for the CPU (or
Triton kernels for a CUDA device) and compiles them with the machine's C++ compiler; the package
holds the compiled library and the weights. Compiling takes tens of seconds for a ResNet-18.

On a CPU the kernels are compiled for the thread count torch has at that moment
(`torch.get_num_threads`, every core by default): set it first for another deployment.

Example (compiling takes a while, so it is not run as a doctest):
    >>> import modify
    >>> report = export_aoti(modify.get_model("resnet18_mod"), "r18_mod.pt2", input_size=64)  # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4, AotiModule("r18_mod.pt2")(torch.randn(1, 3, 64, 64)).shape  # doctest: +SKIP
    (True, torch.Size([1, 1000]))
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from modify.deploy.export import ExportReport, failing_part, max_difference, trace_setup
from modify.errors import ExportError
from modify.io.files import atomic_write

__all__ = ["export_aoti", "cxx_compiler", "check_toolchain", "AotiModule", "COMPILER_HINT"]

COMPILER_HINT = "apt-get install g++ (or set CXX to a C++ compiler)"


def _missing_compiler(searched: Sequence[str]) -> ExportError:
    looked = f" (looked for {', '.join(searched)})" if searched else ""
    return ExportError(f"AOTInductor needs a C++ compiler: {COMPILER_HINT}{looked}.")


def cxx_compiler() -> str:
    """The C++ compiler inductor will call: the first of its search list
    (``torch._inductor.config.cpp.cxx``, which starts with ``$CXX`` when that is set) found on
    the PATH.

    Raises:
        ExportError: none is installed; the message names what to install.
    """
    from torch._inductor import config  # noqa: PLC2701 (AOTInductor's compiler setting lives only there)

    search = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    named = [c for c in search if c]
    for cxx in named:
        if shutil.which(cxx):
            return cxx
    if None in search and os.getenv("TORCH_INDUCTOR_INSTALL_GXX"):
        return "g++ (installed by inductor through conda)"  # inductor fetches one itself
    raise _missing_compiler(named)


def check_toolchain(device: str = "cpu") -> str:
    """What compiling for ``device`` ("cpu" or "cuda") needs, checked before any work: the C++
    compiler (`cxx_compiler`, returned) and, for "cuda", a CUDA device.

    Raises:
        ExportError: one line naming what is missing.
    """
    if device not in ("cpu", "cuda"):
        raise ExportError(f"device {device!r} is not one of cpu, cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("device 'cuda' needs a CUDA device, and torch sees none; compile for the cpu instead.")
    return cxx_compiler()


def _is_missing_compiler(e: BaseException) -> bool:
    """Whether inductor failed for want of a C++ compiler (possibly wrapped by its callers)."""
    from torch._inductor.exc import InvalidCxxCompiler  # noqa: PLC2701 (and its compiler error)

    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, InvalidCxxCompiler):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _fp32(device: str) -> Iterator[None]:
    """On a GPU, TF32 off while compiling and comparing: the check is against the CPU's fp32, and
    TF32 convolutions and matrix products differ from it by about 1e-3."""
    if device == "cpu":
        yield
        return
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


class AotiModule(nn.Module):
    """A compiled package behind an nn.Module call, so a benchmark times it like a model.

    Inputs are moved to the package's device and outputs come back on the CPU only when
    ``device`` is not the CPU.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        super().__init__()
        import torch._inductor

        self.runner = torch._inductor.aoti_load_package(os.fspath(path))
        self.device = device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device == "cpu":
            return self.runner(x)
        return self.runner(x.to(self.device)).cpu()


def export_aoti(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int = 224,
    dynamic_batch: bool = False,
    batch_sizes: Sequence[int] = (1, 2),
    real_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-4,
    device: str = "cpu",
    force: bool = False,
) -> ExportReport:
    """`torch.export.export`, compiled and packaged by ``torch._inductor.aoti_compile_and_package``,
    loaded back with ``torch._inductor.aoti_load_package`` and compared with PyTorch on random
    (and, if given, real) inputs, as `modify.deploy.export.export_onnx` does.

    Without ``dynamic_batch`` the package takes one batch size, the first of ``batch_sizes``.
    ``device`` is "cpu" or "cuda" (the package runs where it was compiled for; on "cuda" it is
    compiled and checked with TF32 off, so that it matches the CPU's fp32).

    Raises:
        ExportError: no C++ compiler (the message names what to install), no CUDA device for
            ``device="cuda"``, torch.export or inductor fails, or a difference exceeds ``tolerance``.
    """
    check_toolchain(device)  # before minutes of work
    model = model.eval()
    sizes, example, dynamic = trace_setup(batch_sizes, dynamic_batch, input_size)
    target_model = model if device == "cpu" else copy.deepcopy(model).to(device)
    try:
        with torch.no_grad():
            program = torch.export.export(target_model, (example.to(device),), dynamic_shapes=dynamic)
    except Exception as e:
        raise ExportError(f"torch.export could not export {type(model).__name__}: {failing_part(e)}.") from e

    def write(tmp: str) -> None:
        import torch._inductor

        try:
            with open(tmp, "wb") as f:  # a file object: the package may be named other than *.pt2
                torch._inductor.aoti_compile_and_package(program, package_path=f)
        except Exception as e:
            if _is_missing_compiler(e):
                raise _missing_compiler([]) from e
            raise ExportError(f"AOTInductor could not compile {type(model).__name__}: {failing_part(e)}.") from e

    with _fp32(device):
        target = atomic_write(path, write, force=force)
        compiled = AotiModule(target, device)
        worst = max_difference(model, compiled, sizes, input_size, real_inputs)
    if worst > tolerance:
        raise ExportError(
            f"the AOTInductor package differs from PyTorch by {worst:.2e} (> {tolerance:.0e}) on {str(target)!r}."
        )
    return ExportReport(str(target), "aoti", sizes, worst, (), dynamic_batch)
