"""Conversion of timm's residual CNN families, clean refusals for those without Conv-Block adds,
and every other module of timm's models named with what a conversion does to it (UNTESTED).

`timm.create_model(name, pretrained=False)`: random weights, nothing is downloaded. The smallest
variant of each family, at 64x64, gets the checks of the torchvision zoo (tests/test_zoo_convert.py):
output shape, finiteness, re-traceability, gradients on every trainable parameter, the identity
configuration reproducing the original to 1e-5, and fewer MACs. The families whose residuals are
not Conv-Block adds (dual paths, concatenations, residuals onto part of the channels, stages of a
single projection block) must fail with a named reason, not a traceback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from modify.conversion.pipeline import convert
from modify.errors import ModifyError, NoBlocksError, RecipeError
from zoo_checks import check_zoo_model, selected_skips

timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[dev]'")

SIZE = 64


def _timm_families() -> dict[str, str]:
    """The families of the README's timm table (benchmarks/families_table.py), one model each."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "families_table.py"
    spec = importlib.util.spec_from_file_location("families_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.TIMM_FAMILIES)


FAMILIES = _timm_families()

# family -> (model, the error, a phrase its message must hold).
REFUSED = {
    "ReXNet": ("rexnet_100", RecipeError, "part of the block's output"),
    "DPN": ("dpn48b", RecipeError, "part of the block's output"),  # dual paths: a residual onto part of the channels
    "DenseNet": ("densenet121", NoBlocksError, "No residual Conv-Block"),
    "VoVNet": ("ese_vovnet19b_dw", NoBlocksError, "No residual Conv-Block"),
    "SelecSLS": ("selecsls42b", NoBlocksError, "No residual Conv-Block"),
    "ResNeSt-14": ("resnest14d", RecipeError, "none of its blocks can be converted"),
}


# Every other module of timm's models (timm.list_modules(), timm 1.0.31), with the smallest model of
# it and what `modify.convert` does to that model with the default recipe, as measured on it
# (random weights, the model's own input size). A family that converts here is not yet tested:
# add it to benchmarks/families_table.py's TIMM_FAMILIES to test it and show it in the README.
UNTESTED = {
    "beit": ("beit_base_patch16_224", "NoBlocksError: no residual add holds a convolution"),
    "byoanet": ("halonet_h1", "the default recipe converts none of the blocks it finds (at 256)"),
    "cait": ("cait_xxs24_224", "NoBlocksError: no residual add holds a convolution"),
    "coat": ("coat_tiny", "converts 26 blocks at 224; not yet a tested family"),
    "convit": ("convit_tiny", "TraceError: GPSA: control flow on a tensor value"),
    "convmixer": ("convmixer_768_32", "converts 16 blocks at 224; not yet a tested family"),
    "cpubone": ("cpubone_nano", "TraceError: ConvAttention: control flow on a tensor value"),
    "crossvit": ("crossvit_tiny_240", "TraceError: CrossVit's own forward: control flow on a tensor value"),
    "csatv2": ("csatv2", "RecipeError: the default placement selects a 1-channel add (a positional embedding)"),
    "cspnext": ("cspnext_tiny", "RecipeError: the default odd-index placement selects none of its 3 blocks"),
    "davit": ("davit_tiny", "converts 12 blocks at 224; not yet a tested family"),
    "deepseek_vit": ("deepseek_vit_412m", "NoBlocksError: no residual add holds a convolution"),
    "deit": ("deit_tiny_patch16_224", "NoBlocksError: no residual add holds a convolution"),
    "edgenext": ("edgenext_xx_small", "the default recipe converts none of the blocks it finds (at 256)"),
    "efficientformer": ("efficientformer_l1", "converts 6 blocks at 224; not yet a tested family"),
    "efficientformer_v2": ("efficientformerv2_s0", "RuntimeError: a get_attr into a replaced block (a bug)"),
    "efficientvim": ("efficientvim_m1", "converts 14 blocks at 224; not yet a tested family"),
    "efficientvit_mit": ("efficientvit_b0", "TraceError: LiteMLA: control flow on a tensor value"),
    "efficientvit_msra": ("efficientvit_m0", "TraceError: LocalWindowAttention: control flow on a tensor value"),
    "eva": ("vit_tiny_patch16_dinov3_qkvb", "NoBlocksError: no residual add holds a convolution"),
    "fasternet": ("fasternet_t0", "converts 6 blocks at 224; not yet a tested family"),
    "fastvit": ("fastvit_t8", "converts 10 blocks at 256; not yet a tested family"),
    "focalnet": ("focalnet_tiny_srf", "converts 10 blocks at 224; not yet a tested family"),
    "gcvit": ("gcvit_xxtiny", "converts 1 block at 224; not yet a tested family"),
    "gemma4_vit": ("gemma4_vit_167m", "TraceError: Gemma4VitEncoder: control flow on a tensor value"),
    "hgnet": ("hgnetv2_b0", "converts 1 block at 224; not yet a tested family"),
    "hiera": ("hiera_tiny_224", "TraceError: PatchEmbed: len"),
    "hieradet_sam2": ("sam2_hiera_tiny", "NoBlocksError: no residual add holds a convolution"),
    "iformer": ("iformer_t", "converts 13 blocks at 224; not yet a tested family"),
    "inception_resnet_v2": ("inception_resnet_v2", "converts 20 blocks at 299; not yet a tested family"),
    "inception_v3": ("inception_v3", "NoBlocksError: no residual add holds a convolution"),
    "inception_v4": ("inception_v4", "NoBlocksError: no residual add holds a convolution"),
    "lcnetv2": ("lcnetv2_small", "RecipeError: the default odd-index placement selects none of its 6 blocks"),
    "levit": ("levit_128s", "NoBlocksError: no residual add holds a convolution"),
    "lowformer": ("lowformer_b0", "converts 7 blocks at 224; not yet a tested family"),
    "mambaout": ("test_mambaout", "the default recipe converts none of the blocks it finds (at 160)"),
    "maxxvit": ("test_coatnet", "converts 1 block at 160; not yet a tested family"),
    "metaformer": ("poolformerv2_s12", "converts 2 blocks at 224; not yet a tested family"),
    "mlp_mixer": ("gmlp_ti16_224", "NoBlocksError: no residual add holds a convolution"),
    "mobilenetv5": (
        "mobilenetv5_base",
        "TraceError: MobileNetV5MultiScaleFusionAdapter: control flow on a tensor value",
    ),
    "mobilevit": ("mobilevit_xxs", "TraceError: MobileVitBlock: control flow on a tensor value"),
    "mvitv2": ("mvitv2_tiny", "TraceError: MultiScaleAttention: control flow on a tensor value"),
    "naflexvit": ("naflexvit_base_patch16_parfac_gap", "TraceError: NaFlexEmbeds: control flow on a tensor value"),
    "nasnet": ("nasnetalarge", "TraceError: Conv2dSame: control flow on a tensor value"),
    "nest": ("nest_tiny", "TraceError: NestLevel: TypeError: int"),
    "nextvit": ("nextvit_small", "converts 20 blocks at 224; not yet a tested family"),
    "nfnet": ("test_nfnet", "RecipeError: the default odd-index placement selects none of its 4 blocks"),
    "pit": ("pit_ti_224", "NoBlocksError: no residual add holds a convolution"),
    "pnasnet": ("pnasnet5large", "TraceError: Conv2dSame: control flow on a tensor value"),
    "pvt_v2": ("pvt_v2_b0", "the default recipe converts none of the blocks it finds (at 224)"),
    "qwen3_vit": ("qwen3_vit_88m", "TraceError: Qwen3VitEncoder: control flow on a tensor value"),
    "rdnet": ("rdnet_tiny", "NoBlocksError: no residual add holds a convolution"),
    "repghost": ("repghostnet_050", "RecipeError: the default odd-index placement selects none of its 32 blocks"),
    "repvit": ("repvit_m1", "converts 23 blocks at 224; not yet a tested family"),
    "sequencer": ("sequencer2d_s", "NoBlocksError: no residual add holds a convolution"),
    "shvit": ("shvit_s1", "converts 19 blocks at 224; not yet a tested family"),
    "starnet": ("starnet_s050", "converts 1 block at 224; not yet a tested family"),
    "swiftformer": ("swiftformer_xs", "converts 9 blocks at 224; not yet a tested family"),
    "swin_transformer": ("swin_tiny_patch4_window7_224", "NoBlocksError: no residual add holds a convolution"),
    "swin_transformer_v2": ("swinv2_tiny_window8_256", "NoBlocksError: no residual add holds a convolution"),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", "NoBlocksError: no residual add holds a convolution"),
    "tiny_vit": ("tiny_vit_5m_224", "TraceError: TinyVitBlock: control flow on a tensor value"),
    "tnt": ("tnt_s_legacy_patch16_224", "NoBlocksError: no residual add holds a convolution"),
    "tresnet": ("tresnet_m", "converts 9 blocks at 224; not yet a tested family"),
    "twins": ("twins_svt_small", "TraceError: LocallyGroupedAttn: control flow on a tensor value"),
    "vgg": ("vgg11", "TraceError: ConvMlp: control flow on a tensor value"),
    "visformer": ("visformer_tiny", "converts 3 blocks at 224; not yet a tested family"),
    "vision_transformer": ("test_vit", "TraceError: VisionTransformer's own forward: control flow on a tensor value"),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", "TraceError: StdConv2dSame: control flow on a tensor value"),
    "vision_transformer_relpos": ("test_vit_relpos", "NoBlocksError: no residual add holds a convolution"),
    "vision_transformer_sam": ("samvit_base_patch16_224", "TraceError: Attention: control flow on a tensor value"),
    "vitamin": ("vitamin_small_224", "converts 2 blocks at 224; not yet a tested family"),
    "volo": ("volo_d1_224", "NoBlocksError: no residual add holds a convolution"),
    "xception": ("legacy_xception", "converts 4 blocks at 299; not yet a tested family"),
    "xcit": ("xcit_nano_12_p8_224", "the default recipe converts none of the blocks it finds (at 224)"),
}
TIMM_VERSION = "1.0.31"  # the timm whose modules are pinned above and in the tested families


def _module_of(names: list[str]) -> dict[str, str]:
    """timm model name -> the timm module that defines it."""
    return {n: module for module in timm.list_modules() for n in timm.list_models(module=module) if n in names}


def test_every_timm_module_is_tested_or_named_with_what_it_does() -> None:
    # A module a new timm adds (or renames) fails here: test a family of it, or list it in UNTESTED.
    tested = {*FAMILIES.values(), *(name for name, _, _ in REFUSED.values()), "resnet10t"}
    modules = _module_of(sorted(tested))
    assert sorted(tested - set(modules)) == []  # every tested model is one of timm's
    covered = set(modules.values())
    assert sorted(covered & set(UNTESTED)) == []
    assert sorted(set(timm.list_modules()) ^ (covered | set(UNTESTED))) == [], (
        f"timm {timm.__version__}'s model modules differ from those pinned here (timm {TIMM_VERSION})"
    )


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def test_at_least_25_families() -> None:
    assert len(FAMILIES) + len(REFUSED) >= 25 and len(FAMILIES) >= 25


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_converts_with_the_default_recipe(family: str) -> None:
    check_zoo_model(_build(FAMILIES[family]), SIZE)


@pytest.mark.parametrize("family", list(REFUSED))
def test_family_without_conv_block_adds_is_refused_with_a_reason(family: str) -> None:
    name, error, phrase = REFUSED[family]
    with pytest.raises(error) as info:
        convert(_build(name), input_size=SIZE)
    assert isinstance(info.value, ModifyError) and phrase in str(info.value)


def test_stages_of_one_block_say_which_recipe_selects_blocks() -> None:
    # ResNet-10-T has one block per stage: the paper's odd indices select none, and the error
    # names the next step; following it converts the one convertible block.
    with pytest.raises(RecipeError, match=r"single block \(index 0\).*`--recipe all`.*layer1\.0"):
        convert(_build("resnet10t"), input_size=SIZE)
    result = convert(_build("resnet10t"), recipe="all", input_size=SIZE)
    assert [b.name for b in result.converted] == ["layer1.0"]


def test_nf_resnet_weight_standardisation_shrinks_with_the_convolution() -> None:
    # ScaledStdConv2d standardises its weight in forward: `self.weight.reshape(1, self.out_channels, -1)`,
    # a parameter-only chain with the output width written as a number.
    result = convert(_build("nf_resnet26"), input_size=SIZE)
    assert [b.name for b in result.converted] == ["stages.1.1", "stages.2.1", "stages.3.1"]
    (skipped,) = selected_skips(result)
    assert skipped[0] == "stages.0.1" and "single value per channel" in skipped[1]  # k = 4: a 1-input filter
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.isfinite(result.model.eval()(x)).all()
