"""The baselines a conversion is judged against: deleting the blocks, and Torch-Pruning."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import modify
from modify.baselines import Shortcut, delete_blocks, prune_channels
from modify.errors import ConversionError, ModifyError


class InlineNet(nn.Module):
    """Two residual blocks written inline, the second after a conv without activation: deleting
    it must keep its ReLU (its input can be negative); the first reads a ReLU output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.a2(F.relu(self.a1(x))))
        x = self.mid(x)  # may be negative
        x = F.relu(x + self.b2(F.relu(self.b1(x))))
        return self.head(x.mean((2, 3)))


class ChainNet(nn.Module):
    """A block with no post-add op on a conv output (may be negative), then a ReLU block: deleting
    both must keep the second's ReLU, since the first passes a possibly negative input through."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.f, self.g = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.f(x)
        return F.relu(x + self.g(x))


def test_delete_keeps_a_relu_after_a_block_that_passes_negative_values() -> None:
    model = ChainNet().eval()
    result = delete_blocks(model, recipe={"version": 1, "rules": [{"index": "all"}]}, input_size=8)
    assert len(result.deleted) == 2
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(result.model(x), F.relu(model.stem(x)))


def _sites(model: nn.Module, size: int) -> list[str]:
    return [b.name for b in modify.convert(model, input_size=size).converted]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_delete_removes_exactly_the_blocks_convert_converts(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    state = copy.deepcopy(model.state_dict())
    result = delete_blocks(model, input_size=64)
    assert [b.name for b in result.deleted] == _sites(model, 64)
    reference = copy.deepcopy(model)  # independently: the same modules set to nn.Identity by hand
    for b in result.deleted:
        reference.set_submodule(b.name, nn.Identity())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(result.model.eval()(x), reference(x))
    assert all(type(result.model.get_submodule(b.name)) is nn.Identity for b in result.deleted)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert all(type(m) is not nn.Identity for m in model.modules())


def test_delete_by_name_and_the_macs_it_saves() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    result = delete_blocks(model, blocks=["layer4.1"], input_size=32)
    assert [b.name for b in result.deleted] == ["layer4.1"]
    before = modify.profile_model(model, input_size=32).macs
    after = modify.profile_model(result.model, input_size=32).macs
    # Hand count: at a 32x32 input layer4.1 runs on 1x1 maps: two 3x3 convs 512 -> 512, 9 * 512 * 512
    # MACs each (fvcore counts every tap); two affine BatchNorms over 512 x 1 x 1 elements, 2 MACs
    # per element (fvcore's eval-mode convention); the residual add, 512 (modify's handle).
    assert before - after == 2 * 9 * 512 * 512 + 2 * 2 * 512 + 512
    with pytest.raises(ConversionError, match="'layer9.9' is not a block that can be deleted"):
        delete_blocks(model, blocks=["layer9.9"], input_size=32)


def test_delete_inline_blocks_keeps_a_relu_that_is_not_the_identity() -> None:
    model = InlineNet().eval()
    result = delete_blocks(model, recipe={"version": 1, "rules": [{"index": "all"}]}, input_size=16)
    assert len(result.deleted) == 2
    shortcuts = [m for m in result.model.modules() if isinstance(m, Shortcut)]
    assert len(shortcuts) == 1  # the first became nn.Identity: relu(x) of a ReLU output is x
    x = torch.randn(3, 3, 16, 16)

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        x = F.relu(model.stem(x))
        x = F.relu(model.mid(x))
        return model.head(x.mean((2, 3)))

    assert torch.allclose(result.model(x), by_hand(x), atol=1e-6)


def test_deleted_and_pruned_models_save_and_load(tmp_path) -> None:
    model = modify.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    for i, built in enumerate(
        [
            delete_blocks(model, blocks=["layer2.1", "layer3.1"], input_size=32).model,
            prune_channels(model, macs_ratio=1.5, input_size=32).model,
        ]
    ):
        path = modify.save(built, tmp_path / f"m{i}.pt")
        loaded = modify.load(path)
        assert torch.equal(loaded(x), built.eval()(x))


def test_prune_reaches_the_mac_ratio_with_rounded_channels() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    result = prune_channels(model, macs_ratio=2.0, input_size=32)
    assert abs(result.macs_ratio - 2.0) < 0.1, result.macs_ratio
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert result.model.fc.out_features == 10  # the classifier keeps its classes
    assert model.layer1[0].conv1.out_channels == 64  # the caller's model is untouched
    out = result.model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in result.model.parameters())
    fv = modify.profile_model(result.model, input_size=32).macs
    assert fv < modify.profile_model(model, input_size=32).macs / 1.8  # fvcore agrees on the saving


def test_prune_errors_and_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ConversionError, match="exactly one of macs_ratio=, speedup= and ratio="):
        prune_channels(model, input_size=32)
    with pytest.raises(ConversionError, match="must be above 1"):
        prune_channels(model, macs_ratio=0.5, input_size=32)
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ModifyError, match=r"pip install 'modify\[baselines\]'"):
        prune_channels(model, macs_ratio=2.0, input_size=32)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_pruned_depthwise_and_se_models_save_and_load(name: str, tmp_path) -> None:
    model = modify.get_model(name, num_classes=10)
    model.train()
    result = prune_channels(model, macs_ratio=1.5, input_size=64)
    assert model.training  # the caller's mode is kept
    path = modify.save(result.model, tmp_path / "p.pt")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(modify.load(path)(x), result.model.eval()(x))


def test_prune_names_an_unknown_ignored_layer() -> None:
    with pytest.raises(ConversionError, match="ignored_layers names 'nope'"):
        prune_channels(
            torchvision.models.resnet18(num_classes=10), macs_ratio=2.0, input_size=32, ignored_layers=["nope"]
        )
