"""Block-local distillation: each MoD block fits its original block on recorded activations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision

import modify
from modify.train.distill import distill_blocks

OP = {
    "version": 1,
    "defaults": {"fraction": 0.25},
    "rules": [{"index": "odd"}],
    "mod": {"form": "branch", "fusion": "original", "order": "index"},
}


def test_block_errors_drop_and_only_mod_blocks_change() -> None:
    net = torchvision.models.resnet18(num_classes=10).eval()
    state = copy.deepcopy(net.state_dict())
    result = modify.convert(net, recipe=OP, input_size=32, init="copy")
    before = copy.deepcopy(result.model.state_dict())
    data = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    report = distill_blocks(result, net, data, steps=40, lr=3e-3)
    assert [b.name for b in report.blocks] == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"] and report.images == 32
    for b in report.blocks:
        assert b.loss_after < b.loss_before if b.kept else b.loss_after == b.loss_before, b
    assert report.blocks[0].kept and report.blocks[0].loss_after < 0.95 * report.blocks[0].loss_before
    # The error of deleting layer1.1, computed independently: its output against its input.
    seen = {}
    net.layer1[1].register_forward_hook(lambda m, a, out: seen.update(x=a[0], y=out))
    with torch.no_grad():
        net(torch.cat(data))
    assert abs(report.blocks[0].loss_deleted - F.mse_loss(seen["x"], seen["y"]).item()) < 1e-6
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # the original is read only
    after = result.model.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in after if not torch.equal(after[k], before[k])}
    assert changed <= {"layer1.1", "layer2.1", "layer3.1", "layer4.1"} and changed


def test_a_block_that_fits_worse_is_put_back() -> None:
    # The whole form: no zero update makes a block its deletion, so a worse fit is only undone.
    net = torchvision.models.resnet18(num_classes=10).eval()
    result = modify.convert(net, recipe={**OP, "mod": {"form": "whole", "fusion": "first"}}, input_size=32, init="copy")
    before = copy.deepcopy(result.model.state_dict())
    report = distill_blocks(
        result, net, [torch.randn(8, 3, 32, 32)], steps=5, lr=1e3
    )  # a step size that wrecks any fit
    restored = [b for b in report.blocks if not b.kept]
    assert restored and all(b.loss_after == b.loss_before and not b.at_deletion for b in restored)
    state = result.model.state_dict()
    for b in restored:
        assert all(torch.equal(state[k], before[k]) for k in state if k.startswith(b.module + "."))


def test_a_block_that_fits_worse_than_its_deletion_is_set_to_exactly_its_deletion() -> None:
    """Fresh weights in the branch form fit the original block worse than its shortcut does; with
    no steps to learn, distillation leaves each block at exactly its deletion."""
    from modify.baselines import delete_blocks

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    recipe = {
        "version": 1,
        "defaults": {"fraction": 0.25},
        "mod": {"form": "branch", "fusion": "original"},
        "rules": [{"index": "odd"}],
    }
    result = modify.convert(net, recipe=recipe, input_size=32, init="scratch")
    report = distill_blocks(result, net, [torch.randn(16, 3, 32, 32)], steps=0)
    assert all(b.at_deletion and b.loss_after == pytest.approx(b.loss_deleted, rel=1e-5) for b in report.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            result.model.eval()(x), delete_blocks(net, recipe="every_other", input_size=32).model.eval()(x)
        )


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0])
def test_the_selector_learning_rate_applies_to_the_selector_only(scale: float, monkeypatch) -> None:
    """The groups AdamW is given per block: every trainable parameter once, the selector's at
    lr * scale (absent when 0), the rest at lr; at 1 a single group, as before the option."""
    given: list[list[dict]] = []
    adamw = torch.optim.AdamW

    def recording(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        given.append([{**g, "params": list(g["params"])} for g in groups])
        return adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    net = torchvision.models.resnet18(num_classes=10).eval()
    result = modify.convert(net, recipe=OP, input_size=32, init="copy")
    distill_blocks(result, net, [torch.randn(4, 3, 32, 32)], steps=1, lr=1e-3, selector_lr_scale=scale)
    blocks = [result.model.get_submodule(n) for n in ("layer1.1", "layer2.1", "layer3.1", "layer4.1")]
    assert len(given) == len(blocks)
    for groups, block in zip(given, blocks, strict=True):
        selector = {id(p) for p in block.selector.parameters()}
        everything = [id(p) for p in block.parameters()]
        if scale == 1.0:
            assert len(groups) == 1 and [id(p) for p in groups[0]["params"]] == everything
            continue
        assert [id(p) for p in groups[0]["params"]] == [i for i in everything if i not in selector]
        assert "lr" not in groups[0]  # the optimiser's lr
        if scale > 0:
            assert {id(p) for p in groups[1]["params"]} == selector and groups[1]["lr"] == pytest.approx(1e-3 * scale)
        else:
            assert len(groups) == 1
