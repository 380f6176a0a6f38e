"""Where one block's time goes at batch 1: the block alone, as trained and as the planner builds
its choices (narrow, MoD, delete), run on the input it receives in the whole model, timed in
interleaved rounds, and its operators' self CPU time per call from `torch.profiler`.

Answers "why does narrowing this block save no time?": when most of a block's time is operators
whose cost does not fall with their width (a depthwise convolution's fixed cost on small maps), a
narrower block is barely faster, and only deleting it saves.

    python benchmarks/block_ops.py mobilenet_v2_fmnist64.pt --block features.9 --input-size 64 -o DIR

Prints per arm the median time per call over the rounds and the ratio to the original block, then
the operators that take most of the original's time, per call, for every arm; with ``-o`` the same
numbers in ``DIR/block_ops_BLOCK.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tb
from torch import nn

import modify
from modify.io.files import atomic_write_text
from modify.study.choices import Choice
from modify.study.latency import Setting
from modify.study.planner import PlanConfig, build_plan
from modify.train.distill import record_blocks


def arms(
    original: nn.Module, block: str, channels: int, input_size: int, fractions: list[float]
) -> dict[str, nn.Module]:
    """The block as trained, narrowed at each fraction, MoD at each fraction and deleted, each
    taken out of a model the planner builds from its `Choice` (architecture only: the time does
    not depend on the weights)."""
    config = PlanConfig(speedup=1.5, setting=Setting(batch=1, threads=1, input_size=input_size))
    choices = [Choice(block, a, f) for a in ("narrow", "mod") for f in fractions] + [Choice(block, "delete")]
    out = {"original": original.get_submodule(block)}
    for choice in choices:
        model = build_plan(original, {"version": 2, "rules": [choice.rule(channels)]}, config, weights=False)
        label = choice.action if choice.fraction is None else f"{choice.action} {choice.fraction:g}"
        out[label] = model.get_submodule(block).eval()
    return out


def op_times(module: nn.Module, x: torch.Tensor, calls: int) -> dict[str, float]:
    """Self CPU microseconds per call of ``module`` for each aten operator."""
    with torch.no_grad(), torch.profiler.profile() as prof:
        for _ in range(calls):
            module(x)
    return {e.key: e.self_cpu_time_total / calls for e in prof.key_averages() if e.key.startswith("aten::")}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint")
    p.add_argument("--block", required=True)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--fractions", default="0.5,0.125", help="narrow and MoD shares (comma-separated)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=200, help="profiled calls per arm and round")
    p.add_argument("-o", "--out", help="folder for the JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    original = modify.load(args.model).eval()
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.block not in dict(original.named_modules()):
        raise SystemExit(f"--block {args.block!r}: no such module (`modify blocks MODEL` lists the blocks)")
    image = torch.randn(1, 3, args.input_size, args.input_size)
    x, _ = record_blocks(original, [args.block], [image], images=1)[args.block]  # what the block receives: (1, C, H, W)
    modules = arms(original, args.block, x.shape[1], args.input_size, fractions)
    times: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with torch.no_grad():
        for _ in range(args.rounds):  # every arm once per round: the machine's drift hits all alike
            for label, module in modules.items():
                timer = tb.Timer("m(x)", globals={"m": module, "x": x}, num_threads=1)
                times[label].append(timer.blocked_autorange(min_run_time=0.2).median * 1e6)
                ops[label].append(op_times(module, x, args.calls))
    base = statistics.median(times["original"])
    result: dict[str, Any] = {"block": args.block, "input": list(x.shape), "setting": "batch 1, 1 thread, eager"}
    result["arms"] = {}
    print(f"{args.block}, input {tuple(x.shape)}, batch 1, one thread; median of {args.rounds} interleaved rounds")
    for label in modules:
        median = statistics.median(times[label])
        per_op = {k: statistics.median(r.get(k, 0.0) for r in ops[label]) for k in {k for r in ops[label] for k in r}}
        result["arms"][label] = {"us_per_call": median, "of_original": median / base, "op_us_per_call": per_op}
        print(f"  {label:12s} {median:8.1f} us per call  ({median / base:.2f} of the original)")
    top = sorted(result["arms"]["original"]["op_us_per_call"].items(), key=lambda kv: -kv[1])[:6]
    print("self CPU us per call under the profiler, the original's heaviest operators:")
    print("  " + f"{'operator':28s}" + "".join(f"{label:>12s}" for label in modules))
    for name, _ in top:
        cells = "".join(f"{result['arms'][label]['op_us_per_call'].get(name, 0.0):12.1f}" for label in modules)
        print(f"  {name:28s}{cells}")
    if args.out:
        path = Path(args.out) / f"block_ops_{args.block}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
