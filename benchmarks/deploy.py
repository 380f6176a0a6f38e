"""Side-by-side CPU latency of MoD models and their baselines in eager PyTorch, torch.compile and
ONNX Runtime, at batch 1 on one thread and batch 32 on every core, with the MAC ratio as ceiling.

Run:  python benchmarks/deploy.py [--engines eager,optimized,compile,onnxruntime] [--rounds 7]

Pairs: the paper's ResNet50-MoD (every_other, c = 64) against ResNet50, and the every_other-
converted torchvision ResNet-18 against ResNet-18, at 224x224, eval, fp32. "eager" is each model as
built (MoD blocks fuse in place at inference as they come); "optimized" is eager after
`optimize_for_inference` applied to both models alike (BatchNorm folded, channels_last); "compile"
is `torch.compile` (inductor, static shapes); "onnxruntime" runs `modify.deploy.export.export_onnx`'s file
(fixed-slot fusion as a placement convolution) with ONNX Runtime's default optimisations. Each pair
is timed interleaved in this one process (`modify.measure.benchmark.bench`); the table shows median
milliseconds and baseline / model.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch import nn

from pairs import NAMES, pair

from modify.deploy.engines import OrtModule
from modify.measure.benchmark import BenchCase, bench
from modify.deploy.optimize import optimize_for_inference
from modify.measure.profiling import profile_model


def engine(name: str, model: nn.Module, case: BenchCase, workdir: str, tag: str) -> nn.Module:
    if name == "eager":
        return model
    if name == "optimized":
        return optimize_for_inference(model, channels_last=True)
    if name == "compile":
        return torch.compile(model, dynamic=False)  # inductor's C++/OpenMP kernels, this case's shapes
    if name == "onnxruntime":
        return OrtModule(model, os.path.join(workdir, f"{tag}.onnx"), case.resolved_threads())
    raise SystemExit(f"unknown engine {name!r}; expected eager, optimized, compile, onnxruntime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="eager,optimized,compile,onnxruntime")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32, help="the throughput case's batch size")
    parser.add_argument("--pairs", default=",".join(NAMES), help=f"which pairs: {', '.join(NAMES)}")
    args = parser.parse_args()
    cases = (BenchCase(1, 1), BenchCase(args.batch, 0))
    torch._dynamo.config.recompile_limit = 64
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds")
    print("| pair | engine | setting | model ms | baseline ms | speed-up | MAC ratio |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for label, model, baseline in map(pair, args.pairs.split(",")):
            ceiling = profile_model(baseline).macs / profile_model(model).macs
            for engine_name in args.engines.split(","):
                for case in cases:
                    if engine_name == "compile":
                        torch.compiler.reset()  # the models share torchvision's forward: compile each case afresh
                    m = engine(engine_name, model, case, workdir, "model")
                    b = engine(engine_name, baseline, case, workdir, "baseline")
                    report = bench(m, b, cases=[case], rounds=args.rounds, min_run_time=args.min_run_time)
                    r = report.results[0]
                    print(f"| {label} | {engine_name} | {case.label()} | {r.model_median * 1e3:.1f} | "
                          f"{r.baseline_median * 1e3:.1f} | {r.speedup:.2f}x | {ceiling:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
