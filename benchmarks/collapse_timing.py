"""What collapsing a dead selector saves on the clock: one block of a model made MoD as
`benchmarks/block_table.py` builds its MoD arm, its selector dead (as block-local distillation
leaves it on ResNet-18: ``benchmarks/selector_fate.py``), timed as it is and collapsed into the
fixed set it picks (`modify.conversion.init.collapse_dead_selectors`), beside the static MoD arm
(the same reduced block fed a fixed set at score 1), all against the original in shared
interleaved rounds (`modify.measure.benchmark.bench_many`), batch 1, one thread. Prints the
median per-round speed-up of each and writes them as JSON.

Speed does not depend on the weights: the selector is killed by hand (fc1 negative everywhere:
silent on the ReLU outputs these blocks read), and the collapse is checked to give the dead
model's outputs bit for bit on the timing batch.

    python benchmarks/collapse_timing.py resnet18 --input-size 32 -o benchmarks/results/collapse_timing_r18
    python benchmarks/collapse_timing.py resnet18_fmnist32.pt --blocks layer1.0 layer4.1 --fraction 0.25
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

import modify
from modify.conversion.init import collapse_dead_selectors, mod_blocks
from modify.conversion.pipeline import traced_sites
from modify.measure.benchmark import BenchCase, bench_many
from modify.study.candidates import build_candidate


def _original(source: str) -> torch.nn.Module:
    if Path(source).is_file():
        return modify.load(source).eval()
    return modify.get_model(source, num_classes=10).eval()  # weights=None: speed only


def _dead_and_collapsed(original: torch.nn.Module, candidate, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    dead = build_candidate(candidate, original, input_size=size, weights=False)[0].eval()
    with torch.no_grad():
        for _, _, block in mod_blocks(dead):
            block.selector.fc1.weight.copy_(-block.selector.fc1.weight.abs())
    collapsed = copy.deepcopy(dead)
    x = torch.rand(4, 3, size, size)
    if not collapse_dead_selectors(collapsed, x):
        raise SystemExit(f"{candidate.label}: the selector did not collapse")
    with torch.no_grad():
        if not torch.equal(dead(x), collapsed(x)):
            raise SystemExit(f"{candidate.label}: the collapsed model computes other numbers")
    return dead, collapsed


def main(argv: list[str]) -> dict:
    from block_table import mod_arm, static_arm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a checkpoint, or a model name (built with weights=None)")
    p.add_argument("--blocks", nargs="*", default=None, help="default: every convertible block")
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("-o", "--output", default=None, help="a folder for collapse_timing.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    size = args.input_size
    original = _original(args.model)
    _, sites = traced_sites(original, (torch.zeros(1, 3, size, size),))
    channels = {s.name: s.channels for s in sites if s.convertible}
    blocks = args.blocks or list(channels)
    unknown = [b for b in blocks if b not in channels]
    if unknown:
        raise SystemExit(f"--blocks {' '.join(unknown)}: not convertible blocks; choose from {', '.join(channels)}")
    rows = []
    for block in blocks:
        k = max(1, round(channels[block] * args.fraction))
        dead, collapsed = _dead_and_collapsed(original, mod_arm(block, k), size)
        static = build_candidate(static_arm(block, k), original, input_size=size, weights=False)[0].eval()
        models = {"MoD, dead selector": dead, "MoD, collapsed": collapsed, "static MoD": static}
        results = bench_many(
            models, original, cases=[BenchCase(batch_size=1, threads=1)], input_size=size, rounds=args.rounds
        )
        speedups = {name: statistics.median(r[0].round_speedups) for name, r in results.items()}
        ratio = statistics.median(
            d / c
            for d, c in zip(
                results["MoD, dead selector"][0].model_rounds, results["MoD, collapsed"][0].model_rounds, strict=True
            )
        )
        row = {"block": block, "channels": channels[block], "k": k, "speedup": speedups, "dead_over_collapsed": ratio}
        rows.append(row)
        shown = ", ".join(f"{n} {s:.3f}x" for n, s in speedups.items())
        print(f"{block} k={k}: {shown}; dead / collapsed time {ratio:.3f}", flush=True)
    out = {"model": args.model, "input_size": size, "fraction": args.fraction, "rounds": args.rounds, "rows": rows}
    if args.output:
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "collapse_timing.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
