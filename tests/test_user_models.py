"""Conversion of hand-written CNNs: the block shapes users write, not only torchvision's.

Every model is checked the same way: it converts (where a block can be converted), the output
shape is the original's, it re-traces, gradients reach every trainable parameter, and the
identity configuration (k = C, "branch" form, original positions, no scaling) reproduces the
original to 1e-5. What cannot be converted is skipped with a reason, never half-converted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from modify.conversion.pipeline import convert
from modify.conversion.surgery import SHRINKERS, SurgeryError, Widths, cut, shrink
from modify.errors import TraceError
from modify.layers import MoDBlock
from toy_models import PreActBlock
from zoo_checks import check_toy_model, mod_block

SIZE = 16


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout))


class Net(nn.Module):
    """Stem, a sequence of blocks, a classifier: the frame every toy model below uses."""

    def __init__(self, *blocks: nn.Module, c: int = 16, out: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(out or c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (N, 10)


# ---------------------------------------------------------------------------------------------
# Blocks as modules


class CifarBlock(nn.Module):
    """CIFAR ResNet's BasicBlock; "option A" (strided slice + channel zero-pad) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride), nn.ReLU(), _conv_bn(cout, cout))
        self.pad = (cout - cin) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad)
            )  # (N, cout, H', W')
        return F.relu(self.body(x) + shortcut)


def test_option_a_shortcuts_are_skipped_with_a_reason() -> None:
    model = Net(
        CifarBlock(16, 16), CifarBlock(16, 16), CifarBlock(16, 32, 2), CifarBlock(32, 32), CifarBlock(32, 32), out=32
    )
    result = check_toy_model(model, k=4)
    assert [b.name for b in result.converted] == ["blocks.1", "blocks.3"]
    (entry,) = [s for s in result.sites if s.name == "blocks.2"]
    assert not entry.convertible and entry.reason.startswith(
        "parameter-free shortcut changes the shape (16x16x16 -> 32x8x8"
    )
    assert result.default_reason is None
    default = convert(model, input_size=SIZE)  # no family default for CifarBlock: every_other's c = 64
    assert default.default_reason.startswith("c=64, the every_other recipe's: no block of a known family (CifarBlock)")


def test_pre_activation_blocks() -> None:
    model = Net(PreActBlock(16, 32, 2), PreActBlock(32, 32), PreActBlock(32, 32), out=32)
    result = check_toy_model(model, k=8)
    assert [b.name for b in result.converted] == ["blocks.1"]
    branch = mod_block(result, "blocks.1").block.branch
    assert [type(m).__name__ for m in branch.children()] == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d"]
    assert branch.bn1.num_features == 8 and branch.conv2.out_channels == 8
    assert [s.reason for s in result.sites if s.name == "blocks.0"][0].startswith("projection shortcut (Conv2d)")


