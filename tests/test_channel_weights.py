"""MoD blocks whose selected channels bring their own weights (``weights: channel``): the original
block restricted to each image's k channels, written out with masks from the original's layers;
a fixed set gives static MoD's numbers exactly; gradients, batching, recipes, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modify
from modify.conversion.init import initialize, mod_blocks
from modify.conversion.recipe import load_recipe
from modify.errors import ModifyError, RecipeError
from modify.layers import ChannelConv2d, ChannelNorm2d, ChannelSelector, MoDBlock, MoDConfig, ReducedWeights
from modify.layers.channel_weights import channel_weight_branch
from toy_models import randomise_norms

SIZE = 32


def _randomise(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and scales (the ``importance`` inner ranking reads them), in eval mode."""
    return randomise_norms(model, scale=(0.2, 1.5)).eval()


def _recipe(block: str, k: int, **mod: str) -> dict:
    return {
        "version": 2,
        "mod": {"form": "branch", "fusion": "original", **mod},
        "rules": [{"name": block, "action": "mod", "k": k}],
    }


def _converted(net: nn.Module, block: str, k: int, init: str, **mod: str) -> nn.Module:
    result = modify.convert(net, recipe=_recipe(block, k, **mod), input_size=SIZE)
    initialize(result, init, original=net)
    return result.model.eval()


