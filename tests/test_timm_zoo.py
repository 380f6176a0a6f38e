"""Conversion of timm's residual CNN families, and clean refusals for those without Conv-Block adds.

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

from modify.errors import ModifyError, NoBlocksError, RecipeError
from modify.conversion.pipeline import convert
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
