"""The block patterns of timm's CNN zoo, each isolated in a hand-written toy.

Each toy is the smallest model with one pattern (a parameter reshaped in forward, channel splits
of fixed sizes, adds inside a branch, a residual onto part of the channels, stages of a single
block, a channel slice with a literal end, a literal channel count in a reshape, a block module of
two inputs, shape assertions on the branch). Where the pattern is convertible the toy goes
through every check of `zoo_checks.check_toy_model` (the identity configuration reproduces the
original to 1e-5, gradients reach every parameter); where it is not, the refusal names it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modify.conversion.discover import find_blocks
from modify.conversion.pipeline import convert
from modify.conversion.surgery.literals import SplitError, scale_parts
from modify.conversion.tracing import trace
from modify.errors import RecipeError
from test_user_models import SIZE, Net
from zoo_checks import check_toy_model, mod_block


class LayerScaleBlock(nn.Module):
    """timm's ConvNeXt: ``x.mul(self.gamma.reshape(1, -1, 1, 1))``, a parameter reshaped in forward."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))).mul(self.gamma.reshape(1, -1, 1, 1))


class MixedConv(nn.Module):
    """MixNet's mixed-kernel convolution: fixed-size splits, one kernel size each, concatenated."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        n = len(kernels)
        self.splits = [cin // n] * n
        groups = cin == cout
        self.convs = nn.ModuleList(
            nn.Conv2d(cin // n, cout // n, k, padding=k // 2, groups=cin // n if groups else 1) for k in kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], 1)


class MixedBlock(nn.Module):
    """An inverted residual of mixed convolutions (MixNet's block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pw = MixedConv(c, 4 * c, (1, 1))
        self.bn1 = nn.BatchNorm2d(4 * c)
        self.dw = MixedConv(4 * c, 4 * c, (3, 5, 7, 9))
        self.bn2 = nn.BatchNorm2d(4 * c)
        self.pwl = MixedConv(4 * c, c, (1, 1))
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.pw(x)))
        y = F.relu(self.bn2(self.dw(y)))
        return x + self.bn3(self.pwl(y))


class HierarchicalBlock(nn.Module):
    """Res2Net's bottleneck: equal chunks (``torch.split(out, width, 1)``) with adds between them."""

    def __init__(self, c: int, width: int = 4, scale: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(c, width * scale, 1, bias=False)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spx = torch.split(F.relu(self.conv1(x)), self.width, 1)
        outs, sp = [], spx[0]
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]  # adds inside the branch
            sp = F.relu(conv(sp))
            outs.append(sp)
        outs.append(spx[-1])
        return F.relu(x + self.bn3(self.conv3(torch.cat(outs, 1))))


