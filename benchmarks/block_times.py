"""What MoD blocks cost against deleting them: the original, the converted model and the model with
the same blocks deleted (each replaced by its shortcut), timed interleaved in one process, in eager
PyTorch, `optimize_for_inference`, torch.compile, ONNX Runtime and AOTInductor; then where one MoD block's time
goes, step by step from torch.profiler, and what all MoD blocks add per operator type in ONNX
Runtime's profiler.

Run: python benchmarks/block_times.py [--models resnet50,resnet18_32,resnet18_224]
         [--engines eager,optimized,compile,onnxruntime,aoti] [--cases 1x1,32x0] [--rounds 5]
         [--min-run-time 0.3] [--breakdown resnet50:layer3.1,resnet18_32:layer1.1] [--hooks]

The share is (converted - deleted) / (original - deleted): what the MoD blocks still cost as a
fraction of the blocks they replace. The deleted-blocks model is the honest speed ceiling of a
conversion (everything else runs in both); the MAC ratio is printed beside it. Models: the paper's
ResNet50-MoD (every_other, c = 64) against torchvision's ResNet50 at 224x224, and torchvision's
ResNet-18 (10 classes) converted with the default recipe at 32x32 and at 224x224; random weights.
Each (model, engine, case) times the three models in shared rounds (`modify.measure.benchmark.bench_many`);
ms are medians, speed-ups are medians of per-round ratios, ± half the interquartile range of those
ratios; a row the machine was too busy for is followed by the warning of
`modify.measure.benchmark.busy_warning`. Engines are `modify.deploy.engines.Engine`'s (compiled
before the timing; the seconds are printed), plus "optimized". ``--hooks`` adds the old per-block hook
table of ResNet50 and ResNet50-MoD (`modify.measure.latency.block_latency`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import torch
import torchvision
from torch import nn

import modify
from modify.baselines import delete_blocks
from modify.deploy.engines import Engine, OrtModule, prepare
from modify.deploy.optimize import optimize_for_inference
from modify.layers import MoDBlock
from modify.layers.block import gather_channels
from modify.measure.benchmark import BenchCase, bench_many, spread
from modify.measure.latency import block_latency
from modify.measure.profiling import profile_model

MODELS = ("resnet50", "resnet18_32", "resnet18_224")
ENGINES = (*(e.value for e in Engine), "optimized")  # the library's engines, and this benchmark's extra


def triple(name: str) -> tuple[str, int, nn.Module, nn.Module, nn.Module]:
    """(label, input size, original, converted, deleted) for one of `MODELS`."""
    if name == "resnet50":
        original = modify.get_model("resnet50").eval()
        deleted = delete_blocks(original, recipe="every_other").model.eval()
        return "ResNet50 @224", 224, original, modify.get_model("resnet50_mod").eval(), deleted
    if name in ("resnet18_32", "resnet18_224"):
        size = int(name.split("_")[1])
        torch.manual_seed(0)
        original = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        converted = modify.convert(original, input_size=size).model.eval()
        deleted = delete_blocks(original, input_size=size).model.eval()
        return f"ResNet-18 @{size}", size, original, converted, deleted
    raise SystemExit(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def engine(name: str, model: nn.Module, case: BenchCase, size: int, workdir: str, tag: str) -> nn.Module:
    """``model`` in the engine ``name``: `modify.deploy.engines.Engine`'s, or this benchmark's
    "optimized" (eager after `optimize_for_inference`, channels_last)."""
    if name == "optimized":
        return optimize_for_inference(model, channels_last=True)
    if name == "onnxruntime":
        path = os.path.join(workdir, f"{tag}.onnx")  # exported once per model, a session per case
        return OrtModule(model, path, case.resolved_threads(), input_size=size, export=not os.path.exists(path))
    if name not in ENGINES:
        raise SystemExit(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    return prepare(model, name, input_size=size, batch=case.batch_size, threads=case.threads, workdir=workdir, tag=tag)


def parse_case(text: str) -> BenchCase:
    batch, threads = text.lower().split("x")
    return BenchCase(int(batch), int(threads))


def share_table(args: argparse.Namespace, workdir: str) -> None:
    cases = [parse_case(c) for c in args.cases.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds\n")
    print(
        "| model | engine | setting | original ms | converted ms | deleted ms | speed-up | ± | deleted speed-up "
        "(ceiling) | MAC ratio | share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    warnings, prepared = [], []
    for name in args.models.split(","):
        label, size, original, converted, deleted = triple(name)
        for stale in ("original", "converted", "deleted"):
            if os.path.exists(path := os.path.join(workdir, f"{stale}.onnx")):
                os.remove(path)
        macs = profile_model(original, input_size=size).macs / profile_model(converted, input_size=size).macs
        for engine_name in args.engines.split(","):
            for case in cases:
                if engine_name == "compile":
                    torch.compiler.reset()  # the three share torchvision's forward: compile each case afresh
                models = {}
                for tag, m in (("original", original), ("converted", converted), ("deleted", deleted)):
                    started = time.perf_counter()
                    models[tag] = engine(engine_name, m, case, size, workdir, tag)
                    if engine_name in ("compile", "aoti", "onnxruntime"):
                        prepared.append(
                            f"{label}, {engine_name}, {case.label()}: {tag} prepared in "
                            f"{time.perf_counter() - started:.1f} s"
                        )
                base = models.pop("original")
                r = bench_many(
                    models, base, cases=[case], input_size=size, rounds=args.rounds, min_run_time=args.min_run_time
                )
                conv, dele = r["converted"][0], r["deleted"][0]
                # Per round: (converted - deleted) / (original - deleted), the round's own three times.
                shares = [
                    (c - d) / (b - d)
                    for c, d, b in zip(conv.model_rounds, dele.model_rounds, conv.baseline_rounds, strict=True)
                ]
                print(
                    f"| {label} | {engine_name} | {case.label()} | {conv.baseline_median * 1e3:.2f} | "
                    f"{conv.model_median * 1e3:.2f} | {dele.model_median * 1e3:.2f} | "
                    f"{statistics.median(conv.round_speedups):.2f}x | {spread(conv.round_speedups):.2f} | "
                    f"{statistics.median(dele.round_speedups):.2f}x | "
                    f"{macs:.2f}x | {100 * statistics.median(shares):.0f}% |",
                    flush=True,
                )
                if conv.warning:
                    warnings.append(f"{label}, {engine_name}, {case.label()}: {conv.warning}")
                    print(f"\nwarning: {warnings[-1]}\n", flush=True)
    for line in prepared:
        print(f"\n{line}" if line is prepared[0] else line)
    if warnings:
        print(f"\n{len(warnings)} of the rows above were timed on a busy machine (see the warnings).")


def block_input(model: nn.Module, name: str, size: int) -> torch.Tensor:
    """The activation the block ``name`` receives in ``model`` at batch 1."""
    seen = {}
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    with torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    return seen["x"]


def torch_breakdown(block: MoDBlock, x: torch.Tensor, repeats: int) -> None:
    """The block's steps one after another under torch.profiler labels, as its forward runs them."""
    from torch.profiler import ProfilerActivity, profile, record_function

    sel = block.selector

    def steps() -> None:
        with record_function("selector pool"):
            pooled = sel.squeeze(x)
        with record_function("selector FCs + sigmoid"):
            s = sel.excite(pooled)
        with record_function("top-k"):
            scores, indices = sel.select(s)
        with record_function("gather"):
            picked = gather_channels(x, indices)
        with record_function("reduced block"):
            y = block.block(picked)
        with record_function("scaling + fusion"):
            block.fusion(x, y, indices, scores if block.scale else None)

    def whole() -> None:
        with record_function("whole block forward"):
            block(x)

    with torch.inference_mode():
        for _ in range(10):
            steps()
            whole()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                steps()
                whole()
    totals = collections.defaultdict(float)
    for e in prof.key_averages():
        if e.key in (
            "selector pool",
            "selector FCs + sigmoid",
            "top-k",
            "gather",
            "reduced block",
            "scaling + fusion",
            "whole block forward",
        ):
            totals[e.key] = e.cpu_time_total / repeats
    print("| step (torch.profiler) | us |\n|---|---|")
    for key, value in totals.items():
        print(f"| {key} | {value:.1f} |")


