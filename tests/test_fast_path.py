"""The MoD block's forward against the one it had before the fast path of issue 11, written here
from the paper's equations with the operators it ran: the same outputs, bit for bit, on converted
zoo models, in place and out of place, in channels_last, and gradients that still reach the
selector."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import modify
from modify.deploy.optimize import optimize_for_inference
from modify.layers import FusionSlot, MoDBlock, SelectionOrder

SIZE = 32


def previous_forward(self: MoDBlock, x: Tensor) -> Tensor:
    """The block before issue 11: pool, FC, ReLU, FC, sigmoid (Sec. 3.1), top-k, gather of the k
    planes, reduced block, times the scores, then Eq. (1)-(2), as separate operators."""
    sel, k = self.selector, self.k
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, C)
    s = torch.sigmoid(F.linear(torch.relu(F.linear(pooled, sel.fc1.weight)), sel.fc2.weight))  # (N, C)
    scores, indices = torch.topk(s, k, dim=1)  # (N, k)
    if sel.order is SelectionOrder.INDEX:
        indices, _ = torch.sort(indices, dim=1)
        scores = torch.gather(s, 1, indices)
    n, c, h, w = x.shape
    if x.is_contiguous():
        planes = (indices + torch.arange(0, n * c, c)[:, None]).flatten()  # (N * k,)
        picked = x.reshape(n * c, h, w).index_select(0, planes).view(n, k, h, w)
    else:
        picked = torch.gather(x, 1, indices[:, :, None, None].expand(-1, -1, h, w))
    y = self.block(picked)  # (N, k, H, W)
    if self.scale:
        y = y * scores[:, :, None, None]
    slot = self.fusion.slot
    if self.fusion.inplace and not torch.is_grad_enabled():
        if slot is FusionSlot.FIRST:
            x[:, :k] += y
        elif slot is FusionSlot.LAST:
            x[:, c - k :] += y
        else:
            x.scatter_add_(1, indices[:, :, None, None].expand(-1, -1, h, w), y)
        out = x
    elif slot is FusionSlot.FIRST:
        out = torch.cat([x[:, :k] + y, x[:, k:]], dim=1)
    elif slot is FusionSlot.LAST:
        out = torch.cat([x[:, : c - k], x[:, c - k :] + y], dim=1)
    else:
        out = x.scatter_add(1, indices[:, :, None, None].expand(-1, -1, h, w), y)
    return self.post(out)


@contextlib.contextmanager
def previous() -> Iterator[None]:
    current = MoDBlock.forward
    MoDBlock.forward = previous_forward
    try:
        yield
    finally:
        MoDBlock.forward = current


def _converted(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    converted = modify.convert(model, input_size=SIZE).model.eval()
    for m in converted.modules():  # non-trivial statistics, so every BatchNorm matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return converted


ZOO = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5", "convnext_tiny"]


@pytest.mark.parametrize("name", ZOO)
def test_outputs_are_bit_identical_to_the_previous_forward(name: str) -> None:
    model = _converted(name)
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    assert blocks
    x = torch.randn(2, 3, SIZE, SIZE)
    for inplace in (True, False):
        for b in blocks:
            b.fusion.inplace = inplace and b.fusion.inplace
        with torch.inference_mode():
            with previous():
                expected = model(x.clone())
            actual = model(x.clone())
        assert torch.equal(actual, expected), f"{name}, inplace={inplace}"


@pytest.mark.parametrize("slot", ["first", "last", "original"])
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize("form", ["whole", "branch"])
def test_every_option_matches_the_previous_forward(slot: str, order: str, form: str) -> None:
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 4) if form == "whole" else nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    post = nn.ReLU() if form == "branch" else None
    mod = MoDBlock(16, 4, block, form=form, post=post, fusion=slot, order=order, reduction=4).eval()
    x = torch.randn(3, 16, 5, 6)
    for inplace in (False, True):
        mod.fusion.inplace = inplace
        for layout in (torch.contiguous_format, torch.channels_last):
            with torch.inference_mode():
                with previous():
                    expected = mod(x.clone(memory_format=layout))
                actual = mod(x.clone(memory_format=layout))
            assert torch.equal(actual, expected), (inplace, layout)


def test_optimized_channels_last_model_matches_the_previous_forward() -> None:
    model = optimize_for_inference(_converted("resnet18"), channels_last=True)
    x = torch.randn(2, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with previous():
            expected = model(x.clone())
        actual = model(x.clone())
    assert torch.equal(actual, expected)


def test_gradients_still_reach_the_selector_and_match() -> None:
    model = _converted("resnet18")
    x = torch.randn(2, 3, SIZE, SIZE)
    grads = []
    for context in (previous, contextlib.nullcontext):
        model.zero_grad()
        with context():
            model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "selector" in n})
    assert grads[0] and all(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-6)
