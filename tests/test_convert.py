"""convert(): the API's options, what it leaves alone, the paper's numbers, save and load."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import modify
from modify.conversion.pipeline import convert_identity
from modify.conversion.tracing import trace
from modify.errors import ConversionError, RecipeError
from modify.layers import MoDBlock
from modify.measure.profiling import profile_model

SIZE = 64


def _resnet(name: str = "resnet50", **kwargs) -> nn.Module:
    return modify.get_model(name, **kwargs).eval()


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnext50_32x4d",
        "wide_resnet50_2",
        pytest.param("resnet101", marks=pytest.mark.slow),
        pytest.param("resnet152", marks=pytest.mark.slow),
    ],
)
def test_resnet_family_converts(name: str) -> None:
    model = _resnet(name, num_classes=10)
    x = torch.randn(2, 3, SIZE, SIZE)
    result = modify.convert(model, input_size=SIZE)
    converted = result.model.eval()
    with torch.no_grad():
        expected, out = model(x), converted(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert [c.name for c in result.converted] == [s.name for s in result.sites if s.index % 2 == 1 and s.convertible]
    trace(converted, x)  # re-traces, MoD blocks as leaves
    assert profile_model(converted, input_size=SIZE).macs < profile_model(model, input_size=SIZE).macs
    identity = convert_identity(model, example_inputs=x).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(identity(x), expected, atol=1e-5, rtol=1e-5)


def test_resnet50_every_other_is_the_papers_resnet50_mod() -> None:
    result = modify.convert(_resnet(), recipe="recipes/every_other.yaml")
    report = profile_model(result.model)
    paper = profile_model(modify.get_model("resnet50_mod"))
    assert report.params == paper.params == 18_105_949  # 18.11 M, Table 1
    assert report.macs == paper.macs  # the same architecture, counted the same way
    assert round(report.params / 1e6, 2) == 18.11
    assert abs(report.macs / 1e9 - 2.60) / 2.60 < 0.01
    assert [(c.name, c.k) for c in result.converted] == [
        ("layer1.1", 4),
        ("layer2.1", 8),
        ("layer2.3", 8),
        ("layer3.1", 16),
        ("layer3.3", 16),
        ("layer3.5", 16),
        ("layer4.1", 32),
    ]


def test_the_original_model_is_untouched_and_other_modules_bit_identical() -> None:
    model = _resnet("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = modify.convert(model, input_size=SIZE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not isinstance(m, MoDBlock) for m in model.modules())
    converted = {c.name for c in result.converted}
    after = result.model.state_dict()
    for key, value in before.items():
        block = ".".join(key.split(".")[:2])
        if block in converted:
            continue
        assert torch.equal(after[key], value), key
    assert type(result.model) is type(model)  # module-level blocks keep the model's class


@pytest.mark.parametrize(
    ("kwargs", "ks"),
    [
        ({"k": 2}, [2, 2, 2, 2]),
        ({"k": 0.25}, [16, 32, 64, 128]),
        ({"c": 32}, [2, 4, 8, 16]),
        ({}, [1, 2, 4, 8]),
        ({"recipe": {"version": 1, "defaults": {"k": 3}, "rules": [{"stage": [2, 3], "index": "odd"}]}}, [3, 3]),
    ],
)
def test_k_fraction_capacity_and_recipe(kwargs: dict, ks: list[int]) -> None:
    result = modify.convert(_resnet("resnet18"), input_size=SIZE, **kwargs)
    assert [c.k for c in result.converted] == ks
    assert [result.model.get_submodule(c.module).k for c in result.converted] == ks


def test_bad_arguments_are_named() -> None:
    model = _resnet("resnet18")
    with pytest.raises(ConversionError, match=r"block 'layer1.1' has 64 channels; k=64"):
        modify.convert(model, k=64, input_size=SIZE)
    with pytest.raises(ConversionError, match=r"k=0 is below 1"):
        modify.convert(model, k=0, input_size=SIZE)
    with pytest.raises(ConversionError, match="at most one of recipe, k or c"):
        modify.convert(model, k=2, c=64, input_size=SIZE)
    with pytest.raises(RecipeError, match=r"rules\[0\].*matches no block"):
        modify.convert(model, recipe={"version": 1, "rules": [{"name": "layer9.*"}]}, input_size=SIZE)


def test_no_blocks_is_a_clear_error() -> None:
    with pytest.raises(
        modify.NoBlocksError, match="No residual Conv-Block found in VGG.*looks for residual Conv-Blocks"
    ):
        modify.convert(torchvision.models.vgg11(weights=None), input_size=32)


def test_strict_makes_a_selected_skip_an_error() -> None:
    recipe = {"version": 1, "rules": [{"index": "all"}]}  # selects the projection blocks too
    result = modify.convert(_resnet("resnet18"), recipe=recipe, input_size=SIZE)
    assert {s.name for s in result.skipped if s.selected} == {"layer2.0", "layer3.0", "layer4.0"}
    with pytest.raises(ConversionError, match="strict=True and 3 selected block"):
        modify.convert(_resnet("resnet18"), recipe=recipe, input_size=SIZE, strict=True)


def test_float64_models_convert() -> None:
    model = _resnet("resnet18").double()
    out = modify.convert(model, input_size=SIZE).model.eval()(torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("init", ["scratch", "copy"])
def test_train_and_eval_modes_and_gradients(init: str) -> None:
    result = modify.convert(_resnet("resnet18", num_classes=10), input_size=SIZE, init=init)
    model = result.model.train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    out.square().mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    assert model.eval()(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 10)


def test_copy_init_takes_the_original_weights() -> None:
    model = _resnet("resnet18")
    result = modify.convert(model, k=32, input_size=SIZE, init="copy")
    branch = result.model.layer1[1].block.branch
    torch.testing.assert_close(branch.conv1.weight, model.layer1[1].conv1.weight[:32, :32])


class InlineNet(nn.Module):
    """Blocks written inline in forward: `+=`, torch.add and add_."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
            )
            for _ in range(4)
        )
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.convs[0](x)
        out += x
        x = torch.relu(out)
        x = torch.add(self.convs[1](x), x)
        y = self.convs[2](x)
        y.add_(x)
        x = y
        x = x + self.convs[3](x)
        return self.head(x.mean((2, 3)))


def test_inline_blocks_convert_in_the_graph() -> None:
    model = InlineNet().eval()
    x = torch.randn(2, 3, 16, 16)
    result = modify.convert(model, k=8, example_inputs=x)
    assert len(result.converted) == 2 and isinstance(result.model, torch.fx.GraphModule)
    assert all(":" in c.name or c.block_type == "inline" for c in result.converted)
    with torch.no_grad():
        assert result.model.eval()(x).shape == (2, 5)
    trace(result.model, x)
    identity = convert_identity(model, example_inputs=x).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(identity(x), model(x), atol=1e-5, rtol=1e-5)
