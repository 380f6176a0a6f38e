"""How much of each residual block's update a MoD block could carry at best.

    python benchmarks/block_capacity.py resnet18_fmnist.pt --data fashion-mnist --images 512
    python benchmarks/block_capacity.py mobilenet_v2_fmnist64.pt --input-size 64 --blocks all --fractions 0.125,0.25,0.5

A MoD block (fused into the selected channels' own positions) changes k of C channels and leaves
the rest as they came in. For each block of the recipe, on a trained model, this prints the share
of the block's update energy sum_c ||out_c - in_c||^2 that lies in

- the k channels each image's block changes most (the best any selector could pick per image),
- the k channels that carry the most on average (the best static choice: a pruned block),

at k = C/4 and C/2 (``--fractions``), for the blocks a recipe converts (``--recipe``) or named
ones (``--blocks``; ``all``: every block `modify.convert` can convert). A reduced block sees only
its k channels, so even these shares are upper bounds on what it can reproduce. Prints; writes
nothing.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader

import modify
from modify.conversion.pipeline import traced_sites
from modify.io.resolve import resolve_model
from modify.train.data import load_dataset
from modify.train.distill import record_blocks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained model: a modify checkpoint or a name")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--recipe", default="every_other", help="which blocks (a recipe name or YAML file)")
    p.add_argument("--blocks", default=None, help="comma-separated block names, or all (instead of --recipe)")
    p.add_argument("--fractions", default="0.25,0.5")
    p.add_argument("--input-size", type=int, default=None, help="image size (default: the dataset's)")
    args = p.parse_args(argv)
    model, _ = resolve_model(args.model)
    data = load_dataset(args.data, split="train", limit=args.images, size=args.input_size)
    size = int(data[0][0].shape[-1])
    if args.blocks == "all":
        _, sites = traced_sites(model, (torch.zeros(1, 3, size, size),))
        blocks = [s.name for s in sites if s.convertible]
    elif args.blocks:
        blocks = args.blocks.split(",")
    else:
        blocks = [b.name for b in modify.convert(model, recipe=args.recipe, input_size=size).converted]
    recorded = record_blocks(model, blocks, DataLoader(data, batch_size=128), args.images)
    print(f"{'block':<12} {'k/C':>5} {'per-image top-k':>16} {'best static k':>14}")
    for name, (x, y) in recorded.items():
        energy = (y - x).pow(2).sum((2, 3))  # (M, C) the block's update per channel
        total = energy.sum(1)  # (M,)
        for fraction in (float(f) for f in args.fractions.split(",")):
            k = max(1, int(energy.shape[1] * fraction))
            dynamic = energy.topk(k, dim=1).values.sum(1) / total  # (M,)
            static = energy[:, energy.mean(0).topk(k).indices].sum(1) / total
            print(f"{name:<12} {fraction:>5g} {dynamic.mean().item():>16.3f} {static.mean().item():>14.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
