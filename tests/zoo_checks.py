"""The checks every zoo model goes through (torchvision's in test_zoo_convert.py, timm's in
test_timm_zoo.py), as timm checks its own zoo: the conversion with the default recipe converts
every block it selects, the output keeps its shape and is finite, the model re-traces,
the identity configuration reproduces the original to 1e-5, gradients reach every trainable
parameter, and the MACs drop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modify.conversion.pipeline import ConversionResult, convert, convert_identity
from modify.conversion.tracing import trace
from modify.layers import MoDBlock
from modify.measure.profiling import profile_model


def selected_skips(result: ConversionResult) -> list[tuple[str, str]]:
    """The blocks a recipe rule chose that could not be converted, with their reasons."""
    return [(s.name, s.reason) for s in result.skipped if s.selected]


def assert_identity(model: nn.Module, x: torch.Tensor) -> None:
    identity = convert_identity(model, example_inputs=x[:1])
    assert identity.converted and selected_skips(identity) == []  # every convertible block
    with torch.no_grad():
        torch.testing.assert_close(identity.model.eval()(x), model(x), atol=1e-5, rtol=1e-5)


def check_zoo_model(model: nn.Module, size: int) -> ConversionResult:
    """Every check above on ``model`` (eval mode, random weights) at ``size`` x ``size``."""
    x = torch.randn(2, 3, size, size)
    result = convert(model, example_inputs=x[:1])
    assert result.converted and selected_skips(result) == []
    converted = result.model.eval()
    assert sum(isinstance(m, MoDBlock) for m in converted.modules()) == len(result.converted)
    with torch.no_grad():
        expected, out = model(x), converted(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    trace(converted, x[:1])  # re-traces, MoD blocks as leaves

    assert_identity(model, x)

    converted.train()
    converted(x).square().mean().backward()
    missing = [n for n, p in converted.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in converted.parameters() if p.grad is not None)

    converted.eval()
    assert profile_model(converted, input_size=size).macs < profile_model(model, input_size=size).macs
    return result


def check_toy_model(model: nn.Module, size: int = 16, **kwargs: Any) -> ConversionResult:
    """The checks of a hand-written model (test_user_models.py, test_block_patterns.py): it converts
    with ``kwargs``, keeps its output shape, re-traces, the identity configuration reproduces it to
    1e-5, and gradients reach every trainable parameter. Returns the `ConversionResult`."""
    model.eval()
    x = torch.randn(2, 3, size, size)
    result = convert(model, example_inputs=x[:1], **kwargs)
    assert result.converted
    converted = result.model.eval()
    with torch.no_grad():
        expected, out = model(x), converted(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    trace(converted, x[:1], leaf_modules=kwargs.get("leaf_modules", ()))

    identity = convert_identity(model, example_inputs=x[:1], leaf_modules=kwargs.get("leaf_modules", ()))
    assert [s for s in identity.skipped if s.selected] == []
    with torch.no_grad():
        torch.testing.assert_close(identity.model.eval()(x), expected, atol=1e-5, rtol=1e-5)

    converted.train()
    converted(x).square().mean().backward()
    assert [n for n, p in converted.named_parameters() if p.requires_grad and p.grad is None] == []
    return result


def mod_block(result: ConversionResult, name: str) -> MoDBlock:
    """The MoD block that replaced the block ``name``."""
    block = next(b for b in result.converted if b.name == name)
    return result.model.get_submodule(block.module)
