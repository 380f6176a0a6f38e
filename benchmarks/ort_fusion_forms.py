"""ONNX Runtime: every export form of the MoD fusion into a fixed slot against the current one (the
placement convolution, `x + Conv1x1(y, P)`), timed in one run, to choose `export_onnx`'s default.

Run: python benchmarks/ort_fusion_forms.py [--models resnet18_32,resnet18_224,resnet50,mobilenet_v2]
         [--forms concat,slice-scatter,scatter-add,pad,folded] [--cases 1x1,32x0] [--rounds 7]
         [--min-run-time 0.3] [--profile-runs 200]

For each model every form is exported (`modify.deploy.export.export_onnx(fusion=FORM)`, checked
against PyTorch) and run in its own ONNX Runtime session (CPU provider, the case's threads, default
optimisations). All forms of a model are timed in shared interleaved rounds against the placement
form (`modify.measure.benchmark.bench_many`: placement, every form in an order that rotates,
placement again), so a disturbance hits them all. The table gives median milliseconds, the ratio
placement time / form time (the median of per-round ratios: above 1 the form is faster), ± half
the interquartile range of those ratios, and the layout conversions ONNX Runtime inserted into its
optimised graph (ReorderInput / ReorderOutput nodes, each a copy of a whole activation between
NCHW and the blocked NCHWc layout: a count that does not depend on the machine's load). A row timed
on a busy machine is followed by `busy_warning`'s line: time again on a quiet machine.

Then, per model, where the time goes: ONNX Runtime's profiler at batch 1 and one thread, every
form's microseconds per run by operator type beside the placement form's (the sessions run
alternately).

Models (random weights): torchvision's ResNet-18 (10 classes) converted with the default recipe at
32x32 and at 224x224, the paper's ResNet50-MoD and MobileNetV2-MoD at 224x224.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile

import onnx
import onnxruntime as ort
import torch
from block_times import ort_times, parse_case, triple
from torch import nn

import modify
from modify.deploy.engines import OrtModule
from modify.deploy.export import ONNX_FUSION_FORMS, export_onnx
from modify.measure.benchmark import bench_many, spread

MODELS = ("resnet18_32", "resnet18_224", "resnet50", "mobilenet_v2")
CURRENT = "placement"
FORMS = tuple(f for f in ONNX_FUSION_FORMS if f != CURRENT)


def converted(name: str) -> tuple[str, int, nn.Module]:
    """(label, input size, converted model) for one of `MODELS`."""
    if name == "mobilenet_v2":
        return "MobileNetV2-MoD @224", 224, modify.get_model("mobilenet_v2_mod").eval()
    label, size, _, model, _ = triple(name)
    return label, size, model


def layout_conversions(path: str) -> int:
    """ReorderInput / ReorderOutput nodes in ONNX Runtime's optimised graph of the file at ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = f"{path}.optimized"
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return ops["ReorderInput"] + ops["ReorderOutput"]


def profiled_session(path: str, workdir: str, tag: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, f"ort_{tag}")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def breakdown(paths: dict[str, str], size: int, runs: int, workdir: str) -> None:
    """Microseconds per run of each operator type, each form beside the placement form."""
    sessions = {form: profiled_session(path, workdir, form.replace("-", "_")) for form, path in paths.items()}
    feed = torch.randn(1, 3, size, size).numpy()
    warmup = 10
    for _ in range(warmup + runs):
        for session in sessions.values():
            session.run(None, {session.get_inputs()[0].name: feed})
    times = {form: ort_times(session, warmup) for form, session in sessions.items()}
    forms = list(paths)
    ops = sorted({op for per_op, _ in times.values() for op in per_op}, key=lambda o: -times[CURRENT][0].get(o, 0.0))
    print("| operator (ONNX Runtime) | " + " | ".join(f"{f} us" for f in forms) + " |")
    print("|---|" + "---|" * len(forms))
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{times[f][0].get(op, 0.0):.1f}" for f in forms) + " |")
    print("| whole run (median) | " + " | ".join(f"{times[f][1]:.1f}" for f in forms) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--forms", default=",".join(FORMS), help=f"compared with {CURRENT}: {', '.join(FORMS)}")
    parser.add_argument("--cases", default="1x1,32x0", help="BATCHxTHREADS, comma-separated; 0 threads = every core")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--profile-runs", type=int, default=200, help="profiled runs per form ('0' for no breakdown)")
    args = parser.parse_args()
    forms = [f for f in args.forms.split(",") if f]
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise SystemExit(f"unknown form(s) {', '.join(unknown)}; expected some of {', '.join(FORMS)}")
    cases = [parse_case(c) for c in args.cases.split(",")]
    ort.set_default_logger_severity(3)  # the optimised graphs' "hardware specific" notice
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} "
        f"interleaved rounds; ratio = {CURRENT} ms / form ms (> 1: the form is faster)"
    )
    warnings = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            label, size, model = converted(name)
            paths, reports = {}, {}
            for form in (CURRENT, *forms):
                paths[form] = os.path.join(workdir, f"{name}_{form}.onnx")
                reports[form] = export_onnx(
                    model, paths[form], input_size=size, dynamic_batch=True, batch_sizes=(1, 2), force=True, fusion=form
                )
            conversions = {form: layout_conversions(path) for form, path in paths.items()}
            print("\n| model | setting | form | ms | ratio | ± | layout conversions | max abs diff |")
            print("|---|---|---|---|---|---|---|---|")
            for case in cases:
                threads = case.resolved_threads()
                sessions = {form: OrtModule(model, path, threads, export=False) for form, path in paths.items()}
                current = sessions.pop(CURRENT)
                results = bench_many(
                    sessions, current, cases=[case], input_size=size, rounds=args.rounds, min_run_time=args.min_run_time
                )
                first = next(iter(results.values()))[0]
                print(
                    f"| {label} | {case.label()} | {CURRENT} | {first.baseline_median * 1e3:.3f} | 1 | | "
                    f"{conversions[CURRENT]} | {reports[CURRENT].max_abs_diff:.1e} |"
                )
                for form, (r,) in results.items():
                    print(
                        f"| {label} | {case.label()} | {form} | {r.model_median * 1e3:.3f} | "
                        f"{statistics.median(r.round_speedups):.3f}x | {spread(r.round_speedups):.3f} | "
                        f"{conversions[form]} | {reports[form].max_abs_diff:.1e} |",
                        flush=True,
                    )
                if first.warning:
                    warnings.append(f"{label}, {case.label()}: {first.warning}")
                    print(f"\nwarning: {warnings[-1]}\n", flush=True)
            if args.profile_runs:
                print(f"\n{label}: ONNX Runtime's profiler, batch 1, one thread, {args.profile_runs} runs per form\n")
                breakdown(paths, size, args.profile_runs, workdir)
                print()
    if warnings:
        print(f"{len(warnings)} setting(s) above were timed on a busy machine: their ratios are rough.")


if __name__ == "__main__":
    main()
