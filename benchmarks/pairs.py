"""The model pairs every speed benchmark here compares (imported by deploy.py and gpu.py).

- ``resnet50``: the paper's ResNet50-MoD (every_other, c = 64) against torchvision's ResNet50;
- ``resnet18``: torchvision's ResNet-18 converted with the every_other recipe against itself.

Both at random weights (speed does not depend on them), eval mode, on the CPU.
"""

from __future__ import annotations

from torch import nn

import modify

NAMES = ("resnet50", "resnet18")


def pair(name: str) -> tuple[str, nn.Module, nn.Module]:
    """(label, MoD model, baseline) for one of `NAMES`."""
    if name == "resnet50":
        return "ResNet50-MoD vs ResNet50", modify.get_model("resnet50_mod").eval(), modify.get_model("resnet50").eval()
    if name == "resnet18":
        r18 = modify.get_model("resnet18").eval()
        return "ResNet-18 every_other vs ResNet-18", modify.convert(r18, recipe="every_other").model.eval(), r18
    raise SystemExit(f"unknown pair {name!r}; expected one of {', '.join(NAMES)}")
