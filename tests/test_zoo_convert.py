"""Conversion of every torchvision CNN with residual Conv-Blocks, dense-task backbones, and the
models without blocks.

Random weights (``weights=None``, nothing is downloaded) and small inputs. Each classification
model is checked as timm checks its zoo: output shape, finiteness, re-traceability, gradients on
every trainable parameter, agreement with the original in the identity configuration (k = C,
"branch" form, fusion into the original positions: the converted model must reproduce the
original to 1e-5), and fewer MACs. The largest variants get the shape and identity checks only.
Every classification model of torchvision.models is in one of the lists, or in EXCLUDED with the
reason no test builds it; a test fails when torchvision adds a model none of them names.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import quantization

from modify.conversion.backbones import convert_backbone, find_backbone
from modify.conversion.pipeline import ConversionResult, convert
from modify.errors import ConversionError, NoBlocksError
from modify.layers import MoDBlock
from zoo_checks import assert_identity, check_zoo_model, selected_skips

SIZE = 32  # every model below accepts it; the last stages are 1x1

# name -> a builder; the quantizable variants in float mode (quantize=False).
QUANTIZABLE = {
    "quantized_resnet18": lambda: quantization.resnet18(weights=None, quantize=False),
    "quantized_resnet50": lambda: quantization.resnet50(weights=None, quantize=False),
    "quantized_resnext101_32x8d": lambda: quantization.resnext101_32x8d(weights=None, quantize=False),
    "quantized_mobilenet_v2": lambda: quantization.mobilenet_v2(weights=None, quantize=False),
    "quantized_mobilenet_v3_large": lambda: quantization.mobilenet_v3_large(weights=None, quantize=False),
}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = QUANTIZABLE[name]() if name in QUANTIZABLE else torchvision.models.get_model(name, weights=None)
    return model.eval()


@functools.cache
def _shared(name: str) -> nn.Module:
    """A model the tests below only read, built once: a conversion leaves its input untouched
    (tests/test_convert.py checks that), so they need not build their own."""
    return _build(name)


@functools.cache
def _default_conversion(name: str) -> ConversionResult:
    """``_shared(name)`` converted with its family's default, once, for the tests that only read the result."""
    return convert(_shared(name), input_size=SIZE)


def _slow(*names: str) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) for name in names]


