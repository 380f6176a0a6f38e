"""VGG-BN-MoD in the CIFAR form (Cakaj et al. 2024, Table 9; the layer rule is our reading, §6.12).

The CIFAR VGG: 3x3 conv + BN + ReLU groups separated by max-pools down to 1x1, then a classifier
512 -> 512 -> 512 -> classes (this reproduces the paper's 15.25 M parameters for VGG16-BN on
CIFAR-10). In each conv group the convs at odd indices become MoD layers: a k -> k 3x3 conv + BN +
ReLU with k = C // 64, scaled by the scores and fused; there is no shortcut to keep, so the
"whole" and "branch" forms coincide.
"""

from __future__ import annotations

from torch import Tensor, nn

from modify.layers import MoDBlock, MoDConfig, capacity_to_k

__all__ = ["VGG_CONFIGS", "CifarVGG", "vgg_bn_mod", "vgg_bn"]

VGG_CONFIGS: dict[int, list[list[int]]] = {
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs; ``c`` set makes it the MoD variant."""

    def __init__(
        self, depth: int = 16, *, num_classes: int = 10, c: int | None = None, config: MoDConfig | None = None
    ) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"depth={depth} is not a VGG of the paper; expected one of {sorted(VGG_CONFIGS)}.")
        config = config or MoDConfig()
        layers: list[nn.Module] = []
        cin = 3
        for group in VGG_CONFIGS[depth]:
            for i, width in enumerate(group):
                if c is not None and i % 2 == 1:
                    k = capacity_to_k(width, c)
                    layers.append(MoDBlock.from_config(width, k, _conv_bn_relu(k, k), config))
                else:
                    layers.append(_conv_bn_relu(cin, width))
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))  # (N, 512) after five pools of 32x32


def vgg_bn(depth: int, **kwargs) -> CifarVGG:
    """The CIFAR VGG{depth}-BN baseline."""
    return CifarVGG(depth, **kwargs)


def vgg_bn_mod(depth: int, *, c: int = 64, **kwargs) -> CifarVGG:
    """The paper's CIFAR VGG{depth}-BN-MoD, c = 64."""
    return CifarVGG(depth, c=c, **kwargs)
