"""Tracing (`modify.conversion.tracing`) and residual Conv-Block discovery (`modify.conversion.discover`).

Toy models with answers worked out by hand first, then the torchvision zoo (random weights,
64x64 inputs: nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from modify.conversion.discover import BlockSite, SiteGraph, SkipKind, find_blocks, locate
from modify.conversion.tracing import trace
from modify.errors import ModifyError, TraceError
from modify.layers import MoDBlock
from modify.models.resnet_mod import resnet_mod
from toy_models import PreActBlock

SIZE = 64


def _sites(model: nn.Module, size: int = SIZE, **kwargs) -> tuple[fx.GraphModule, list[BlockSite]]:
    gm = trace(model.eval(), input_size=size, **kwargs)
    return gm, find_blocks(gm)


def _odd(sites: list[BlockSite]) -> list[str]:
    return [s.name for s in sites if s.convertible and s.index % 2 == 1]


def _by_name(sites: list[BlockSite]) -> dict[str, BlockSite]:
    return {s.name: s for s in sites}


def _assert_closed(g: SiteGraph) -> None:
    """The branch reads only the fork, itself and parameters: it can be cut out as it is."""
    inside = {g.fork, *g.branch}
    for node in g.branch:
        assert all(i in inside or i.op == "get_attr" for i in node.all_input_nodes), node.name
    assert not set(g.branch) & set(g.skip)


# ---------------------------------------------------------------------------------------------
# Toy models


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class Stem(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # (N, c, H/2, W/2)


class Head(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (N, 10)


class InlineNet(nn.Module):
    """The residual block written out in the model's own forward, with `out += identity`."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = Stem(c)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = F.relu(out)
        return self.head(out)


class TorchAddBlock(nn.Module):
    def __init__(self, c: int = 8, alpha: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.ReLU(), _conv_bn(c, c))
        self.relu = nn.ReLU()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 1.0:
            return self.relu(torch.add(self.body(x), x))
        return self.relu(torch.add(self.body(x), x, alpha=self.alpha))


class InplaceBlock(nn.Module):
    """`out.add_(identity)`: fx records an add node with no users."""

    def __init__(self, c: int = 8, relu_after: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.relu_after = relu_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out.add_(x)
        return self.relu(out) if self.relu_after else out


class Chain(nn.Module):
    def __init__(self, *blocks: nn.Module, c: int = 8) -> None:
        super().__init__()
        self.stem = Stem(c)
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class Holder(nn.Module):
    """A custom container: blocks in a ModuleList, run in a Python loop."""

    def __init__(self, n: int, c: int = 8) -> None:
        super().__init__()
        self.items = nn.ModuleList(TorchAddBlock(c) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.items:
            x = block(x)
        return x


class NestedNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = Stem(c)
        self.stages = nn.ModuleDict({"a": nn.Sequential(torchvision.models.resnet.BasicBlock(c, c)), "b": Holder(2, c)})
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages["a"](x)
        x = self.stages["b"](x)
        return self.head(x)


class ReusedNet(nn.Module):
    """One block module called twice (weight sharing): two residual adds with one module path."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = Stem(c)
        self.block = torchvision.models.resnet.BasicBlock(c, c)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(self.stem(x))))


class OptionABlock(nn.Module):
    """CIFAR ResNet "option A": a strided slice plus channel zero-padding as the shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 2), nn.ReLU(), _conv_bn(cout, cout))
        self.pad = (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))  # (N, cout, H/2, W/2)
        return F.relu(self.body(x) + shortcut)


class SEBlock(nn.Module):
    """A user-style squeeze-excitation block; its SE reads `x.size()` to reshape."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.ReLU(), _conv_bn(c, c))
        self.fc = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        b, c, _, _ = out.size()
        w = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(out, 1).view(b, c))).view(b, c, 1, 1)  # (N, C, 1, 1)
        return F.relu(out * w.expand_as(out) + x)


class Weird(nn.Module):
    """Untraceable: Python control flow on a tensor value."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


class Loopy(nn.Module):
    """Untraceable: iterates over the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t * 2 for t in x])


class Token(nn.Module):
    """A transformer-style residual: `x + mlp(x)` with no conv on the branch."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = x + self.mlp(x)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


class LongRange(nn.Module):
    """Two residual blocks and an FPN-like add spanning both: only the two blocks are sites."""

    def __init__(self, c: int = 8, block: type[nn.Module] = TorchAddBlock) -> None:
        super().__init__()
        self.stem = Stem(c)
        self.blocks = nn.Sequential(block(c), block(c))
        self.lateral = nn.Conv2d(c, c, 1)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.blocks(x) + self.lateral(x))


# ---------------------------------------------------------------------------------------------
# Toy models: discovery


