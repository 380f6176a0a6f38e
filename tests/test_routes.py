"""`modify routes`: selection statistics checked against a hand-counted toy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import modify
from modify.errors import ModifyError
from modify.layers import MoDBlock
from modify.measure.routes import routes, write_routes


def _toy() -> nn.Module:
    """C = 4, k = 2, a reduced block that does nothing, and a selector whose scores are
    sigmoid(channel mean): fc1 = fc2 = identity (reduction 1), so the top-2 are the two
    channels with the largest means."""
    mod = MoDBlock(4, 2, nn.Identity(), reduction=1)
    with torch.no_grad():
        mod.selector.fc1.weight.copy_(torch.eye(4))
        mod.selector.fc2.weight.copy_(torch.eye(4))
    return nn.Sequential(mod).eval()


# Channel means per image, its class, and (by hand) the two channels it selects.
MEANS = [([4, 3, 0, 0], 0), ([4, 0, 3, 0], 0), ([0, 3, 4, 0], 1), ([4, 0, 3, 0], 1)]  # {0,1} {0,2} {1,2} {0,2}


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.tensor([m for m, _ in MEANS], dtype=torch.float32)[:, :, None, None].expand(-1, -1, 3, 3)
    labels = torch.tensor([y for _, y in MEANS])
    return [(images[:2].clone(), labels[:2]), (images[2:].clone(), labels[2:])]  # two batches


def test_frequencies_entropy_and_classes_match_the_hand_count() -> None:
    b = routes(_toy(), _data()).blocks[0]
    assert b.frequency == pytest.approx((3 / 4, 2 / 4, 3 / 4, 0.0))
    assert b.class_frequency[0] == pytest.approx((1.0, 0.5, 0.5, 0.0))
    assert b.class_frequency[1] == pytest.approx((0.5, 0.5, 1.0, 0.0))
    assert b.never == (3,) and b.always == () and b.distinct_sets == 3
    # Each class is 0.25 + 0.25 away from the overall frequency: TV = 0.5 * 0.5 / k = 0.125.
    assert b.class_divergence == pytest.approx(0.125)
    q = [0.375, 0.25, 0.375]  # frequency / k
    h = -sum(p * math.log2(p) for p in q)
    assert b.entropy == pytest.approx((h - math.log2(2)) / (math.log2(4) - math.log2(2)))
    # The selected scores are sigmoid(4) and sigmoid(3) (0.982, 0.953): all 8 in the last bin.
    assert sum(b.score_counts) == 8 and b.score_counts[-1] == 8


def test_a_static_selection_has_zero_entropy() -> None:
    data = [(torch.tensor([[4.0, 3, 0, 0]] * 5)[:, :, None, None], torch.zeros(5, dtype=torch.long))]
    b = routes(_toy(), data).blocks[0]
    assert b.entropy == 0.0 and b.always == (0, 1) and b.distinct_sets == 1 and b.class_divergence == 0.0


def test_writes_png_and_json(tmp_path) -> None:
    report = routes(_toy(), _data())
    paths = write_routes(report, tmp_path)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["images"] == 4 and data["blocks"][0]["never"] == [3]


def test_a_model_without_mod_blocks_is_refused() -> None:
    with pytest.raises(ModifyError, match="no MoD block"):
        routes(nn.Sequential(nn.Conv2d(3, 3, 1)), _data())


def test_cli_routes_on_a_converted_checkpoint(tmp_path) -> None:
    from typer.testing import CliRunner

    from modify.cli import app
    from test_data import write_fashion_mnist

    write_fashion_mnist(tmp_path / "idx", n_train=8, n_test=12)
    modify.save(
        modify.convert(modify.get_model("resnet18", num_classes=10), k=0.25, input_size=32), tmp_path / "mod.pt"
    )
    done = CliRunner().invoke(
        app,
        [
            "routes",
            str(tmp_path / "mod.pt"),
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "idx"),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert done.exit_code == 0, done.output
    data = json.loads((tmp_path / "out" / "routes.json").read_text())
    assert data["images"] == 12 and [b["module"] for b in data["blocks"]] == [
        "layer1.1",
        "layer2.1",
        "layer3.1",
        "layer4.1",
    ]
    assert all(abs(sum(b["frequency"]) - b["k"]) < 1e-4 for b in data["blocks"])
    assert (tmp_path / "out" / "routes.png").is_file()
