"""Where ResNet50-MoD's time goes: each block's median time in ResNet50 and in ResNet50-MoD, side by
side, batch 1, one thread, 224x224, with forward hooks (`modify.latency.block_latency`).

Run: python benchmarks/block_times.py [--repeats 10]
Prints the per-block table and the decomposition that bounds the batch-1 speed-up: the time the
converted blocks took in ResNet50, what they take as MoD blocks, and everything else.
"""

from __future__ import annotations

import argparse

import torch

import modify
from modify.latency import block_latency
from modify.layers import MoDBlock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
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


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
