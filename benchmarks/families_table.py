"""The README's tables of supported families: parameters and MACs before and after the default
recipe (every_other with the family's capacity), one representative model per family, 224x224.

Run: python benchmarks/families_table.py [--models resnet50,mobilenet_v2,...]   (torchvision)
     python benchmarks/families_table.py --timm                                 (timm, needs timm)
Prints a Markdown table. MACs are fvcore's convention plus modify's handles (see README). timm
models are built with pretrained=False (random weights, nothing downloaded); `TIMM_FAMILIES` is
also the list tests/test_timm_zoo.py checks.
"""

from __future__ import annotations

import argparse

import torch

import modify
from modify.measure.profiling import profile_model

MODELS = [
    "resnet18",
    "resnet50",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "regnet_x_400mf",
    "regnet_y_1_6gf",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "quantized:resnet50",
    "quantized:mobilenet_v3_large",
]

# timm family -> its smallest model (the timm module it lives in, where the name does not say).
TIMM_FAMILIES = {
    "ResNet": "resnet18",
    "SE-ResNeXt-D": "seresnext26d_32x4d",  # resnet
    "ResNet-V2 (pre-activation)": "resnetv2_18",
    "RegNetX": "regnetx_002",
    "RegNetY": "regnety_002",
    "RegNetZ": "regnetz_005",  # byobnet
    "ConvNeXt": "convnext_atto",  # layer scale: a parameter reshaped in forward
    "ConvNeXt-V2": "convnextv2_atto",  # convnext (GRN)
    "EfficientNet": "efficientnet_b0",
    "MixNet": "mixnet_s",  # efficientnet; mixed kernels: fixed-size splits
    "MNASNet": "mnasnet_050",  # efficientnet
    "FBNet": "fbnetc_100",  # efficientnet
    "SPNASNet": "spnasnet_100",  # efficientnet
    "TinyNet": "tinynet_e",  # efficientnet
    "HardCoReNAS": "hardcorenas_a",
    "MobileNetV2": "mobilenetv2_050",  # efficientnet
    "MobileNetV3": "mobilenetv3_small_050",
    "MobileNetV4": "mobilenetv4_conv_small",  # mobilenetv3
    "Res2Net": "res2net50_14w_8s",  # adds inside the branch
    "ResNeSt": "resnest26d",
    "GhostNet": "ghostnet_050",  # a channel slice with a literal end
    "DLA": "dla46_c",  # blocks called with two inputs: rewritten inline
    "CSPNet": "cs3darknet_focus_s",
    "DarkNet": "darknet21",  # cspnet
    "HRNet": "hrnet_w18_small",
    "SKNet": "skresnet18",
    "Xception (aligned)": "xception41p",  # pre-activation, shape assertions in the branch
    "SENet (legacy)": "legacy_seresnet18",
    "GENet": "gernet_s",  # byobnet
    "InceptionNeXt": "inception_next_atto",  # fixed-size splits
}


def build(name: str) -> torch.nn.Module:
    if name.startswith("quantized:"):
        import torchvision

        # The float form of torchvision's quantizable models (quantize=False).
        return torchvision.models.get_model(f"quantized_{name.split(':')[1]}", weights=None, quantize=False)
    return modify.get_model(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated names (timm names with --timm)")
    parser.add_argument("--timm", action="store_true", help="timm's families (TIMM_FAMILIES) instead of torchvision's")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(TIMM_FAMILIES.values()) if args.timm else MODELS
    family = {model: f for f, model in TIMM_FAMILIES.items()}
    first = "| family | timm model " if args.timm else "| model "
    print(f"{first}| blocks found | converted | default c | params before | after | MACs before | after | MAC ratio |")
    print("|---" * (10 if args.timm else 9) + "|")
    for name in names:
        model = (modify.get_model(f"timm:{name}") if args.timm else build(name)).eval()
        result = modify.convert(model)
        before, after = profile_model(model), profile_model(result.model)
        c = result.recipe.defaults.c
        label = f"{family.get(name, '')} | {name}" if args.timm else name
        print(
            f"| {label} | {len(result.sites)} | {len(result.converted)} | {c} | {before.params / 1e6:.2f} M | "
            f"{after.params / 1e6:.2f} M | {before.macs / 1e9:.3f} G | {after.macs / 1e9:.3f} G | "
            f"{before.macs / after.macs:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
