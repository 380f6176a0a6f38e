"""The README's table of supported families: parameters and MACs before and after the default
recipe (every_other with the family's capacity), one representative model per family, 224x224.

Run: python benchmarks/families_table.py [--models resnet50,mobilenet_v2,...]
Prints a Markdown table. MACs are fvcore's convention plus modify's handles (see README).
"""

from __future__ import annotations

import argparse

import torch

import modify
from modify.profiling import profile_model

MODELS = [
    "resnet18", "resnet50", "resnet152", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_1_6gf",
    "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny",
    "quantized:resnet50", "quantized:mobilenet_v3_large",
]  # fmt: skip


def build(name: str) -> torch.nn.Module:
    if name.startswith("quantized:"):
        import torchvision

        # The float form of torchvision's quantizable models (quantize=False).
        return torchvision.models.get_model(f"quantized_{name.split(':')[1]}", weights=None, quantize=False)
    return modify.get_model(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    print("| model | blocks found | converted | default c | params before | after | MACs before | after | MAC ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = build(name).eval()
        result = modify.convert(model)
        before, after = profile_model(model), profile_model(result.model)
        c = result.recipe.defaults.c
        print(
            f"| {name} | {len(result.sites)} | {len(result.converted)} | {c} | {before.params / 1e6:.2f} M | "
            f"{after.params / 1e6:.2f} M | {before.macs / 1e9:.3f} G | {after.macs / 1e9:.3f} G | "
            f"{before.macs / after.macs:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