def test_inline_block_in_model_forward() -> None:
    gm, sites = _sites(InlineNet())
    assert len(sites) == 1
    site = sites[0]
    # The add is in the root's forward, which also holds the stem and head: an inline site.
    assert site.block_type == "inline" and site.name == site.node == "add"
    assert (site.stage, site.index, site.channels, site.height, site.stride) == (0, 1, 8, 32, 1)
    assert site.skip is SkipKind.IDENTITY and site.convertible
    assert site.branch == ("Conv2d", "BatchNorm2d", "relu", "Conv2d", "BatchNorm2d")
    g = locate(gm, site)
    assert g.add.target is operator.add  # `out += identity` is recorded out of place
    assert g.fork.target is F.relu  # the stem's last op
    assert [n.target for n in g.post] == [F.relu] and g.output is g.post[-1]
    _assert_closed(g)


def test_torch_add_blocks_and_scaled_add() -> None:
    gm, sites = _sites(Chain(TorchAddBlock(), TorchAddBlock(alpha=0.5), TorchAddBlock()))
    assert [s.name for s in sites] == ["blocks.0", "blocks.1", "blocks.2"]
    assert {s.block_type for s in sites} == {"TorchAddBlock"}
    assert [s.alpha for s in sites] == [1.0, 0.5, 1.0]
    assert sites[1].reason is not None and sites[1].reason.startswith("scaled add (alpha=0.5)")
    # A non-convertible site opens a new stage at index 0.
    assert [(s.stage, s.index) for s in sites] == [(0, 0), (1, 0), (1, 1)]
    g = locate(gm, sites[0])
    assert g.add.target is torch.add and [n.target for n in g.post] == ["blocks.0.relu"]


@pytest.mark.parametrize("relu_after", [True, False])
def test_inplace_add(relu_after: bool) -> None:
    model = Chain(InplaceBlock(relu_after=relu_after), InplaceBlock(relu_after=relu_after)).eval()
    gm, sites = _sites(model)
    assert [s.name for s in sites] == ["blocks.0", "blocks.1"] and all(s.convertible for s in sites)
    g = locate(gm, sites[0])
    assert g.add.op == "call_method" and g.add.target == "add_"
    assert g.inplace and len(g.add.users) == 0
    assert g.mutated is g.branch[-1] and g.mutated.target == "blocks.0.bn2"
    assert g.skip == () and g.skip_operand is g.fork
    _assert_closed(g)
    if relu_after:
        # The ReLU reads the mutated operand after the add_: it is the block's post op.
        assert [n.target for n in g.post] == ["blocks.0.relu"] and g.output is g.post[0]
        assert g.mutated in g.output.all_input_nodes
        assert [u.name for u in g.users] == [u.name for u in g.output.users]
    else:
        # No post op: the add is the output and the later readers of `out` are its users.
        assert g.post == () and g.output is g.add
        # block 1 reads block 0's output in its conv1 and as the identity operand of its add_.
        assert {u.target for u in g.users} == {"blocks.1.conv1", "add_"}
        order = list(gm.graph.nodes)
        assert all(order.index(u) > order.index(g.add) for u in g.users)
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(gm(x), model(x))


def test_blocks_in_custom_containers() -> None:
    _, sites = _sites(NestedNet())
    assert [s.name for s in sites] == ["stages.a.0", "stages.b.items.0", "stages.b.items.1"]
    assert [s.block_type for s in sites] == ["BasicBlock", "TorchAddBlock", "TorchAddBlock"]
    assert [s.index for s in sites] == [0, 1, 2] and all(s.convertible for s in sites)


def test_reused_block_gets_two_sites() -> None:
    gm, sites = _sites(ReusedNet())
    assert [s.name for s in sites] == ["block:add", "block:add_1"]
    assert [s.block_type for s in sites] == ["BasicBlock", "BasicBlock"]
    first, second = (locate(gm, s) for s in sites)
    assert second.fork is first.output  # the second call reads the first one's ReLU
    assert [n.target for n in first.post] == [n.target for n in second.post] == ["block.relu"]


def test_option_a_zero_pad_shortcut() -> None:
    model = Chain(OptionABlock(8, 16))
    model.head = Head(16)
    gm, sites = _sites(model)
    (site,) = sites
    assert site.skip is SkipKind.PARAM_FREE
    assert (site.in_channels, site.channels, site.stride, site.height) == (8, 16, 2, 16)
    assert site.reason is not None and site.reason.startswith("parameter-free shortcut changes the shape")
    assert (site.stage, site.index) == (0, 0)
    g = locate(gm, site)
    assert [n.target for n in g.skip] == [operator.getitem, F.pad]