def ort_session(model: nn.Module, size: int, workdir: str, tag: str):  # -> onnxruntime.InferenceSession
    """One thread, ONNX Runtime's profiler on, on the file `modify.deploy.export.export_onnx` writes."""
    import onnxruntime as ort

    from modify.deploy.export import export_onnx

    path = os.path.join(workdir, f"profile_{tag}.onnx")
    export_onnx(model, path, input_size=size, dynamic_batch=True, batch_sizes=(1, 2), force=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, f"ort_{tag}")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_times(session, warmup: int) -> tuple[dict[str, float], float]:
    """Microseconds per run of each operator type after ``warmup`` runs, and the median run."""
    with open(session.end_profiling()) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][warmup:]
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[0]["ts"]:
            per_op[e["args"]["op_name"]] += e["dur"] / len(runs)
    return per_op, statistics.median(r["dur"] for r in runs)


def ort_breakdown(converted: nn.Module, deleted: nn.Module, size: int, repeats: int, workdir: str) -> None:
    """What the MoD blocks add in ONNX Runtime, per operator type: converted minus deleted, the two
    sessions run alternately at batch 1. (A block cannot be profiled alone: ONNX Runtime's blocked
    NCHWc layout between blocks, and the layout conversions a MoD block needs, exist only inside
    the whole graph.)"""
    sessions = {
        "converted": ort_session(converted, size, workdir, "converted"),
        "deleted": ort_session(deleted, size, workdir, "deleted"),
    }
    feed = torch.randn(1, 3, size, size).numpy()
    for _ in range(10 + repeats):
        for session in sessions.values():
            session.run(None, {session.get_inputs()[0].name: feed})
    (mod, t_mod), (rest, t_rest) = (ort_times(s, 10) for s in sessions.values())
    print("| operator (ONNX Runtime) | converted us | deleted us | added by the MoD blocks us |\n|---|---|---|---|")
    for op in sorted(set(mod) | set(rest), key=lambda o: -(mod.get(o, 0.0) - rest.get(o, 0.0))):
        print(
            f"| {op} | {mod.get(op, 0.0):.1f} | {rest.get(op, 0.0):.1f} | {mod.get(op, 0.0) - rest.get(op, 0.0):.1f} |"
        )
    print(f"| whole run (median) | {t_mod:.1f} | {t_rest:.1f} | {t_mod - t_rest:.1f} |")


