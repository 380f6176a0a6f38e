"""Side-by-side CPU latency of MoD models and their baselines in eager PyTorch, torch.compile and
ONNX Runtime, at batch 1 on one thread and batch 32 on every core, with the MAC ratio as ceiling.

Run:  python benchmarks/deploy.py [--engines eager,optimized,compile,onnxruntime,aoti] [--rounds 7]

Pairs: the paper's ResNet50-MoD (every_other, c = 64) against ResNet50, and the every_other-
converted torchvision ResNet-18 against ResNet-18, at 224x224, eval, fp32. "eager" is each model as
built (MoD blocks fuse in place at inference as they come); "optimized" is eager after
`optimize_for_inference` applied to both models alike (BatchNorm folded, channels_last); "compile"
is `torch.compile` (inductor, static shapes); "onnxruntime" runs `modify.deploy.export.export_onnx`'s file
(fixed-slot fusion as a placement convolution) with ONNX Runtime's default optimisations; "aoti" an
AOTInductor package compiled for the case's batch and threads. All but "optimized" are
`modify.deploy.engines.prepare`'s, prepared before the timing (the seconds are printed). Each pair
is timed interleaved in this one process (`modify.measure.benchmark.bench`); the table shows median
milliseconds, baseline / model and ± half the interquartile range of the per-round speed-ups; a
row timed on a busy machine is followed by its warning.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from pairs import NAMES, pair
from torch import nn

from modify.deploy.engines import Engine, prepare
from modify.deploy.optimize import optimize_for_inference
from modify.measure.benchmark import BenchCase, bench
from modify.measure.profiling import profile_model

ENGINES = (*(e.value for e in Engine), "optimized")  # the library's engines, and this benchmark's extra


def engine(name: str, model: nn.Module, case: BenchCase, workdir: str, tag: str) -> nn.Module:
    """``model`` in `modify.deploy.engines.Engine` ``name``, or this benchmark's "optimized"."""
    if name == "optimized":
        return optimize_for_inference(model, channels_last=True)
    if name not in ENGINES:
        raise SystemExit(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    return prepare(model, name, batch=case.batch_size, threads=case.threads, workdir=workdir, tag=tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32, help="the throughput case's batch size")
    parser.add_argument("--pairs", default=",".join(NAMES), help=f"which pairs: {', '.join(NAMES)}")
    args = parser.parse_args()
    cases = (BenchCase(1, 1), BenchCase(args.batch, 0))
    torch._dynamo.config.recompile_limit = 64
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds")
    print(
        "| pair | engine | setting | model ms | baseline ms | speed-up | ± | MAC ratio | prepared s (model, baseline) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for label, model, baseline in map(pair, args.pairs.split(",")):
            ceiling = profile_model(baseline).macs / profile_model(model).macs
            for engine_name in args.engines.split(","):
                for case in cases:
                    if engine_name == "compile":
                        torch.compiler.reset()  # the models share torchvision's forward: compile each case afresh
                    seconds = []
                    for m, tag in ((model, "model"), (baseline, "baseline")):
                        started = time.perf_counter()
                        seconds.append((engine(engine_name, m, case, workdir, tag), time.perf_counter() - started))
                    (m, m_s), (b, b_s) = seconds
                    report = bench(m, b, cases=[case], rounds=args.rounds, min_run_time=args.min_run_time)
                    r = report.results[0]
                    print(
                        f"| {label} | {engine_name} | {case.label()} | {r.model_median * 1e3:.1f} | "
                        f"{r.baseline_median * 1e3:.1f} | {r.speedup:.2f}x | {r.spread:.2f} | {ceiling:.2f}x | "
                        f"{m_s:.1f}, {b_s:.1f} |",
                        flush=True,
                    )
                    if r.warning:
                        print(f"\nwarning: {label}, {engine_name}, {case.label()}: {r.warning}\n", flush=True)


if __name__ == "__main__":
    main()
