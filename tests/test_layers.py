"""MoDBlock against a forward written straight from the paper's equations, per sample, with
slices and gathers of its own; gradients; fx tracing and torch.export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from modify.layers import (
    BlockForm,
    ChannelSelector,
    Fusion,
    FusionSlot,
    MoDBlock,
    MoDConfig,
    ScorerActivation,
    SelectionOrder,
    capacity_to_k,
)
from modify.layers.block import gather_channels
from modify.models.resnet_mod import reduced_bottleneck
from toy_models import randomise_norms

C, K, H, W = 16, 4, 5, 6


def _branch(k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(k, k, 3, padding=1, bias=False), nn.BatchNorm2d(k), nn.ReLU(), nn.Conv2d(k, k, 1))


def reference_forward(x: torch.Tensor, mod: MoDBlock, slot: str, order: str, form: str) -> torch.Tensor:
    """Eq. (1)-(2) of the paper, one sample at a time, with the selector's weights read directly."""
    w1, w2 = mod.selector.fc1.weight, mod.selector.fc2.weight
    k = mod.k
    outs = []
    for n in range(x.shape[0]):
        xn = x[n]  # (C, H, W)
        squeeze = xn.mean(dim=(1, 2))  # (C,)
        s = torch.sigmoid(w2 @ torch.relu(w1 @ squeeze))  # (C,)
        idx = torch.argsort(s, descending=True)[:k]
        if order == "index":
            idx = torch.sort(idx).values
        picked = xn[idx]  # (k, H, W)
        y = mod.block(picked[None])[0] * s[idx][:, None, None]  # (k, H, W)
        out = xn.clone()
        if slot == "first":
            out[:k] = xn[:k] + y
        elif slot == "last":
            out[-k:] = xn[-k:] + y
        else:
            out[idx] = xn[idx] + y
        if form == "branch":
            out = torch.relu(out)
        outs.append(out)
    return torch.stack(outs)


@pytest.mark.parametrize("slot", ["first", "last", "original"])
@pytest.mark.parametrize("form", ["whole", "branch"])
@pytest.mark.parametrize("order", ["score", "index"])
def test_mod_block_matches_paper_equations(slot: str, form: str, order: str) -> None:
    block = BasicBlock(K, K) if form == "whole" else _branch(K)
    post = nn.ReLU() if form == "branch" else None
    mod = MoDBlock(C, K, randomise_norms(block), form=form, post=post, fusion=slot, order=order, reduction=4)
    mod = mod.double().eval()
    x = torch.randn(3, C, H, W, dtype=torch.float64)
    with torch.no_grad():
        expected = reference_forward(x, mod, slot, order, form)
        actual = mod(x)
    assert actual.shape == x.shape
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_unselected_channels_pass_through_unchanged() -> None:
    mod = MoDBlock(C, K, BasicBlock(K, K)).eval()
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        out = mod(x)
    assert torch.equal(out[:, K:], x[:, K:])
    assert not torch.equal(out[:, :K], x[:, :K])


def test_selection_differs_per_sample() -> None:
    sel = ChannelSelector(C, K, reduction=4)
    x = torch.randn(2, C, H, W)
    x[1] = -x[0]
    _, idx = sel(x)
    assert idx.shape == (2, K)
    assert not torch.equal(idx[0], idx[1])


def test_selector_index_order_is_ascending() -> None:
    sel = ChannelSelector(C, K, order="index")
    x = torch.randn(4, C, H, W)
    scores, idx = sel(x)
    assert torch.all(idx[:, 1:] > idx[:, :-1])
    full = sel.scores(x)  # (4, C)
    top = torch.topk(full, K, dim=1).indices
    assert torch.equal(torch.sort(top, dim=1).values, idx)  # the same set as top-k, re-ordered
    torch.testing.assert_close(scores, torch.stack([full[n, idx[n]] for n in range(4)]))


def test_selector_hidden_width_and_no_bias() -> None:
    sel = ChannelSelector(1024, 16)
    assert sel.fc1.weight.shape == (64, 1024) and sel.fc1.bias is None
    assert sel.fc2.weight.shape == (1024, 64) and sel.fc2.bias is None
    assert ChannelSelector(8, 1).fc1.out_features == 1  # max(1, C // 16)