def breakdowns(args: argparse.Namespace, workdir: str) -> None:
    torch.set_num_threads(1)
    for item in filter(None, args.breakdown.split(",")):
        model_name, block_name = item.split(":")
        label, size, _, converted, deleted = triple(model_name)
        block = converted.get_submodule(block_name)
        x = block_input(converted, block_name, size)
        print(f"\n{label} {block_name}: input {tuple(x.shape)}, k = {block.k}, batch 1, one thread")
        torch_breakdown(block, x, args.repeats)
        print(f"\n{label}, all MoD blocks in ONNX Runtime, batch 1, one thread")
        ort_breakdown(converted, deleted, size, args.repeats, workdir)


def hook_table(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    baseline, model = modify.get_model("resnet50").eval(), modify.get_model("resnet50_mod").eval()
    names = ["conv1", "bn1", "relu", "maxpool"] + [
        f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3), strict=True) for i in range(n)
    ]
    names += ["avgpool", "fc"]
    t_base, base = block_latency(baseline, names, repeats=args.repeats)
    t_mod, mod = block_latency(model, names, repeats=args.repeats)
    converted = {n for n in names if isinstance(model.get_submodule(n), MoDBlock)}
    print("\n| module | ResNet50 ms | ResNet50-MoD ms |\n|---|---|---|")
    for n in names:
        print(f"| {n}{' (MoD)' if n in converted else ''} | {base[n]:.2f} | {mod[n]:.2f} |")
    removed, as_mod = sum(base[n] for n in converted), sum(mod[n] for n in converted)
    print(
        f"\nwhole model: {t_base:.1f} vs {t_mod:.1f} ms; the {len(converted)} converted blocks: {removed:.1f} ms in "
        f"ResNet50, {as_mod:.1f} ms as MoD blocks"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--cases", default="1x1,32x0", help="BATCHxTHREADS, comma-separated; 0 threads = every core")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument(
        "--breakdown",
        default="resnet50:layer3.1,resnet18_32:layer1.1",
        help="MODEL:BLOCK pairs to break down per operator ('' for none)",
    )
    parser.add_argument("--repeats", type=int, default=50, help="profiled forwards per breakdown / hook repeats")
    parser.add_argument("--hooks", action="store_true", help="also the per-block hook table of ResNet50(-MoD)")
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64
    with tempfile.TemporaryDirectory() as workdir:
        if args.models and args.engines and args.cases:
            share_table(args, workdir)
        breakdowns(args, workdir)
    if args.hooks:
        hook_table(args)


if __name__ == "__main__":
    main()