class DilatedBlock(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(c, c // 2, dilation=dilation), nn.ReLU(), _conv_bn(c // 2, c, dilation=dilation)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def test_dilated_branches_keep_dilation_and_padding() -> None:
    result = check_toy_model(Net(DilatedBlock(16, 2), DilatedBlock(16, 2), DilatedBlock(16, 4)), k=4)
    convs = [m for m in mod_block(result, "blocks.1").block.branch.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.dilation, c.padding) for c in convs] == [
        (4, 2, (2, 2), (2, 2)),
        (2, 4, (2, 2), (2, 2)),
    ]


class SqueezeExcite(nn.Module):
    """Hand-written SE: avgpool -> conv1x1 -> act -> conv1x1 -> sigmoid -> mul."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(x)))))


class LinearSE(nn.Module):
    """Hand-written SE on Linear layers, reshaping with the sizes it reads off its input."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, squeeze), nn.ReLU(inplace=True), nn.Linear(squeeze, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        w = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)  # (N, C, 1, 1)
        return x * w.expand_as(x)


class SEBlock(nn.Module):
    def __init__(self, c: int, se: type[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, 4 * c), nn.ReLU6(), se(4 * c, c // 4), _conv_bn(4 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@pytest.mark.parametrize("se", [SqueezeExcite, LinearSE])
def test_hand_written_se_squeeze_scales_with_k(se: type[nn.Module]) -> None:
    result = check_toy_model(Net(SEBlock(32, se), SEBlock(32, se), SEBlock(32, se), c=32), k=8)
    layers = [m for m in mod_block(result, "blocks.1").block.branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    widths = [
        (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features) for m in layers
    ]
    # 32 -> 128 -> SE(128 -> 8 -> 128) -> 32 at k = 8 (k/C = 1/4): 8 -> 32 -> SE(32 -> 2 -> 32) -> 8
    assert widths == [(8, 32), (32, 2), (2, 32), (32, 8)]
    one = convert(Net(SEBlock(32, se), SEBlock(32, se), c=32), k=1, input_size=SIZE)  # the squeeze stays >= 1
    squeeze = [m for m in one.model.blocks[1].block.branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1]
    assert (squeeze.out_channels if isinstance(squeeze, nn.Conv2d) else squeeze.out_features) == 1


class TrainingBlock(nn.Module):
    """Training-only paths: a Python `if self.training` and a functional dropout."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.ReLU(), _conv_bn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.training:
            out = out * 0.5  # frozen at trace time: converted in eval mode, the reduced block has no such path
        out = F.dropout(out, p=0.5, training=self.training)
        return F.relu(x + out)


def test_training_paths_and_functional_dropout() -> None:
    model = Net(TrainingBlock(16), TrainingBlock(16), TrainingBlock(16))
    with pytest.warns(
        UserWarning, match=r"blocks\.1: the block's forward branches on self\.training; it was traced in eval"
    ):
        result = check_toy_model(model, k=4)  # the `if self.training` multiply is frozen out, and the report says so
    assert len(result.notes) == 1
    mod = mod_block(result, "blocks.1")
    # F.dropout(training=self.training) was traced as training=False; in the reduced block it is an
    # nn.Dropout again, so it drops in train mode and not in eval mode.
    assert any(isinstance(m, nn.Dropout) for m in mod.block.modules())
    x = torch.randn(2, 16, SIZE, SIZE)
    mod.train()
    assert not torch.equal(mod.block(x[:, :4]), mod.block(x[:, :4]))
    mod.eval()
    torch.testing.assert_close(mod.block(x[:, :4]), mod.block(x[:, :4]), atol=0, rtol=0)


class ReusedNet(nn.Module):
    """One block module called twice (weight sharing): two residual adds with one module path."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.block = torchvision.models.resnet.BasicBlock(c, c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.block(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def test_a_block_module_called_twice() -> None:
    model = ReusedNet()
    result = check_toy_model(model, recipe={"version": 1, "defaults": {"k": 4}, "rules": [{"index": "all"}]})
    assert [b.name for b in result.converted] == ["block:add", "block:add_1"]
    assert isinstance(result.model, fx.GraphModule)  # each call becomes its own MoD block in the graph
    assert sum(isinstance(m, MoDBlock) for m in result.model.modules()) == 2


class InlineNet(nn.Module):
    """Blocks written out in the model's own forward: `+=`, torch.add and `add_`."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.convs = nn.ModuleList(nn.Sequential(_conv_bn(c, c), nn.ReLU(), _conv_bn(c, c)) for _ in range(6))
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in (0, 1):
            out = self.convs[i](x)
            out += x
            x = F.relu(out)
        for i in (2, 3):
            x = torch.relu(torch.add(self.convs[i](x), x))
        for i in (4, 5):
            y = self.convs[i](x)
            y.add_(x)
            x = y
        return self.fc(x.mean((2, 3)))


def test_inline_blocks() -> None:
    result = check_toy_model(InlineNet(), recipe={"version": 1, "defaults": {"k": 4}, "rules": [{"index": "all"}]})
    assert len(result.converted) == 6 and {b.block_type for b in result.converted} == {"inline"}
    assert isinstance(result.model, fx.GraphModule)


# ---------------------------------------------------------------------------------------------
# Layers beyond Conv/BN: shrunk by rule, or the block is skipped with the reason


class NormZoo(nn.Module):
    """GroupNorm, a channel-first LayerNorm (traced to F.layer_norm), PReLU, a layer scale."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, groups=4)
        self.gn = nn.GroupNorm(4, c)
        self.act = nn.PReLU(c)
        self.conv2 = nn.Conv2d(c, c, 1)
        self.ln = torchvision.models.convnext.LayerNorm2d(c)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.ln(self.conv2(self.act(self.gn(self.conv1(x)))))


class InceptionResBlock(nn.Module):
    """Inception-ResNet style: the branch concatenates three paths, then a 1x1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b0 = nn.Conv2d(c, 4, 1)
        self.b1 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.b2 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.up = nn.Conv2d(16, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.up(torch.cat([self.b0(x), self.b1(x), self.b2(x)], 1)))


def test_group_norm_layer_norm_prelu_and_layer_scale() -> None:
    result = check_toy_model(Net(NormZoo(16), NormZoo(16), c=16), k=8)
    branch = mod_block(result, "blocks.1").block.branch
    shapes = {name: tuple(t.shape) for name, t in branch.named_parameters()}
    assert shapes["gamma"] == (8, 1, 1) and shapes["act.weight"] == (8,)
    assert branch.gn.num_channels == 8 and branch.gn.num_groups == 4 and branch.conv1.groups == 4
    assert [s for s in shapes.items() if s[0].startswith("ln")] == [("ln_weight", (8,)), ("ln_bias", (8,))]


def test_inception_style_concat_in_the_branch() -> None:
    # The concat's width is the sum of its paths' scaled widths, whatever their rounding: the
    # 1x1 conv after it is rebuilt for the width that actually arrives.
    result = check_toy_model(Net(InceptionResBlock(16), InceptionResBlock(16), c=16), k=4)
    assert mod_block(result, "blocks.1").block.branch.up.in_channels == 1 + 2 + 2


class Opaque(nn.Module):
    """A conv the tracer must not enter (a user leaf): no rule shrinks it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # untraceable: control flow on a tensor value
            return self.conv(x)
        return self.conv(-x)


class OpaqueBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.ReLU(), Opaque(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def test_untraceable_module_needs_a_leaf_then_the_rest_converts() -> None:
    model = Net(CifarBlock(16, 16), CifarBlock(16, 16), OpaqueBlock(16), OpaqueBlock(16), CifarBlock(16, 16))
    with pytest.raises(
        TraceError, match=r"'blocks\.2\.body\.2' \(Opaque\): control flow.*leaf_modules=\['blocks\.2\.body\.2'\]"
    ):
        convert(model, k=4, input_size=SIZE)
    result = check_toy_model(model, k=4, leaf_modules=[Opaque])
    assert [b.name for b in result.converted] == ["blocks.1"]
    # blocks.3 holds the leaf, which no rule can shrink: skipped with the reason, left as it was.
    (skipped,) = [s for s in result.skipped if s.selected]
    assert skipped.name == "blocks.3"
    assert (
        skipped.reason.startswith("no rule shrinks a Opaque") and "channel-sized state (conv.weight" in skipped.reason
    )
    assert type(result.model.blocks[3]) is OpaqueBlock


def test_shrink_without_shapes_scales_by_widths_and_refuses_unknown_state() -> None:
    gm = fx.symbolic_trace(SEBlock(32, SqueezeExcite).eval())  # no shape propagation: static rules
    placeholder, *body, add, _output = gm.graph.nodes
    sub = shrink(cut(gm, placeholder, tuple(body), add.args[1]), Widths(32, 8))
    assert [m.out_channels for m in sub.modules() if isinstance(m, nn.Conv2d)] == [32, 2, 32, 8]
    assert sub(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    with pytest.raises(
        SurgeryError, match=r"no rule shrinks a Bilinear \(bil\), which holds channel-sized state \(weight"
    ):
        shrink(fx.symbolic_trace(_BilinearBranch()), Widths(8, 2))
    assert nn.Bilinear not in SHRINKERS


class _BilinearBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bil = nn.Bilinear(8, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bil(x, x)