def _activation_by_formula(z: torch.Tensor, name: str) -> torch.Tensor:
    """The scorer's hidden activations written out: ReLU, a slope of 0.1 below zero, the exact GELU."""
    if name == "relu":
        return torch.where(z > 0, z, torch.zeros_like(z))
    if name == "leaky_relu":
        return torch.where(z > 0, z, 0.1 * z)
    return 0.5 * z * (1 + torch.erf(z / 2**0.5))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu"])
def test_selector_scores_follow_their_formula_with_the_same_parameters(activation: str) -> None:
    torch.manual_seed(0)
    sel = ChannelSelector(C, K, activation=activation)
    x = torch.randn(3, C, H, W)
    z = x.mean(dim=(2, 3)) @ sel.fc1.weight.T  # (3, C // 16)
    expected = torch.sigmoid(_activation_by_formula(z, activation) @ sel.fc2.weight.T)  # (3, C)
    torch.testing.assert_close(sel.scores(x), expected)
    assert sum(p.numel() for p in sel.parameters()) == 2 * C * max(1, C // 16)  # no parameter added


@pytest.mark.parametrize(("activation", "gets_gradient"), [("relu", False), ("leaky_relu", True), ("gelu", True)])
def test_a_unit_negative_on_every_input_learns_only_without_the_relu(activation: str, gets_gradient: bool) -> None:
    """A block's input is a ReLU output: pooled channels >= 0, so a unit with negative weights is
    negative on every image. Under the ReLU it gets no gradient (dead for good); the others keep one."""
    torch.manual_seed(0)
    sel = ChannelSelector(64, 8, activation=activation)
    with torch.no_grad():
        sel.fc1.weight.copy_(-sel.fc1.weight.abs())  # every unit < 0 on inputs >= 0
    x = torch.rand(4, 64, 5, 5)  # >= 0, as after a ReLU
    scores, _ = sel(x)
    scores.sum().backward()
    assert bool(sel.fc1.weight.grad.abs().sum() > 0) is gets_gradient
    assert bool(scores.std() > 0) is gets_gradient  # under the ReLU every score is sigmoid(0)


@pytest.mark.parametrize("form", ["whole", "branch"])
def test_gradients_reach_every_parameter(form: str) -> None:
    block = reduced_bottleneck(8) if form == "whole" else _branch(8)
    mod = MoDBlock(32, 8, block, form=form, post=nn.ReLU() if form == "branch" else None).train()
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    mod(x).square().mean().backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None
    assert mod.selector.fc1.weight.grad.abs().sum() > 0 and mod.selector.fc2.weight.grad.abs().sum() > 0


def test_fusion_does_not_modify_its_input() -> None:
    x = torch.randn(1, 6, 2, 2)
    before = x.clone()
    for slot in FusionSlot:
        Fusion(6, 2, slot)(x, torch.ones(1, 2, 2, 2), torch.tensor([[4, 1]]))
    assert torch.equal(x, before)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gather_channels_picks_each_samples_planes(layout: torch.memory_format) -> None:
    x = torch.randn(3, C, H, W).contiguous(memory_format=layout)
    indices = torch.stack([torch.randperm(C)[:K] for _ in range(3)])  # (3, K), per sample
    expected = torch.stack([x[n, indices[n]] for n in range(3)])  # plain indexing, sample by sample
    assert torch.equal(gather_channels(x, indices), expected)


@pytest.mark.parametrize("slot", ["first", "last"])
def test_placement_convolution_equals_the_slice_fusion(slot: str) -> None:
    fusion = Fusion(C, K, slot)
    x, y = torch.randn(2, C, H, W), torch.randn(2, K, H, W)
    weight = fusion.placement()
    assert weight.shape == (C, K, 1, 1) and weight.sum() == K  # one 1 per processed channel
    expected = fusion(x, y, torch.zeros(2, K, dtype=torch.long))
    assert torch.equal(x + F.conv2d(y, weight), expected)  # exact: each output is x + 1*y or x + 0
    with pytest.raises(ValueError, match="'original' slot"):
        Fusion(C, K, "original").placement()


@pytest.mark.parametrize("slot", ["first", "last", "original"])
def test_in_place_fusion_equals_the_copy(slot: str) -> None:
    fusion = Fusion(C, K, slot)
    x, y = torch.randn(2, C, H, W), torch.randn(2, K, H, W)
    indices = torch.stack([torch.randperm(C)[:K] for _ in range(2)])
    expected = fusion(x, y, indices)
    fusion.inplace = True
    with torch.no_grad():
        target = x.clone()
        out = fusion(target, y, indices)
    assert out is target and torch.equal(out, expected)  # written into the input, same numbers
    out = fusion(x, y.requires_grad_(), indices)  # with autograd on it copies, whatever the flag
    assert out is not x and torch.equal(out.detach(), expected)


def test_bad_options_name_the_valid_values() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown value 'middle' for FusionSlot; expected one of 'first', 'last', 'original'"
    ):
        MoDBlock(8, 2, BasicBlock(2, 2), fusion="middle")
    with pytest.raises(ValueError, match=r"k=9 must lie in 1\.\.8"):
        ChannelSelector(8, 9)
    with pytest.raises(ValueError, match="post= applies to the 'branch' form only"):
        MoDBlock(8, 2, BasicBlock(2, 2), post=nn.ReLU())
    assert SelectionOrder.from_str("INDEX") is SelectionOrder.INDEX
    assert BlockForm.from_str(BlockForm.BRANCH) is BlockForm.BRANCH
    with pytest.raises(ValueError, match=r"Unknown value 'tanh' for ScorerActivation; expected one of 'relu'"):
        MoDBlock(8, 2, BasicBlock(2, 2), activation="tanh")