FAST = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "convnext_tiny",
    "quantized_resnet18",
    "quantized_mobilenet_v2",
    "quantized_mobilenet_v3_large",
]
SLOW = [
    "resnet101",
    "resnet152",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "convnext_small",
    "convnext_base",
    "maxvit_t",
    "quantized_resnet50",
    "quantized_resnext101_32x8d",
]
# The largest variants: shape and identity only (gradients and MACs as for their smaller siblings).
LARGEST = [
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "convnext_large",
    "resnext101_64x4d",
]
# Models that need a larger input than SIZE (MaxViT's window partitions need 224).
SIZES = {"maxvit_t": 224}
# The models without residual Conv-Blocks, and the input each is refused at
# (test_models_without_blocks_say_what_is_looked_for).
NO_BLOCKS = {
    "vgg11": 32,
    "alexnet": 64,
    "densenet121": 32,
    "squeezenet1_0": 64,
    "shufflenet_v2_x0_5": 32,
    "googlenet": 64,
    "inception_v3": 80,
    "swin_t": 64,
    "vit_b_16": 224,
}
# Every other classification model of torchvision.models, and why no test here builds it: a sibling
# of a tested model that adds no new kind of block, or a model too large for the 20 minutes of CI.
_AS_VGG11 = "a plain stack without residual adds, as vgg11 (tested)"
_NO_CONV_BLOCKS = "a vision transformer: its residual adds hold no convolution, as {} (tested)"
EXCLUDED = {
    "regnet_y_128gf": "644 M parameters, 40 s: RegNetY 16gf and 32gf (LARGEST) stand for it (CI under 20 minutes)",
    "vgg11_bn": _AS_VGG11,
    "vgg13": _AS_VGG11,
    "vgg13_bn": _AS_VGG11,
    "vgg16": _AS_VGG11,
    "vgg16_bn": _AS_VGG11,
    "vgg19": _AS_VGG11,
    "vgg19_bn": _AS_VGG11,
    "densenet161": "concatenating blocks without a residual add, as densenet121 (tested)",
    "densenet169": "concatenating blocks without a residual add, as densenet121 (tested)",
    "densenet201": "concatenating blocks without a residual add, as densenet121 (tested)",
    "squeezenet1_1": "fire modules without a residual add, as squeezenet1_0 (tested)",
    "shufflenet_v2_x1_0": "channel shuffles without a residual add, as shufflenet_v2_x0_5 (tested)",
    "shufflenet_v2_x1_5": "channel shuffles without a residual add, as shufflenet_v2_x0_5 (tested)",
    "shufflenet_v2_x2_0": "channel shuffles without a residual add, as shufflenet_v2_x0_5 (tested)",
    "swin_s": _NO_CONV_BLOCKS.format("swin_t"),
    "swin_b": _NO_CONV_BLOCKS.format("swin_t"),
    "swin_v2_t": _NO_CONV_BLOCKS.format("swin_t"),
    "swin_v2_s": _NO_CONV_BLOCKS.format("swin_t"),
    "swin_v2_b": _NO_CONV_BLOCKS.format("swin_t"),
    "vit_b_32": _NO_CONV_BLOCKS.format("vit_b_16"),
    "vit_l_16": _NO_CONV_BLOCKS.format("vit_b_16"),
    "vit_l_32": _NO_CONV_BLOCKS.format("vit_b_16"),
    "vit_h_14": _NO_CONV_BLOCKS.format("vit_b_16"),
}


def test_every_torchvision_classification_model_is_tested_or_excluded_with_a_reason() -> None:
    # A model a new torchvision adds fails here until it joins a list above (or EXCLUDED, with why).
    classification = set(torchvision.models.list_models(module=torchvision.models))
    tested = {*FAST, *SLOW, *LARGEST, *NO_BLOCKS} - set(QUANTIZABLE)
    assert sorted(classification - tested - set(EXCLUDED)) == []
    assert sorted((tested | set(EXCLUDED)) - classification) == []  # no stale name
    assert sorted(tested & set(EXCLUDED)) == []