def test_pre_activation_blocks() -> None:
    model = Chain(PreActBlock(8, 16, 2), PreActBlock(16, 16), PreActBlock(16, 16))
    model.head = Head(16)
    gm, sites = _sites(model)
    assert [s.name for s in sites] == ["blocks.0", "blocks.1", "blocks.2"]
    proj, ident = sites[0], sites[1]
    assert (
        proj.skip is SkipKind.PROJECTION
        and proj.reason is not None
        and proj.reason.startswith("projection shortcut (Conv2d)")
    )
    # The projection forks after bn1/relu, inside the block; the block is still named by its module.
    g = locate(gm, proj)
    assert g.fork.target is F.relu and g.fork.meta["nn_module_stack"]
    _assert_closed(g)
    assert proj.branch == ("Conv2d", "BatchNorm2d", "relu", "Conv2d")
    assert ident.convertible and ident.branch == ("BatchNorm2d", "relu", "Conv2d", "BatchNorm2d", "relu", "Conv2d")
    assert [(s.stage, s.index) for s in sites] == [(0, 0), (0, 1), (0, 2)]


def test_branch_includes_the_metadata_ops_it_reads() -> None:
    gm, sites = _sites(Chain(SEBlock(), SEBlock()))
    assert [s.name for s in sites] == ["blocks.0", "blocks.1"] and all(s.convertible for s in sites)
    g = locate(gm, sites[0])
    _assert_closed(g)
    assert "size" in [n.target for n in g.branch]  # the cut needs it for the views
    assert "size" not in sites[0].branch and sites[0].branch[-2:] == ("expand_as", "mul")


def test_no_conv_branch_and_long_range_adds_are_not_sites() -> None:
    _, sites = _sites(Chain(Token(), TorchAddBlock()))
    assert [s.name for s in sites] == ["blocks.1"]
    for block in (TorchAddBlock, InplaceBlock):  # add_ nodes have no users: still seen as nested
        _, sites = _sites(LongRange(block=block))
        assert [s.name for s in sites] == ["blocks.0", "blocks.1"]


def test_find_blocks_needs_shapes_and_locate_needs_a_site() -> None:
    with pytest.raises(ModifyError, match="modify.conversion.tracing.trace"):
        find_blocks(fx.symbolic_trace(InlineNet()))
    gm, sites = _sites(InlineNet())
    with pytest.raises(ModifyError, match="'layer9.9' is not a residual Conv-Block"):
        locate(gm, dataclasses.replace(sites[0], name="layer9.9", node=""))


# ---------------------------------------------------------------------------------------------
# Tracing


def test_untraceable_module_names_itself_and_leaf_fixes_it() -> None:
    model = Chain(TorchAddBlock(), Weird(), TorchAddBlock())
    with pytest.raises(TraceError, match=r"'blocks\.1' \(Weird\): control flow on a tensor value") as info:
        trace(model, input_size=SIZE)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith("leaf_modules=['blocks.1'] in the API, --leaf blocks.1 in the CLI.")
    assert info.value.__cause__ is not None
    for leaf in ("blocks.1", Weird):
        gm, sites = _sites(model, leaf_modules=[leaf])
        assert [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("blocks.1")] == [
            "blocks.1"
        ]
        assert [s.name for s in sites] == ["blocks.0", "blocks.2"]


def test_trace_error_for_iteration_and_unknown_leaf() -> None:
    with pytest.raises(TraceError, match=r"'blocks\.0' \(Loopy\): iteration over a Proxy.*--leaf blocks\.0"):
        trace(Chain(Loopy()), input_size=SIZE)
    with pytest.raises(ModifyError, match="'nope' names no module"):
        trace(Chain(Loopy()), leaf_modules=["nope"])


def test_shape_propagation_failure_names_the_node() -> None:
    with pytest.raises(
        TraceError, match="failed to run on the example inputs at node 'stem_conv' in module 'stem.conv'"
    ):
        trace(Chain(TorchAddBlock()), torch.randn(1, 5, 32, 32))


def test_trace_leaves_train_mode_model_untouched() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    with torch.no_grad():  # non-trivial running stats, so a change would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    gm = trace(model, input_size=SIZE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes and gm.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all("tensor_meta" in n.meta for n in gm.graph.nodes if n.op != "output")
    assert all(n.meta.get("nn_module_stack") for n in gm.graph.nodes if n.op == "call_module")


