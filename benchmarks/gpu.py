"""Side-by-side GPU latency of MoD models and their baselines: eager and torch.compile, fp32 and
fp16, batch 1 and 64, with a CUDA correctness check first.

Run (on a machine with a CUDA GPU):  python benchmarks/gpu.py [--rounds 5] [--budget 420] [--out DIR]

Pairs (benchmarks/pairs.py, as in benchmarks/deploy.py): the paper's ResNet50-MoD (every_other, c =
64) against ResNet50, and the every_other-converted torchvision ResNet-18 against ResNet-18, at
224x224, eval, random weights. Each pair is timed interleaved in this one process: per round, each
model's median over `torch.utils.benchmark.Timer.blocked_autorange` (which synchronises the GPU),
the order of the two models swapping every round; the table shows the median of the rounds and
baseline / model. torch.compile uses mode="reduce-overhead" (inductor kernels replayed as CUDA
graphs, what serves batch-1 latency) and a static batch: one compilation per model, dtype and batch.
Compiling takes most of the run, so cases whose compilation would start after ``--budget`` seconds
are listed as not run instead. Rows go to stdout and, with ``--out``, to DIR/gpu.md and DIR/gpu.json
as they are measured.

Needs torch, torchvision and this repository (no fvcore: the MAC ratios are in the CPU table).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from pairs import pair
from torch import nn
from torch.utils import benchmark

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def check_device(model: nn.Module, baseline: nn.Module, label: str, device: str) -> dict:
    """The MoD model on the device against the CPU in fp32, and in fp16 against fp32 (next to the
    baseline's fp16 error: top-k may pick other channels where fp16 rounding reorders near ties)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 224, 224)
    errors = {}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 for the check
    with torch.no_grad():
        for name, net in (("model", model), ("baseline", baseline)):
            cpu = net(x)
            gpu = copy.deepcopy(net).to(device)(x.to(device)).float().cpu()
            half = copy.deepcopy(net).to(device).half()(x.to(device).half()).float().cpu()
            errors[name] = ((gpu - cpu).abs().max().item(), (half - cpu).abs().max().item(), cpu.abs().max().item())
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return {
        "pair": label,
        "device_vs_cpu_fp32_max_abs": errors["model"][0],
        "fp16_vs_fp32_max_abs": errors["model"][1],
        "output_scale": errors["model"][2],
        "baseline_device_vs_cpu_fp32_max_abs": errors["baseline"][0],
        "baseline_fp16_vs_fp32_max_abs": errors["baseline"][1],
    }


def timed_rounds(model: nn.Module, baseline: nn.Module, x: torch.Tensor, rounds: int, min_run_time: float):
    timers = {
        "model": benchmark.Timer("m(x)", globals={"m": model, "x": x}),
        "baseline": benchmark.Timer("m(x)", globals={"m": baseline, "x": x}),
    }
    times: dict[str, list[float]] = {"model": [], "baseline": []}
    with torch.no_grad():
        for m in (model, baseline):  # warm-up: cuDNN autotuning, allocator, compilation
            for _ in range(3):
                m(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        for r in range(rounds):
            for key in ("model", "baseline") if r % 2 == 0 else ("baseline", "model"):
                times[key].append(timers[key].blocked_autorange(min_run_time=min_run_time).median)
    return statistics.median(times["model"]), statistics.median(times["baseline"]), times


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile for inference latency: inductor kernels replayed as CUDA graphs, static shapes."""
    return torch.compile(
        model, mode="reduce-overhead" if next(model.parameters()).is_cuda else "default", dynamic=False
    )


class Output:
    """Prints table rows and keeps them, with the raw rounds, in DIR/gpu.md and DIR/gpu.json."""

    def __init__(self, out: str | None, header: list[str]) -> None:
        self.out, self.lines, self.records = out, list(header), []
        for line in header:
            print(line, flush=True)

    def row(self, line: str, record: dict) -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.records.append(record)
        if self.out:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "gpu.md"), "w") as f:
                f.write("\n".join(self.lines) + "\n")
            with open(os.path.join(self.out, "gpu.json"), "w") as f:
                json.dump(self.records, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no compilation starts")
    parser.add_argument("--engines", default="eager,compile")
    parser.add_argument("--dtypes", default="fp32,fp16")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--pairs", default="resnet50,resnet18", help="which pairs: resnet50, resnet18")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script out")
    parser.add_argument("--out", default=None, help="folder for gpu.md and gpu.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; torch.cuda.is_available() is False here.")
    start = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.recompile_limit = 64  # every case compiles anew (reset below)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (script check only)"
    batches = [int(b) for b in args.batches.split(",")]
    header = [
        f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
        f"medians of {args.rounds} interleaved rounds; fp32 convolutions in TF32 (PyTorch's cuDNN default); "
        "compile = torch.compile(mode='reduce-overhead'): inductor + CUDA graphs",
        "",
        "| pair | engine | dtype | batch | model ms | baseline ms | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    built = {label: (model, baseline) for label, model, baseline in map(pair, args.pairs.split(","))}
    checks = [check_device(model, baseline, label, args.device) for label, (model, baseline) in built.items()]
    for c in checks:
        print(
            f"device check {c['pair']}: {args.device} vs CPU fp32 (TF32 "
            f"off) max |diff| {c['device_vs_cpu_fp32_max_abs']:.2e} "
            f"(baseline {c['baseline_device_vs_cpu_fp32_max_abs']:.2e}); "
            f"fp16 vs fp32 {c['fp16_vs_fp32_max_abs']:.2e} (baseline {c['baseline_fp16_vs_fp32_max_abs']:.2e}; "
            f"outputs up to {c['output_scale']:.2f})",
            flush=True,
        )
    out = Output(args.out, header)
    out.records.append({"checks": checks, "device": name, "torch": torch.__version__})
    engines = args.engines.split(",")
    for engine in engines:  # eager first: it is quick, and a budget cut then costs only compile rows
        for dtype_name in args.dtypes.split(","):
            for label, (model, baseline) in built.items():
                m = copy.deepcopy(model).to(args.device, DTYPES[dtype_name])
                b = copy.deepcopy(baseline).to(args.device, DTYPES[dtype_name])
                for batch in batches:
                    cells = f"| {label} | {engine} | {dtype_name} | {batch} |"
                    if engine == "compile" and time.perf_counter() - start > args.budget:
                        out.row(
                            f"{cells} not run | (time budget) | |",
                            {"pair": label, "engine": engine, "dtype": dtype_name, "batch": batch, "skipped": "budget"},
                        )
                        continue
                    mm, bm = (m, b) if engine == "eager" else (compiled(m), compiled(b))
                    if engine == "compile":
                        torch.compiler.reset()  # fresh caches: the models share torchvision's forward code
                    x = torch.randn(batch, 3, 224, 224, device=args.device, dtype=DTYPES[dtype_name])
                    t0 = time.perf_counter()
                    model_s, base_s, times = timed_rounds(mm, bm, x, args.rounds, args.min_run_time)
                    with torch.no_grad():
                        vs_eager = (mm(x).float() - m(x).float()).abs().max().item()  # 0 for eager itself
                    out.row(
                        f"{cells} {model_s * 1e3:.2f} | {base_s * 1e3:.2f} | {base_s / model_s:.2f}x |",
                        {
                            "pair": label,
                            "engine": engine,
                            "dtype": dtype_name,
                            "batch": batch,
                            "model_ms": model_s * 1e3,
                            "baseline_ms": base_s * 1e3,
                            "speedup": base_s / model_s,
                            "rounds_ms": {k: [v * 1e3 for v in vs] for k, vs in times.items()},
                            "model_vs_eager_max_abs": vs_eager,
                            "seconds_incl_compile": time.perf_counter() - t0,
                        },
                    )
                del m, b
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
