"""What each selected channel bringing its own weights (``mod: {weights: channel}``) costs on the
clock: one block of a trained model made MoD with the reduced block's slot weights (the table's MoD
arm) and with its channels' own weights (block_probe.py's "own weights" arm), against static MoD
and deleting the block, the rest of the model as trained. All of them timed against the original
in shared interleaved rounds (`modify.measure.benchmark.bench_many`) at batch 1 and batch 32, one
thread; prints the median of the per-round speed-ups and writes them to ``--out`` as JSON.

    python benchmarks/channel_weights_timing.py resnet18_fmnist32.pt --cells layer2.1:64,layer3.1:64,layer4.1:64 -o DIR

Own weights gather k columns of the first convolution's weight and k rows of the last one's per
image (a batch of N runs as one convolution of N groups); the MACs are the slot build's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import modify
from modify.io.files import atomic_write_text
from modify.measure.benchmark import BenchCase, bench_many
from modify.study.candidates import build_candidate

sys.path.insert(0, str(Path(__file__).parent))
from block_probe import probes  # noqa: E402  (the arms exactly as block_probe.py fine-tunes them)

WANTED = ("MoD k={k}", "MoD k={k}, own weights", "static k={k}", "delete")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint")
    p.add_argument("--cells", default="layer2.1:64,layer3.1:64,layer4.1:64", help="BLOCK:K,...")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    original = modify.load(args.model).eval()
    found: dict[str, dict[str, float]] = {}
    for cell in args.cells.split(","):
        block, _, k = cell.partition(":")
        labels = [f"{block} {w.format(k=k)}" for w in WANTED]
        arms = {a.label: a for a in probes(block, int(k)) if a.label in labels}
        models = {
            label: build_candidate(arms[label], original, input_size=args.input_size, weights=False)[0]
            for label in labels
        }
        results = bench_many(
            models,
            original,
            cases=[BenchCase(batch_size=1, threads=1), BenchCase(batch_size=32, threads=1)],
            input_size=args.input_size,
            rounds=args.rounds,
            min_run_time=0.3,
        )
        for label, (b1, b32) in results.items():
            found[label] = {
                "batch1_speedup": statistics.median(b1.round_speedups),
                "batch32_speedup": statistics.median(b32.round_speedups),
            }
            print(
                f"{label}: batch 1 {found[label]['batch1_speedup']:.3f}x, "
                f"batch 32 {found[label]['batch32_speedup']:.3f}x",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "channel_weights_timing.json", json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
