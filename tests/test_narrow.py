"""Narrowing a block: the channel spaces of its branch, the reordering that changes nothing, and the
cut that keeps the most important channels, on toys with answers by hand and on the zoo."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import modify
from modify.conversion.discover import find_blocks, locate
from modify.conversion.surgery.cut import cut
from modify.conversion.surgery.narrow import narrow_width, narrowed_branch, reorder_by_importance
from modify.conversion.surgery.spaces import ChannelSpaces
from modify.conversion.tracing import trace
from modify.errors import SurgeryError

ZOO = [
    ("resnet18", 32, lambda: torchvision.models.resnet18(num_classes=10)),
    ("resnet50", 64, lambda: torchvision.models.resnet50(num_classes=10)),
    ("mobilenet_v2", 64, lambda: torchvision.models.mobilenet_v2(num_classes=10)),
    ("mobilenet_v3_small", 64, lambda: torchvision.models.mobilenet_v3_small(num_classes=10)),
    ("efficientnet_b0", 64, lambda: torchvision.models.efficientnet_b0(num_classes=10)),
    ("convnext_tiny", 64, lambda: torchvision.models.convnext_tiny(num_classes=10)),
    ("regnet_y_400mf", 64, lambda: torchvision.models.regnet_y_400mf(num_classes=10)),
]


class Toy(nn.Module):
    """x + bn2(conv2(relu(bn1(conv1(x))))): C = 8, inner width 6, biases off."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def _toy_branch() -> tuple[Toy, torch.fx.GraphModule, object]:
    torch.manual_seed(0)
    toy = Toy().eval()
    with torch.no_grad():
        toy.bn1.weight.copy_(torch.tensor([0.1, 3.0, 0.2, 2.0, 0.3, 1.0]))  # importance: 1, 3, 5, 4, 2, 0
    gm = trace(toy, input_size=5)
    (site,) = find_blocks(gm)
    return toy, gm, locate(gm, site)


def test_the_toy_branch_has_one_inner_space_with_every_tensor_that_holds_it() -> None:
    _, gm, g = _toy_branch()
    spaces = ChannelSpaces(cut(gm, g.fork, g.branch, g.branch_operand))
    (inner,) = spaces.prunable()
    assert inner.size == 6 and inner.producers == ["conv1"]
    assert sorted(inner.tensors) == [
        ("bn1.bias", 0),
        ("bn1.running_mean", 0),
        ("bn1.running_var", 0),
        ("bn1.weight", 0),
        ("conv1.weight", 0),
        ("conv2.weight", 1),
    ]
    frozen = {s.why for s in spaces.spaces if s.frozen}
    assert frozen == {"the block input", "the block output"}


def test_narrowing_keeps_the_channels_with_the_largest_batchnorm_scale() -> None:
    toy, gm, g = _toy_branch()
    branch = narrowed_branch(gm, g, share=0.5, height=5, width=5)
    assert (
        branch.conv1.in_channels,
        branch.conv1.out_channels,
        branch.conv2.in_channels,
        branch.conv2.out_channels,
    ) == (8, 3, 3, 8)
    keep = [1, 3, 5]  # the three largest |bn1.weight|, most important first
    torch.testing.assert_close(branch.bn1.weight, toy.bn1.weight[keep])
    torch.testing.assert_close(branch.conv1.weight, toy.conv1.weight[keep])
    torch.testing.assert_close(branch.conv2.weight, toy.conv2.weight[:, keep])
    torch.testing.assert_close(branch.bn2.weight, toy.bn2.weight)  # the output stays whole
    # parameters by hand: conv1 8*3*9, bn1 2*3, conv2 3*8*9, bn2 2*8
    assert sum(p.numel() for p in branch.parameters()) == 8 * 3 * 9 + 2 * 3 + 3 * 8 * 9 + 2 * 8


def test_a_narrowed_branch_computes_the_original_without_the_dropped_channels() -> None:
    """The reference forward, written out: the branch with bn1's dropped channels zeroed."""
    toy, gm, g = _toy_branch()
    branch = narrowed_branch(gm, g, share=0.5, height=5, width=5).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        mask = torch.zeros(6)
        mask[[1, 3, 5]] = 1
        inner = toy.relu(toy.bn1(toy.conv1(x))) * mask.view(1, 6, 1, 1)
        expected = toy.bn2(toy.conv2(inner))
        torch.testing.assert_close(branch(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "size", "build"), ZOO, ids=[z[0] for z in ZOO])
def test_reordering_by_importance_changes_nothing_the_branch_computes(name: str, size: int, build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    for bn in model.modules():  # trained-like statistics, so a wrong permutation shows
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.running_mean.uniform_(-0.5, 0.5)
    gm = trace(model, input_size=size)
    sites = [s for s in find_blocks(gm) if s.convertible]
    assert sites
    for site in sites[:3]:
        g = locate(gm, site)
        before, after = (cut(gm, g.fork, g.branch, g.branch_operand).eval() for _ in range(2))
        sizes = reorder_by_importance(after)
        assert sizes, f"{name} {site.name}: no inner width found"
        x = torch.randn(2, site.channels, site.height, site.width)
        with torch.no_grad():
            torch.testing.assert_close(after(x), before(x), rtol=1e-4, atol=1e-4)
        narrowed = narrowed_branch(gm, g, share=0.25, height=site.height, width=site.width)
        assert sum(p.numel() for p in narrowed.parameters()) < sum(p.numel() for p in before.parameters())


def test_a_share_of_one_keeps_every_channel_and_the_block_exact() -> None:
    _, gm, g = _toy_branch()
    full = narrowed_branch(gm, g, share=1.0, height=5, width=5).eval()
    ref = cut(gm, g.fork, g.branch, g.branch_operand).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(full(x), ref(x), rtol=1e-5, atol=1e-5)


def test_a_grouped_convolution_freezes_its_space() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.conv2 = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv2(self.conv1(x))

    gm = trace(Grouped().eval(), example_inputs=(torch.randn(1, 8, 4, 4),))
    (site,) = find_blocks(gm)
    g = locate(gm, site)
    assert not ChannelSpaces(cut(gm, g.fork, g.branch, g.branch_operand)).prunable()
    with pytest.raises(SurgeryError, match="no inner width that can be narrowed.*grouped convolution"):
        narrowed_branch(gm, g, share=0.5, height=4, width=4)


def test_narrow_width_rounds_and_keeps_one() -> None:
    assert [narrow_width(64, f) for f in (0.5, 0.25, 0.125)] == [32, 16, 8]
    assert narrow_width(3, 0.1) == 1


def test_a_narrow_rule_converts_and_reports_the_block() -> None:
    model = modify.get_model("resnet18", num_classes=10)
    result = modify.convert(
        model,
        recipe={"version": 2, "rules": [{"name": "layer2.1", "action": "narrow", "fraction": 0.25}]},
        input_size=32,
    )
    (block,) = result.converted
    assert (block.name, block.action, block.fraction, block.k) == ("layer2.1", "narrow", 0.25, 32)
    narrowed = result.model.layer2[1]
    assert type(narrowed).__name__ == "ReducedBlock" and narrowed.branch.conv1.out_channels == 32
    out = result.model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