def _selected(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores and channels (N, k) the model's one MoD block picks on ``x``."""
    ((_, _, mod),) = mod_blocks(model)
    seen: dict[str, torch.Tensor] = {}
    handle = mod.selector.register_forward_hook(lambda m, a, out: seen.update(scores=out[0], indices=out[1]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["scores"], seen["indices"]


def _restricted_basic_block(block: nn.Module, scores: torch.Tensor, indices: torch.Tensor, inner: torch.Tensor):
    """A forward hook making a torchvision BasicBlock compute
    ``relu(x + S * bn2(conv2(M_inner * relu(bn1(conv1(M * x))))))``: ``M`` each image's channels
    (``indices`` (N, k)), ``S`` their scores, ``M_inner`` the reduced block's inner channels."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (N, C, H, W)
        n, c = x.shape[:2]
        mask = torch.zeros(n, c).scatter(1, indices, 1.0)[:, :, None, None]  # (N, C, 1, 1)
        scale = torch.zeros(n, c).scatter(1, indices, scores)[:, :, None, None]  # (N, C, 1, 1)
        keep = torch.zeros(c).index_fill(0, inner, 1.0)[None, :, None, None]  # (1, C, 1, 1)
        h = torch.relu(module.bn1(module.conv1(x * mask))) * keep
        return torch.relu(x + scale * module.bn2(module.conv2(h)))

    return block.register_forward_hook(hook)


@pytest.mark.parametrize("k", [32, 96])
@pytest.mark.parametrize("init", ["copy", "importance"])
def test_each_image_runs_the_original_block_on_its_own_channels(init: str, k: int) -> None:
    """ResNet-18's layer2.1 (C = 128): the converted model equals the original with that block
    restricted, per image, to the channels its selector picks, with the original's weights. The
    inner channels are the reduced block's: the leading k (``copy``) or, for a BasicBlock whose
    inner width is C, the k it reads most (``importance``: L1 of conv1 over its input channels)."""
    torch.manual_seed(0)
    net = _randomise(modify.get_model("resnet18", num_classes=10))
    model = _converted(net, "layer2.1", k, init, weights="channel")
    x = torch.randn(6, 3, SIZE, SIZE)
    scores, indices = _selected(model, x)
    if init == "copy":  # a fresh selector: the images pick different channels
        assert len({tuple(sorted(row)) for row in indices.tolist()}) > 1
        inner = torch.arange(k)
    else:
        conv1 = net.layer2[1].conv1.weight
        inner = torch.argsort(conv1.abs().sum((0, 2, 3)), descending=True, stable=True)[:k]
    handle = _restricted_basic_block(net.layer2[1], scores, indices, inner)
    try:
        with torch.no_grad():
            expected = net(x)
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "block", "k"),
    [("resnet18", "layer3.1", 64), ("resnet50", "layer3.1", 256), ("mobilenet_v2", "features.5", 8)],
)
def test_a_fixed_set_with_own_weights_is_static_mod(name: str, block: str, k: int) -> None:
    """With one fixed set, each channel's own weights are what static MoD's ``importance`` copies
    into the slot that channel fills: the two builds compute the same numbers (BasicBlock,
    Bottleneck, inverted residual)."""
    torch.manual_seed(0)
    net = _randomise(modify.get_model(name, num_classes=10))
    own = _converted(net, block, k, "importance", selection="static", weights="channel")
    slot = _converted(net, block, k, "importance", selection="static")
    x = torch.randn(3, 3, SIZE, SIZE)
    ((_, _, mod),) = mod_blocks(own)
    seen: list[torch.Tensor] = []  # the block's input (cloned: the fusion may add into it in place), output
    hooks = [
        mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone())),
        mod.register_forward_hook(lambda m, args, out: seen.append(out)),
    ]
    with torch.no_grad():
        torch.testing.assert_close(own(x), slot(x), atol=2e-5, rtol=1e-5)
    for h in hooks:
        h.remove()
    assert (seen[1] - seen[0]).abs().max() > 1e-2  # the block does add an update
    c = mod.channels
    widened = [m for m in mod.block.modules() if isinstance(m, (ChannelConv2d, ChannelNorm2d))]
    assert [(type(m).__name__, getattr(m, "side", None)) for m in widened][:2] == [
        ("ChannelConv2d", "in"),
        ("ChannelConv2d", "out"),
    ]
    assert widened[0].in_channels == c and widened[1].out_channels == c and widened[2].num_features == c


def test_a_batch_runs_as_each_image_alone() -> None:
    """The grouped convolution of a batch gives each image what it gives alone, in training mode too."""
    torch.manual_seed(0)
    branch = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)
    )
    wide = _randomise(channel_weight_branch(branch, 16))
    x, idx = torch.randn(5, 4, 7, 7), torch.stack([torch.randperm(16)[:4] for _ in range(5)])  # (5, 4, 7, 7), (5, 4)
    with torch.no_grad():
        alone = torch.cat([wide(x[i : i + 1], idx[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(wide(x, idx), alone, atol=1e-5, rtol=1e-5)
    # the widened layers against their full-width selves: conv "in" on the zero-filled input, "out" rows, norm rows
    conv_in, conv_out, norm = wide.get_submodule("0"), wide.get_submodule("3"), wide.get_submodule("4")
    full = torch.zeros(5, 16, 7, 7).scatter(1, idx[:, :, None, None].expand(-1, -1, 7, 7), x)
    with torch.no_grad():
        torch.testing.assert_close(conv_in(x, idx), conv_in(full), atol=1e-5, rtol=1e-5)
        h = torch.randn(5, 6, 7, 7)
        rows = conv_out(h).gather(1, idx[:, :, None, None].expand(-1, -1, 7, 7))
        torch.testing.assert_close(conv_out(h, idx), rows, atol=1e-5, rtol=1e-5)
        normed = norm(conv_out(h)).gather(1, idx[:, :, None, None].expand(-1, -1, 7, 7))
        torch.testing.assert_close(norm(rows, idx), normed)


def test_gradients_reach_every_parameter_and_the_last_norm_keeps_its_statistics() -> None:
    """Training mode: every trainable parameter gets a gradient, the selector's included (through
    the scores); the widened BatchNorm normalises with each channel's running statistics and leaves
    them as they were, the inner one learns its batch statistics as usual."""
    torch.manual_seed(0)
    net = _randomise(modify.get_model("resnet18", num_classes=10))
    model = _converted(net, "layer2.1", 32, "copy", weights="channel").train()
    ((_, _, mod),) = mod_blocks(model)
    assert isinstance(mod.selector, ChannelSelector)
    norm, inner = mod.block.get_submodule("bn2"), mod.block.get_submodule("bn1")
    before, inner_before = norm.running_mean.clone(), inner.running_mean.clone()
    model(torch.randn(4, 3, SIZE, SIZE)).logsumexp(1).sum().backward()
    missing = [n for n, p in mod.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    assert torch.equal(norm.running_mean, before) and not torch.equal(inner.running_mean, inner_before)


def test_recalibration_and_block_distillation_keep_each_channels_statistics() -> None:
    """`recalibrate_bn` (which block distillation ends with) re-estimates the inner BatchNorm and
    leaves the widened one's statistics, the original block's, as they were."""
    from modify.train.distill import distill_blocks
    from modify.train.evaluation import recalibrate_bn

    torch.manual_seed(0)
    net = _randomise(modify.get_model("resnet18", num_classes=10))
    model = _converted(net, "layer2.1", 32, "copy", weights="channel")
    ((_, _, mod),) = mod_blocks(model)
    norm, inner = mod.block.get_submodule("bn2"), mod.block.get_submodule("bn1")
    original_var = net.layer2[1].bn2.running_var.clone()
    images = [(torch.randn(8, 3, SIZE, SIZE), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    inner_before = inner.running_var.clone()
    assert recalibrate_bn(model, images, 2) == 2
    assert torch.equal(norm.running_var, original_var) and not torch.equal(inner.running_var, inner_before)
    distill_blocks(model, net, images, images=16, steps=2, batch_size=8)
    assert torch.equal(norm.running_var, original_var)


def test_recipes_and_checkpoints_keep_the_weights_option(tmp_path) -> None:
    recipe = load_recipe(_recipe("layer2.1", 32, weights="channel"))
    assert recipe.mod.weights is ReducedWeights.CHANNEL and recipe.mod.as_dict()["weights"] == "channel"
    assert "weights" not in MoDConfig().as_dict()  # recipes written before the option read the same
    torch.manual_seed(0)
    net = _randomise(modify.get_model("resnet18", num_classes=10))
    model = _converted(net, "layer2.1", 32, "copy", weights="channel")
    loaded = modify.load(modify.save(model, tmp_path / "own.pt")).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert "weights=channel" in repr(loaded)


@pytest.mark.parametrize(
    ("mod", "named"), [({"form": "whole"}, "form='whole'"), ({"fusion": "first"}, "fusion='first'")]
)
def test_channel_weights_need_the_branch_form_and_the_original_fusion(mod: dict, named: str) -> None:
    raw = _recipe("layer2.1", 32, weights="channel")
    raw["mod"].update(mod)
    with pytest.raises(RecipeError, match=named):
        load_recipe(raw)
    with pytest.raises(RecipeError, match="expected one of slot, channel"):
        load_recipe(_recipe("layer2.1", 32, weights="own"))


def test_a_branch_that_does_not_start_with_a_convolution_is_refused() -> None:
    branch = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    with pytest.raises(ModifyError, match="use weights: slot"):
        MoDBlock(16, 4, branch, form="branch", fusion="original", weights="channel")


@pytest.mark.parametrize("batch", [1, 3])
def test_own_weights_cost_the_macs_of_the_slot_build_counted_by_hand(batch: int) -> None:
    """C = 8, k = 2 on 4x4 maps, reduction 4, the branch conv-BN-ReLU-conv-BN at width 2: gathering
    rows and columns of the weights is a copy, so both builds count the same MACs."""
    from modify.measure.profiling import profile_model

    hw = 4 * 4
    selector = 8 * hw + 8 * 2 + 2 * 8 + 8 + 8  # avg-pool; fc1; fc2; sigmoid; top-k
    branch = 2 * (2 * hw * 2 * 3 * 3) + 2 * (2 * 2 * hw)  # two 3x3 convs, two eval BatchNorms
    fuse = 2 * hw + 8 * hw  # the scores, then scatter-add into the C channels
    for weights in ("slot", "channel"):
        layers = [nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU()]
        branch_module = nn.Sequential(*layers, nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2))
        mod = MoDBlock(8, 2, branch_module, form="branch", fusion="original", weights=weights, reduction=4)
        report = profile_model(mod, input_size=4, in_channels=8, batch_size=batch)
        assert report.macs == batch * (selector + branch + fuse) and report.uncounted == {}


def test_a_per_image_model_exports_to_onnx_with_parity(tmp_path) -> None:
    """The weight gathers and the grouped convolution export (dynamic batch); ONNX Runtime gives the
    same outputs at batch 1 and 3."""
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    from modify.deploy.export import export_onnx

    torch.manual_seed(0)
    net = _randomise(modify.get_model("resnet18", num_classes=10))
    model = _converted(net, "layer2.1", 32, "copy", weights="channel")
    report = export_onnx(model, tmp_path / "own.onnx", input_size=SIZE, batch_sizes=(1, 3))
    assert report.max_abs_diff <= 1e-4 and "TopK" in report.operators