@pytest.mark.parametrize("name", [*FAST, *_slow(*SLOW)])
def test_model_converts_with_its_family_default(name: str) -> None:
    result = check_zoo_model(_build(name), SIZES.get(name, SIZE))
    assert result.default_reason is not None and result.default_reason.startswith(f"c={result.recipe.defaults.c},")


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGEST)
def test_largest_variants_convert_and_reproduce_in_the_identity_configuration(name: str) -> None:
    model = _build(name)
    x = torch.randn(1, 3, SIZE, SIZE)
    result = convert(model, example_inputs=x)
    assert result.converted and selected_skips(result) == []
    with torch.no_grad():
        expected, out = model(x), result.model.eval()(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    del result, out
    assert_identity(model, x)


# ---------------------------------------------------------------------------------------------
# Capacity: the family defaults, and c / k given explicitly


@pytest.mark.parametrize(
    ("name", "c", "ks"),
    [
        ("resnet50", 64, [4, 8, 8, 16, 16, 16, 32]),  # the paper's ResNet50-MoD
        ("mobilenet_v2", 16, [1, 2, 4, 4, 6, 10]),  # the paper's MobileNetV2-MoD: k = C / 16
        ("convnext_tiny", 16, [6, 12, 24, 24, 24, 24, 48]),
        ("efficientnet_b0", 16, [1, 2, 5, 7, 12, 12]),
        ("regnet_x_400mf", 64, [1, 2, 2, 2, 6, 6, 6, 6, 6, 6]),
    ],
)
def test_the_default_capacity_follows_the_family(name: str, c: int, ks: list[int]) -> None:
    result = _default_conversion(name)
    assert result.recipe.defaults.c == c and f"c={c}, the default for" in (result.default_reason or "")
    assert [b.k for b in result.converted] == ks
    assert result.recipe.to_dict()["defaults"] == {"c": c}  # what a checkpoint replays
    assert convert(_shared(name), c=c, input_size=SIZE).default_reason is None


@pytest.mark.parametrize(
    "name",
    ["resnext50_32x4d", "mobilenet_v3_large", "efficientnet_b0", "mnasnet0_5", "regnet_y_400mf", "convnext_tiny"],
)
@pytest.mark.parametrize("kwargs", [{"c": 8}, {"k": 0.25}, {"k": 2}])
def test_explicit_c_and_k(name: str, kwargs: dict) -> None:
    model = _shared(name)
    x = torch.randn(2, 3, SIZE, SIZE)
    result = convert(model, example_inputs=x[:1], **kwargs)
    assert result.converted and selected_skips(result) == [] and result.default_reason is None
    if "k" in kwargs and isinstance(kwargs["k"], int):
        assert {b.k for b in result.converted} == {kwargs["k"]}
    with torch.no_grad():
        out = result.model.eval()(x)
    assert out.shape == model(x).shape and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "block", "widths"),
    [
        ("efficientnet_b0", "features.2.1", [(1, 6), (6, 6), (6, 1), (1, 6), (6, 1)]),  # C=24, k=1: 24->144, SE 144->6
        (
            "mobilenet_v3_large",
            "features.5",
            [(2, 6), (6, 6), (6, 2), (2, 6), (6, 2)],
        ),  # C=40, k=2: 40->120, SE 120->32
        ("regnet_y_400mf", "trunk_output.block4.block4-1", [(6, 6), (6, 6), (6, 2), (2, 6), (6, 6)]),
    ],  # C=440, k=6: SE 110
)
def test_squeeze_excitation_widths_scale_by_k_over_c(name: str, block: str, widths: list[tuple[int, int]]) -> None:
    result = _default_conversion(name)
    convs = [m for m in result.model.get_submodule(block).block.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == widths
    depthwise = convs[1]
    assert depthwise.groups == depthwise.in_channels  # depthwise stays depthwise (RegNet: group conv)


def test_a_layernorm_over_one_channel_is_skipped_with_a_reason() -> None:
    # ConvNeXt at c = 64: k = 96 // 64 = 1 in the first stage, where the channel-last
    # LayerNorm would normalize a single value and output a constant.
    result = convert(_shared("convnext_tiny"), c=64, input_size=SIZE)
    skipped = dict(selected_skips(result))
    assert list(skipped) == ["features.1.1"]
    assert "LayerNorm" in skipped["features.1.1"] and "k >= 2" in skipped["features.1.1"]
    assert [b.k for b in result.converted] == [3, 6, 6, 6, 6, 12]


def test_stochastic_depth_follows_the_mod_blocks_mode() -> None:
    # Traced in train mode, torchvision's stochastic_depth(x, p, mode, self.training) freezes
    # training=True; the reduced block must still be deterministic in eval mode.
    model = _build("efficientnet_b0").train()
    with torch.no_grad():  # make stochastic depth drop often, so a frozen flag would show
        for m in model.modules():
            if isinstance(m, torchvision.ops.StochasticDepth):
                m.p = 0.5
    result = convert(model, input_size=SIZE)
    converted = result.model.eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), converted(x), atol=0, rtol=0)
    block = converted.get_submodule(result.converted[0].module).block
    assert any(isinstance(m, torchvision.ops.StochasticDepth) for m in block.modules())


# ---------------------------------------------------------------------------------------------
# Models without residual Conv-Blocks


@pytest.mark.parametrize(("name", "size"), NO_BLOCKS.items())
def test_models_without_blocks_say_what_is_looked_for(name: str, size: int) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with pytest.raises(
        NoBlocksError, match=r"No residual Conv-Block found in \w+\. modify looks for residual Conv-Blocks: an add"
    ):
        convert(model, input_size=size)


