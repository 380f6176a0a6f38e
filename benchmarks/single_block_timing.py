"""How much a single-block speed-up moves with the timing context: one block of a trained model
narrowed, deleted or made MoD (the rest as trained, architectures as `modify compare` builds
them), timed against the original first alone and then all together in shared interleaved
rounds (`modify.measure.benchmark.bench_many`), batch 1, one thread. Prints the median of the
per-round speed-ups of each.

    python benchmarks/single_block_timing.py resnet18_fmnist32.pt --block layer3.1 --channels 256
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import modify
from modify.measure.benchmark import BenchCase, bench_many
from modify.study.candidates import Candidate, build_candidate


def arms(block: str, channels: int, fraction: float) -> dict[str, dict[str, object]]:
    """keep, delete, MoD and narrow of ``block`` at ``fraction`` of its ``channels``."""
    return {
        f"narrow {fraction:g}": {"name": block, "action": "narrow", "fraction": fraction},
        "delete": {"name": block, "action": "delete"},
        f"MoD k={int(channels * fraction)}": {"name": block, "action": "mod", "k": int(channels * fraction)},
        "keep": {"name": block, "action": "keep"},
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint")
    p.add_argument("--block", default="layer3.1")
    p.add_argument("--channels", type=int, default=256, help="the block's channels C")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    original = modify.load(args.model).eval()
    models = {
        label: build_candidate(
            Candidate("mixed", label, recipe={"version": 2, "rules": [rule]}),
            original,
            input_size=args.input_size,
            weights=False,
        )[0]
        for label, rule in arms(args.block, args.channels, args.fraction).items()
    }
    first = next(iter(models))
    for group in ([first], list(models)):
        results = bench_many(
            {k: models[k] for k in group},
            original,
            cases=[BenchCase(batch_size=1, threads=1)],
            input_size=args.input_size,
            rounds=args.rounds,
            min_run_time=0.3,
        )
        medians = {k: f"{statistics.median(v[0].round_speedups):.3f}x" for k, v in results.items()}
        print(f"timed together: {', '.join(group)} -> {medians}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