class PartialResidualBlock(nn.Module):
    """ReXNet: the shortcut is added onto the first C_in of C_out channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin = cin
        self.conv1, self.conv2 = nn.Conv2d(cin, 2 * cin, 1), nn.Conv2d(2 * cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return torch.cat([y[:, 0 : self.cin] + x, y[:, self.cin :]], dim=1)


class GhostBlock(nn.Module):
    """GhostNet's module: half the channels from a conv, half from a cheap depthwise conv of those,
    then ``[:, :out]`` with the width written as a number."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.out = c
        self.primary = nn.Conv2d(c, (c + 1) // 2, 1)
        self.cheap = nn.Conv2d((c + 1) // 2, (c + 1) // 2, 3, padding=1, groups=(c + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.primary(x))
        return x + torch.cat([x1, self.cheap(x1)], 1)[:, : self.out]


class StandardizedConv(nn.Conv2d):
    """NF-ResNet's ScaledStdConv2d: the weight standardised in forward, its width written as a number."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0)
        return F.conv2d(x, weight.reshape_as(self.weight), self.bias, self.stride, self.padding)


class StandardizedBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = StandardizedConv(c, c, 3, padding=1), StandardizedConv(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class TwoInputBlock(nn.Module):
    """DLA's block, called as ``block(x, shortcut)`` by its tree."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + shortcut)


class Tree(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.project = nn.Identity()
        self.tree1, self.tree2 = TwoInputBlock(c), TwoInputBlock(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tree1(x, self.project(x))
        return self.tree2(x, self.project(x))


class CheckedBlock(nn.Module):
    """timm's norm layers: ``torch._assert(x.ndim == 4, ...)`` on the branch's values."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        torch._assert(y.ndim == 4, "expected 4D input")
        return x + self.conv2(y)


class PreNormBlock(CheckedBlock):
    """A pre-normalised block computing its own input (the module is more than the block: inline)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


# ---------------------------------------------------------------------------------------------


def _convs(branch: nn.Module) -> dict[str, nn.Conv2d]:
    """The reduced branch's convolutions by name (the cut names them relative to the block)."""
    return {name: m for name, m in branch.named_children() if isinstance(m, nn.Conv2d)}


def test_a_parameter_reshaped_in_forward_shrinks_with_the_branch() -> None:
    result = check_toy_model(Net(LayerScaleBlock(16), LayerScaleBlock(16)), k=4)
    branch = mod_block(result, "blocks.1").block.branch
    assert tuple(branch.gamma.shape) == (4,)


@pytest.mark.parametrize("init", ["copy", "scratch"])
def test_a_copied_layer_scale_keeps_the_leading_values(init: str) -> None:
    model = Net(LayerScaleBlock(16), LayerScaleBlock(16)).eval()
    result = convert(model, k=4, init=init, input_size=SIZE)
    gamma = mod_block(result, "blocks.1").block.branch.gamma
    if init == "copy":
        torch.testing.assert_close(gamma.detach(), model.blocks[1].gamma.detach()[:4])


def test_mixed_kernel_splits_scale_with_the_width() -> None:
    result = check_toy_model(Net(MixedBlock(16), MixedBlock(16)), k=8)
    convs = _convs(mod_block(result, "blocks.1").block.branch)
    # k = 8 of 16: the 1x1 splits [8, 8] -> [4, 4]; the depthwise splits of 64 -> 32 channels in four parts
    assert [convs[f"pw_convs_{i}"].in_channels for i in range(2)] == [4, 4]
    assert [(convs[f"dw_convs_{i}"].in_channels, convs[f"dw_convs_{i}"].groups) for i in range(4)] == [(8, 8)] * 4
    assert [convs[f"pwl_convs_{i}"].out_channels for i in range(2)] == [4, 4]


def test_uneven_widths_split_by_largest_remainder_and_still_end_at_k() -> None:
    # k = 3: the input splits [8, 8] -> [2, 1]; the output convolutions partition k = 3 as [2, 1] too
    result = check_toy_model(Net(MixedBlock(16), MixedBlock(16)), k=3)
    convs = _convs(mod_block(result, "blocks.1").block.branch)
    assert [convs[f"pw_convs_{i}"].in_channels for i in range(2)] == [2, 1]
    assert [convs[f"pwl_convs_{i}"].out_channels for i in range(2)] == [2, 1]


def test_a_split_needs_as_many_channels_as_parts() -> None:
    assert scale_parts([12, 12], 3) == [2, 1] and scale_parts([60, 12, 12, 12], 4) == [1, 1, 1, 1]
    with pytest.raises(SplitError, match=r"2 fixed parts \[12, 12\].*at least 2"):
        scale_parts([12, 12], 1)
    # A k given as a count is kept, and the block is skipped with the reason ...
    result = convert(Net(MixedBlock(16), MixedBlock(16)).eval(), k=1, input_size=SIZE)
    ((name, reason),) = [(s.name, s.reason) for s in result.skipped if s.selected]
    assert name == "blocks.1" and "fixed parts" in reason and "larger k" in reason
    # ... one from c (or a fraction) is raised to the parts a split needs (the block's min_k).
    (site,) = [s for s in find_blocks(trace(Net(MixedBlock(16), MixedBlock(16)), input_size=SIZE)) if s.index == 1]
    assert site.min_k == 4
    result = convert(Net(MixedBlock(16), MixedBlock(16)).eval(), c=64, input_size=SIZE)
    assert [b.k for b in result.converted] == [4]


def test_adds_inside_a_branch_leave_the_blocks_residual_add_the_site() -> None:
    model = Net(HierarchicalBlock(16), HierarchicalBlock(16), HierarchicalBlock(16))
    sites = find_blocks(trace(model, input_size=SIZE))
    assert [(s.name, s.index, s.block_type) for s in sites] == [
        ("blocks.0", 0, "HierarchicalBlock"),
        ("blocks.1", 1, "HierarchicalBlock"),
        ("blocks.2", 2, "HierarchicalBlock"),
    ]
    result = check_toy_model(model, k=4)
    branch = mod_block(result, "blocks.1").block.branch
    # widths(4) = 1 per chunk, so conv1 makes 4 x 1 channels and the adds between chunks fit
    convs = [getattr(branch, f"convs_{i}") for i in range(3)]  # the cut names modules relative to the block
    assert branch.conv1.out_channels == 4 and [c.in_channels for c in convs] == [1, 1, 1]


def test_a_residual_onto_part_of_the_channels_is_refused_at_discovery() -> None:
    model = Net(PartialResidualBlock(16, 24), out=24)
    (site,) = find_blocks(trace(model, input_size=SIZE))
    assert not site.convertible and "part of the block's output" in (site.reason or "")
    with pytest.raises(RecipeError, match="part of the block's output"):
        convert(model.eval(), input_size=SIZE)


def test_stages_of_one_block_offer_the_recipe_that_selects_them() -> None:
    class OneBlockStages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.stage1 = LayerScaleBlock(16)
            self.down = nn.Conv2d(16, 32, 3, 2, 1)
            self.stage2 = LayerScaleBlock(32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stage2(self.down(self.stage1(self.stem(x))))

    with pytest.raises(RecipeError, match=r"single block \(index 0\).*`--recipe all`.*stage1, stage2"):
        convert(OneBlockStages().eval(), input_size=SIZE)
    assert [b.name for b in convert(OneBlockStages().eval(), recipe="all", input_size=SIZE).converted] == [
        "stage1",
        "stage2",
    ]


def test_a_channel_slice_with_a_literal_end_follows_the_width() -> None:
    # C = 16, k = 5: halves of widths(8) = round(2.5) = 2 would give 4 < 5 channels; the plan widens
    # them to 3 so that [:, :widths(16)] = [:, :5] is exactly k.
    result = check_toy_model(Net(GhostBlock(16), GhostBlock(16)), k=5)
    branch = mod_block(result, "blocks.1").block.branch
    assert branch.primary.out_channels == 3


def test_a_literal_channel_count_in_a_parameter_reshape_follows_the_width() -> None:
    result = check_toy_model(Net(StandardizedBlock(16), StandardizedBlock(16)), k=4)
    branch = mod_block(result, "blocks.1").block.branch
    assert tuple(branch.conv1_weight.shape) == (4, 4, 3, 3)  # traced through: a functional conv


def test_a_block_module_of_two_inputs_is_rewritten_inline() -> None:
    model = Net(Tree(16))
    sites = find_blocks(trace(model, input_size=SIZE))
    assert [s.block_type for s in sites] == ["inline", "inline"] and all(s.convertible for s in sites)
    check_toy_model(model, recipe={"version": 1, "defaults": {"k": 4}, "rules": [{"index": "all"}]})


@pytest.mark.parametrize("block", [CheckedBlock, PreNormBlock])
def test_shape_assertions_go_with_the_branch(block: type[nn.Module]) -> None:
    result = check_toy_model(Net(block(16), block(16)), k=4)
    converted = result.model
    graph = getattr(converted, "graph", None)
    if graph is not None:  # rewritten inline: nothing of the original branch is left behind
        assert not any(str(n.target).startswith("blocks.1.conv") for n in graph.nodes if n.op == "call_module")


class ComputedHalves(nn.Module):
    """Slices whose bounds the graph computes (``out.shape[1] // 2``): they fit any width already."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.ca, self.cb = nn.Conv2d(c // 2, c // 2, 3, padding=1), nn.Conv2d(c // 2, c // 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        h = out.shape[1] // 2
        return x + torch.cat([self.ca(out[:, :h]), self.cb(out[:, h:])], 1)


class Shuffled(nn.Module):
    """A channel shuffle with computed sizes (ShuffleNet's): view, transpose, reshape."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        n, c, h, w = out.shape
        out = out.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return x + self.conv2(out)


class PositionScale(nn.Module):
    """A parameter broadcast as the first operand (``self.pos * out``), spatial, not per channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.pos = nn.Parameter(torch.linspace(0.5, 1.5, SIZE * SIZE).view(1, 1, SIZE, SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.pos * F.relu(self.conv1(x)))


def test_computed_slice_bounds_are_left_as_computed() -> None:
    result = check_toy_model(Net(ComputedHalves(32), ComputedHalves(32), c=32), k=8)
    convs = _convs(mod_block(result, "blocks.1").block.branch)
    assert convs["ca"].in_channels == convs["cb"].in_channels == 4  # out[:, :8 // 2] and out[:, 4:]


def test_a_computed_channel_shuffle_converts() -> None:
    check_toy_model(Net(Shuffled(32), Shuffled(32), c=32), k=8)


def test_a_parameter_broadcast_first_keeps_its_spatial_shape() -> None:
    result = check_toy_model(Net(PositionScale(16), PositionScale(16)), k=4)
    assert tuple(mod_block(result, "blocks.1").block.branch.pos.shape) == (1, 1, SIZE, SIZE)