def test_the_scorer_activation_reaches_the_selector_and_is_written_only_when_not_the_relu() -> None:
    config = MoDConfig(activation="leaky_relu")
    assert MoDBlock.from_config(8, 2, BasicBlock(2, 2), config).selector.activation is ScorerActivation.LEAKY_RELU
    assert config.as_dict()["activation"] == "leaky_relu" and MoDConfig(**config.as_dict()) == config
    assert "activation" not in MoDConfig().as_dict()  # recipes and checkpoints from before it read the same


def test_capacity_to_k() -> None:
    assert [capacity_to_k(c, 64) for c in (64, 256, 512, 1024, 2048)] == [1, 4, 8, 16, 32]
    assert capacity_to_k(24, 16) == 1 and capacity_to_k(160, 16) == 10
    with pytest.raises(ValueError, match="capacity c=0"):
        capacity_to_k(64, 0)


class _TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.mod1 = MoDBlock(C, K, BasicBlock(K, K))
        self.mod2 = MoDBlock(C, K, _branch(K), form="branch", post=nn.ReLU(), fusion="original", order="index")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mod2(self.mod1(self.stem(x)))


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MoDBlock) or super().is_leaf_module(m, qualname)


def test_fx_traces_inside_and_as_leaf() -> None:
    model = randomise_norms(_TwoBlocks()).eval()
    x = torch.randn(2, 3, H, W)
    inside = torch.fx.symbolic_trace(model)
    assert any(n.target is torch.topk for n in inside.graph.nodes)
    leaf_graph = _LeafTracer().trace(model)
    leaf = torch.fx.GraphModule(model, leaf_graph)
    mod_nodes = [n.target for n in leaf.graph.nodes if n.op == "call_module"]
    assert "mod1" in mod_nodes and "mod2" in mod_nodes
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(inside(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(leaf(x), expected, atol=0, rtol=0)


def test_torch_export_has_no_data_dependent_guards() -> None:
    model = _TwoBlocks().eval()
    x = torch.randn(2, 3, H, W)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))
    # The same program serves another input of the same shape (no value was baked in).
    y = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(y), model(y))


def test_train_and_eval_modes_run() -> None:
    model = copy.deepcopy(_TwoBlocks())
    x = torch.randn(2, 3, H, W)
    assert model.train()(x).shape == (2, C, H, W)
    assert model.eval()(x).shape == (2, C, H, W)
    assert F.mse_loss(model(x), model(x)) == 0
