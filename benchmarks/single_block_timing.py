"""How much a single-block speed-up moves with the timing context: one block of a trained model
narrowed, deleted or made MoD (the rest as trained; the arms of `benchmarks/block_table.py`,
built as `modify compare` builds them), timed against the original first alone and then all
together in shared interleaved rounds (`modify.measure.benchmark.bench_many`), batch 1, one
thread. Prints the median of the per-round speed-ups of each.

    python benchmarks/single_block_timing.py resnet18_fmnist32.pt --block layer3.1
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import modify
from modify.conversion.pipeline import traced_sites
from modify.measure.benchmark import BenchCase, bench_many
from modify.study.candidates import Candidate, build_candidate


def block_arms(original: torch.nn.Module, block: str, fraction: float, input_size: int) -> dict[str, Candidate]:
    """benchmarks/block_table.py's arms for ``block`` at ``fraction`` (narrow first, then delete,
    MoD and keep; not static MoD, which times like MoD), keyed by label."""
    from block_table import arms

    _, sites = traced_sites(original, (torch.zeros(1, 3, input_size, input_size),))
    channels = {s.name: s.channels for s in sites if s.convertible}
    if block not in channels:
        raise SystemExit(f"--block {block!r} is not a convertible block; choose from {', '.join(channels)}")
    by_kind = {}
    for c in arms({block: channels[block]}, [fraction]):  # labels: "keep", "BLOCK delete", "BLOCK MoD k=K", ...
        words = c.label.split()
        by_kind[words[1] if len(words) > 1 else words[0]] = c
    return {by_kind[k].label: by_kind[k] for k in ("narrow", "delete", "MoD", "keep")}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint")
    p.add_argument("--block", default="layer3.1")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    original = modify.load(args.model).eval()
    models = {
        label: build_candidate(candidate, original, input_size=args.input_size, weights=False)[0]
        for label, candidate in block_arms(original, args.block, args.fraction, args.input_size).items()
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
