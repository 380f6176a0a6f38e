"""Surgery's rule tables: a layer type of the user's own converts once a rule for it is
registered (`register_shrinker` for modules, `register_functional_shrinker` for functions), and
a rule is not replaced by accident."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modify.conversion.pipeline import convert
from modify.conversion.surgery import (
    FUNCTIONAL_SHRINKERS,
    SHRINKERS,
    FunctionalCall,
    Init,
    LayerInput,
    Widths,
    register_functional_shrinker,
    register_shrinker,
)
from modify.conversion.surgery.rules import leading_slice
from modify.errors import ConversionError
from modify.layers import MoDBlock

C, K, SIZE = 16, 4, 8


class ChannelAffine(nn.Module):
    """A per-channel scale and shift: channel-sized parameters no built-in rule knows."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(channels))
        self.shift = nn.Parameter(0.1 * torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)  # (N, C, H, W)


def shrink_channel_affine(m: ChannelAffine, widths: Widths, init: Init, seen: LayerInput) -> ChannelAffine:
    new = ChannelAffine(seen.channels(m.scale.numel(), widths))
    if init is Init.COPY:
        with torch.no_grad():
            new.scale.copy_(leading_slice(m.scale, tuple(new.scale.shape)))
            new.shift.copy_(leading_slice(m.shift, tuple(new.shift.shape)))
    return new


class Block(nn.Module):
    def __init__(self, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(C, C, 3, padding=1, bias=False), norm(C)
        self.conv2, self.norm2 = nn.Conv2d(C, C, 3, padding=1, bias=False), norm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self, norm: type[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.blocks = nn.Sequential(Block(norm), Block(norm))
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))  # (N, 10)


@pytest.fixture
def registered_affine():
    register_shrinker(ChannelAffine, shrink_channel_affine)
    yield
    del SHRINKERS[ChannelAffine]


def test_a_custom_layer_is_skipped_with_the_way_to_register_a_rule() -> None:
    # A leaf, as a layer with its own kernel would be: surgery sees the module, not its forward.
    result = convert(Net(ChannelAffine).eval(), k=K, input_size=SIZE, leaf_modules=[ChannelAffine])
    assert result.converted == ()
    (skipped,) = [s for s in result.skipped if s.selected]
    assert skipped.name == "blocks.1"
    assert skipped.reason.startswith("no rule shrinks a ChannelAffine (norm1)")
    assert "register one with modify.conversion.surgery.register_shrinker" in skipped.reason


def test_a_custom_layer_converts_after_register_shrinker(registered_affine: None) -> None:
    model = Net(ChannelAffine).eval()
    result = convert(model, k=K, input_size=SIZE, leaf_modules=[ChannelAffine], init="copy")
    assert [b.name for b in result.converted] == ["blocks.1"]
    mod = result.model.get_submodule(result.converted[0].module)
    assert isinstance(mod, MoDBlock)
    affines = [m for m in mod.modules() if isinstance(m, ChannelAffine)]
    assert [tuple(m.scale.shape) for m in affines] == [(K,), (K,)]
    torch.testing.assert_close(affines[0].scale.data, model.blocks[1].norm1.scale.data[:K])
    x = torch.randn(2, 3, SIZE, SIZE)
    assert result.model.eval()(x).shape == (2, 10)


def test_a_rule_is_not_replaced_by_accident(registered_affine: None) -> None:
    register_shrinker(ChannelAffine, shrink_channel_affine)  # the same rule again: nothing changes
    with pytest.raises(
        ConversionError, match=r"ChannelAffine already has a rule \(shrink_channel_affine\); pass replace=True"
    ):
        register_shrinker(ChannelAffine, lambda m, w, i, s: m)
    register_shrinker(ChannelAffine, shrink_channel_affine, replace=True)
    assert SHRINKERS[ChannelAffine] is shrink_channel_affine


def channel_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """A functional layer: x scaled by sigmoid(gate) per channel."""
    return x * torch.sigmoid(gate).view(1, -1, 1, 1)


torch.fx.wrap("channel_gate")  # traced as one call_function node


class Gated(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_gate(x, self.gate)


def test_a_functional_layer_converts_by_its_registered_rule() -> None:
    seen: list[int] = []

    @register_functional_shrinker(channel_gate, ("x", "gate"))
    def gate_rule(call: FunctionalCall) -> None:
        seen.append(call.channels)
        call.cut("gate", (call.channels,))

    try:
        model = Net(Gated).eval()
        result = convert(model, k=K, input_size=SIZE, init="copy")
        assert [b.name for b in result.converted] == ["blocks.1"]
        assert seen == [K, K]
        mod = result.model.get_submodule(result.converted[0].module)
        gates = [p for n, p in mod.named_parameters() if n.endswith("gate")]
        assert [tuple(g.shape) for g in gates] == [(K,), (K,)]
        torch.testing.assert_close(gates[0].data, model.blocks[1].norm1.gate.data[:K])
    finally:
        del FUNCTIONAL_SHRINKERS[channel_gate]