def test_mod_blocks_trace_as_single_nodes() -> None:
    model = resnet_mod(18, num_classes=10)
    gm, sites = _sites(model)
    mod_paths = [name for name, m in model.named_modules() if isinstance(m, MoDBlock)]
    assert mod_paths == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    for path in mod_paths:
        nodes = [
            n for n in gm.graph.nodes if n.op == "call_module" and (n.target == path or n.target.startswith(path + "."))
        ]
        assert [n.target for n in nodes] == [path]
        assert tuple(nodes[0].meta["tensor_meta"].shape)[1] == model.get_submodule(path).channels
    # The converted blocks are no longer residual sites; the standard ones still are.
    assert [s.name for s in sites] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_graph_module_retrace_keeps_block_names() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    gm = trace(model, input_size=SIZE)
    again = trace(gm, input_size=32)  # a GraphModule keeps its graph and node metadata
    assert find_blocks(again) == [
        dataclasses.replace(s, height=s.height // 2, width=s.width // 2) for s in find_blocks(gm)
    ]
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(again(x), model(x))


# ---------------------------------------------------------------------------------------------
# The torchvision zoo

RESNET50_ODD = ["layer1.1", "layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5", "layer4.1"]


@pytest.mark.parametrize(
    ("name", "n_sites", "n_convertible", "odd"),
    [
        ("resnet18", 8, 5, ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
        ("resnet50", 16, 12, RESNET50_ODD),
        ("resnext50_32x4d", 16, 12, RESNET50_ODD),
        ("wide_resnet50_2", 16, 12, RESNET50_ODD),
        (
            "mobilenet_v2",
            10,
            10,
            ["features.3", "features.5", "features.8", "features.10", "features.12", "features.15"],
        ),
        (
            "efficientnet_b0",
            9,
            9,
            ["features.2.1", "features.3.1", "features.4.1", "features.5.1", "features.6.1", "features.6.3"],
        ),
        (
            "convnext_tiny",
            18,
            18,
            [
                "features.1.1",
                "features.3.1",
                "features.5.1",
                "features.5.3",
                "features.5.5",
                "features.5.7",
                "features.7.1",
            ],
        ),
        ("regnet_x_400mf", 22, 18, None),
        ("vgg11", 0, 0, None),
        ("densenet121", 0, 0, None),
    ],
)
def test_torchvision_models(name: str, n_sites: int, n_convertible: int, odd: list[str] | None) -> None:
    model = torchvision.models.get_model(name, weights=None)
    gm, sites = _sites(model)
    assert len(sites) == n_sites
    assert sum(s.convertible for s in sites) == n_convertible
    if odd is not None:
        assert _odd(sites) == odd
    names = [s.name for s in sites]
    assert len(set(names)) == len(names) and all(":" not in n for n in names)
    modules = dict(model.named_modules())
    for s in sites:
        _assert_closed(locate(gm, s))
        assert s.block_type == type(modules[s.name]).__name__
        assert "Conv2d" in s.branch
        if s.convertible:
            # index 0 only where the stage is entered from another module (ResNet18's layer1.0
            # after the stem, ConvNeXt's stages after their downsampling layers)
            assert s.skip is SkipKind.IDENTITY and s.stride == 1 and s.in_channels == s.channels
            assert s.index >= 1 or name in ("resnet18", "convnext_tiny")
        else:
            assert s.skip is SkipKind.PROJECTION and s.index == 0


def test_resnet_site_details() -> None:
    gm, sites = _sites(torchvision.models.resnet50(weights=None))
    sites_by_name = _by_name(sites)
    first, down = sites_by_name["layer1.0"], sites_by_name["layer2.0"]
    assert (first.in_channels, first.channels, first.stride, first.height) == (64, 256, 1, 16)
    assert first.reason == "projection shortcut (Conv2d + BatchNorm2d): the first block of a stage keeps its full width"
    assert (down.in_channels, down.channels, down.stride, down.height, down.stage, down.index) == (256, 512, 2, 8, 1, 0)
    g = locate(gm, sites_by_name["layer1.1"])
    assert isinstance(g, SiteGraph)
    assert g.fork.name == "layer1_0_relu_2" and g.add.target is operator.add
    assert [n.target for n in g.branch][:2] == ["layer1.1.conv1", "layer1.1.bn1"] and g.branch[
        -1
    ].target == "layer1.1.bn3"
    assert [n.target for n in g.post] == ["layer1.1.relu"] and g.output is g.post[-1]
    assert {u.target for u in g.users} == {"layer1.2.conv1", operator.add}
    proj = locate(gm, first)
    assert [n.target for n in proj.skip] == ["layer1.0.downsample.0", "layer1.0.downsample.1"]


def test_mobilenet_v2_has_no_post_ops() -> None:
    gm, sites = _sites(torchvision.models.mobilenet_v2(weights=None))
    g = locate(gm, _by_name(sites)["features.3"])
    assert g.post == () and g.output is g.add and g.skip == ()
    assert g.branch[0].target == "features.3.conv.0.0" and g.branch[-1].target == "features.3.conv.3"


def test_quantizable_resnet_post_ops() -> None:
    model = torchvision.models.quantization.resnet18(weights=None, quantize=False)
    gm, sites = _sites(model)
    assert len(sites) == 8 and sites[0].block_type == "QuantizableBasicBlock"
    g = locate(gm, sites[0])
    assert g.add.target is torch.add
    assert [n.target for n in g.post] == [F.relu, "layer1.0.add_relu.activation_post_process"]
