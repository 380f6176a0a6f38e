"""Profiling: MACs counted as the paper counts them, the MoD operators included (a toy block by
hand), what no handle counts listed rather than dropped, per-block rows, and latency beside MACs."""

from __future__ import annotations

import json

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from typer.testing import CliRunner

from modify.cli import app
from modify.layers import MoDBlock
from modify.measure.profiling import profile_model


def test_a_conv_and_a_linear_counted_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    report = profile_model(model, input_size=4)
    assert report.macs == (8 * 4 * 4) * (3 * 3 * 3) + 8 * 4 * 4 * 10  # output elements x MACs each
    assert report.params == 8 * 3 * 3 * 3 + 8 * 4 * 4 * 10 + 10
    assert report.uncounted == {}


class _CumSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)  # an operator neither fvcore nor modify counts


def test_an_operator_no_handle_counts_is_listed_not_dropped() -> None:
    report = profile_model(nn.Sequential(nn.Conv2d(3, 4, 1), _CumSum()), input_size=4)
    assert report.macs == (4 * 4 * 4) * 3  # the 1x1 conv (its bias, as in fvcore, is no MAC)
    assert report.uncounted == {"aten::cumsum": 1}


def test_every_mod_block_gets_a_row_with_its_k() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(MoDBlock(8, 2, BasicBlock(2, 2), reduction=4)))
    report = profile_model(model, input_size=8, depth=1)
    (row,) = [b for b in report.blocks if b.type == "MoDBlock"]
    assert row.name == "1.0" and (row.k, row.channels) == (2, 8) and row.macs > 0


def test_toy_mod_block_macs_by_hand() -> None:
    # C = 8, k = 2, 4x4 input, reduction 4 (hidden 2), the reduced block a BasicBlock(2, 2).
    mod = MoDBlock(8, 2, BasicBlock(2, 2), reduction=4)
    hw = 4 * 4
    selector = 8 * hw + 8 * 2 + 2 * 8 + 8 + 8  # avg-pool reads C*H*W; fc1; fc2; sigmoid; top-k
    conv = (2 * hw) * (2 * 3 * 3)  # k output maps x (k * 3 * 3) MACs per output element
    bn = 2 * (2 * hw)  # eval BatchNorm with affine: scale and shift per element
    block = conv + bn + conv + bn + 2 * hw  # ... and the block's own skip-add
    scale_and_fuse = 2 * hw + 2 * hw  # score multiplication, then the add into the first k
    report = profile_model(mod, input_size=4, in_channels=8)
    assert report.macs == selector + block + scale_and_fuse == 1552
    assert report.uncounted == {}


def test_profile_latency_sets_time_beside_macs() -> None:
    result = CliRunner().invoke(app, ["profile", "resnet18_mod", "--input-size", "32", "--latency", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["latency_ms"] > 0
    assert set(data["block_ms"]) == {b["name"] for b in data["blocks"]}
    assert all(v >= 0 for v in data["block_ms"].values())