# ---------------------------------------------------------------------------------------------
# Dense tasks: the backbone of a segmentation or detection model


@pytest.mark.parametrize(
    ("name", "family_c"),
    [
        ("fcn_resnet50", 64),
        ("deeplabv3_resnet50", 64),
        ("deeplabv3_mobilenet_v3_large", 16),
        ("lraspp_mobilenet_v3_large", 16),
    ],
)
def test_segmentation_backbones_convert_in_place(name: str, family_c: int) -> None:
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    assert find_backbone(model) == "backbone"
    result = convert_backbone(model, input_size=64)
    assert type(result.model) is type(model) and result.model is not model
    assert result.recipe.defaults.c == family_c and selected_skips(result) == []
    assert not any(isinstance(m, MoDBlock) for m in model.modules())  # the original is untouched
    assert result.model.backbone is not model.backbone
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = model(x), result.model.eval()(x)
    assert out.keys() == expected.keys() and all(out[k].shape == expected[k].shape for k in out)
    # Dilated stages keep their dilation and padding in the reduced blocks.
    dilated = [m for m in result.model.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    mod_convs = [
        c for b in result.model.modules() if isinstance(b, MoDBlock) for c in b.modules() if isinstance(c, nn.Conv2d)
    ]
    assert (
        any(
            c.dilation != (1, 1) and c.padding == tuple(d * (c.kernel_size[0] // 2) for d in c.dilation)
            for c in mod_convs
        )
        and dilated
    )


def test_deeplabv3_resnet50_runs_end_to_end() -> None:
    model = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5)
    result = convert_backbone(model.eval(), input_size=128)
    assert [b.name for b in result.converted] == [
        "layer1.1",
        "layer2.1",
        "layer2.3",
        "layer3.1",
        "layer3.3",
        "layer3.5",
        "layer4.1",
    ]
    layer4 = result.model.backbone.layer4[1]
    assert isinstance(layer4, MoDBlock) and layer4.block.branch.conv2.dilation == (4, 4)
    with torch.no_grad():
        out = result.model.eval()(torch.randn(1, 3, 128, 128))
    assert set(out) == {"out"} and out["out"].shape == (1, 5, 128, 128) and torch.isfinite(out["out"]).all()


def test_faster_rcnn_resnet50_fpn_runs_end_to_end() -> None:
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128
    ).eval()
    assert find_backbone(model) == "backbone.body"
    result = convert_backbone(model, input_size=128)
    assert len(result.converted) == 7 and isinstance(result.model.backbone.body.layer3[1], MoDBlock)
    assert result.model.backbone.fpn is not model.backbone.fpn  # a copy of the whole model
    with torch.no_grad():
        (detections,) = result.model.eval()([torch.rand(3, 128, 128)])
    assert set(detections) == {"boxes", "labels", "scores"}
    assert detections["boxes"].shape[1:] == (4,) and len(detections["labels"]) == len(detections["scores"])


def test_frozen_batchnorm_backbones_shrink() -> None:
    # Detection backbones built for pretrained weights use FrozenBatchNorm2d (buffers only).
    model = torchvision.models.resnet50(weights=None, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d).eval()
    result = convert(model, input_size=SIZE, init="copy")
    assert len(result.converted) == 7 and selected_skips(result) == []
    # FrozenBatchNorm2d is traced through and folded into (1, C, 1, 1) constants, which are sliced
    # to the width they broadcast against: layer1.1 at k = 4 is 4 -> 1 -> 1 -> 4.
    branch = result.model.layer1[1].block.branch
    assert sorted(b.shape[1] for b in branch.buffers()) == [1, 1, 1, 1, 4, 4]
    assert_identity(model, torch.randn(1, 3, SIZE, SIZE))


def test_a_model_without_a_backbone_is_named() -> None:
    with pytest.raises(ConversionError, match="ResNet has no 'backbone' or 'backbone.body' module"):
        convert_backbone(torchvision.models.resnet18(weights=None))
