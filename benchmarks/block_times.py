"""Where ResNet50-MoD's time goes: each block's median time in ResNet50 and in ResNet50-MoD, side by
side, batch 1, one thread, 224x224, with forward hooks (`modify.measure.latency.block_latency`); then the
ceiling measured directly, in eager PyTorch, at batch 1 on one thread and batch 32 on every core.

Run: python benchmarks/block_times.py [--repeats 10] [--rounds 5]
Prints the per-block table and the decomposition that bounds the batch-1 speed-up: the time the
converted blocks took in ResNet50, what they take as MoD blocks, and everything else. The ceiling
is "ResNet50 without the converted blocks" (each replaced by nn.Identity, as if MoD blocks cost
nothing) timed against ResNet50, interleaved like ResNet50-MoD against ResNet50.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import modify
from modify.measure.benchmark import BenchCase, bench
from modify.measure.latency import block_latency
from modify.layers import MoDBlock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds for the measured ceiling")
    args = parser.parse_args()
    baseline, model = modify.get_model("resnet50").eval(), modify.get_model("resnet50_mod").eval()
    names = ["conv1", "bn1", "relu", "maxpool"] + [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for i in range(n)]
    names += ["avgpool", "fc"]
    t_base, base = block_latency(baseline, names, repeats=args.repeats)
    t_mod, mod = block_latency(model, names, repeats=args.repeats)
    converted = {n for n in names if isinstance(model.get_submodule(n), MoDBlock)}
    print("| module | ResNet50 ms | ResNet50-MoD ms |\n|---|---|---|")
    for n in names:
        print(f"| {n}{' (MoD)' if n in converted else ''} | {base[n]:.2f} | {mod[n]:.2f} |")
    removed, as_mod = sum(base[n] for n in converted), sum(mod[n] for n in converted)
    print(f"\nwhole model: {t_base:.1f} vs {t_mod:.1f} ms, speed-up {t_base / t_mod:.2f}x")
    print(f"the {len(converted)} converted blocks: {removed:.1f} ms in ResNet50 ({100 * removed / t_base:.0f}% of its time), "
          f"{as_mod:.1f} ms as MoD blocks")
    print(f"speed-up if MoD blocks cost nothing: {t_base / (t_base - removed):.2f}x")

    without = modify.get_model("resnet50").eval()  # the same network minus the converted blocks
    for name in converted:
        without.set_submodule(name, nn.Identity())
    print("\nmeasured ceiling, eager PyTorch: ResNet50 without the converted blocks, and ResNet50-MoD, each vs ResNet50")
    print("| setting | ResNet50 ms | without blocks ms | ceiling | ResNet50-MoD ms | speed-up | share of the ceiling's saving |")
    print("|---|---|---|---|---|---|---|")
    for case in (BenchCase(1, 1), BenchCase(32, 0)):
        free = bench(without, baseline, cases=[case], rounds=args.rounds).results[0]
        real = bench(model, baseline, cases=[case], rounds=args.rounds).results[0]
        saved = (real.baseline_median - real.model_median) / (free.baseline_median - free.model_median)
        print(f"| {case.label()} | {real.baseline_median * 1e3:.1f} | {free.model_median * 1e3:.1f} | {free.speedup:.2f}x | "
              f"{real.model_median * 1e3:.1f} | {real.speedup:.2f}x | {100 * saved:.0f}% |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the hook table; bench sets each case's threads itself
    main()
