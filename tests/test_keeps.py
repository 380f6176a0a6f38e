"""What a converted model must keep: the user's weights in the formats people have, timm models
by name, dense-task backbones and leaf classes through a checkpoint, and the model's modes.

Weights files are written here with torch.save / safetensors from models built with random
weights; nothing is downloaded.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import modify
from modify.cli import app
from modify.conversion.pipeline import convert
from modify.errors import CheckpointError, UnknownModelError
from modify.io.weights import load_state_dict_file
from test_user_models import Net

timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[dev]'")
runner = CliRunner()


def _r18(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return modify.get_model("resnet18", num_classes=num_classes).eval()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {}},
        lambda sd: {"model_state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "state_dict_ema": sd},  # timm's train.py
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    ],  # torch.compile
    ids=[
        "state_dict",
        "state_dict-key",
        "model-key",
        "model_state_dict-key",
        "ddp-prefix",
        "timm-checkpoint",
        "compile-prefix",
    ],
)
def test_weights_files_in_the_formats_people_have(tmp_path, wrap) -> None:
    trained = _r18()
    with torch.no_grad():
        trained.fc.bias.fill_(0.25)
    path = tmp_path / "w.pt"
    torch.save(wrap(trained.state_dict()), path)
    loaded = load_state_dict_file(_r18(), path)
    assert torch.equal(loaded.fc.bias, trained.fc.bias) and torch.equal(loaded.conv1.weight, trained.conv1.weight)


def test_safetensors_weights(tmp_path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    trained = _r18()
    path = tmp_path / "model.safetensors"
    safetensors.save_file(trained.state_dict(), str(path))
    assert torch.equal(load_state_dict_file(_r18(), path).fc.weight, trained.fc.weight)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda sd: {**sd, "fc.weight": torch.zeros(5, 512)},
            r"'fc.weight' has shape \(5, 512\) in the file and \(10, 512\) in the model",
        ),
        (lambda sd: {**sd, "head.weight": torch.zeros(1)}, r"'head.weight' is in the file but not in the model"),
        (lambda sd: {k: v for k, v in sd.items() if k != "fc.bias"}, r"'fc.bias' is in the model but not in the file"),
    ],
)
def test_a_mismatch_names_the_first_key(tmp_path, change, expected) -> None:
    path = tmp_path / "w.pt"
    torch.save(change(_r18().state_dict()), path)
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict_file(_r18(), path)


def test_timm_models_by_name_and_with_a_weights_file_from_the_cli(tmp_path) -> None:
    trained = timm.create_model("resnet18", pretrained=False, num_classes=10)
    weights = tmp_path / "timm_r18.pth"
    torch.save({"state_dict": trained.state_dict(), "arch": "resnet18"}, weights)  # timm's train.py layout
    out = tmp_path / "r18_mod.pt"
    result = runner.invoke(
        app,
        [
            "convert",
            "timm:resnet18",
            "--weights",
            str(weights),
            "--num-classes",
            "10",
            "--input-size",
            "64",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = modify.load(out)
    assert torch.equal(loaded.conv1.weight, trained.conv1.weight)  # the user's weights, outside the MoD blocks
    assert type(loaded.layer1[1]).__name__ == "MoDBlock"

    bare = runner.invoke(app, ["convert", "timm:convnext_atto", "--input-size", "64"])
    assert bare.exit_code == 0, bare.output
    assert "ConvNeXtBlock" in bare.output

    unknown = runner.invoke(app, ["convert", "timm:resnet18x"])
    assert unknown.exit_code == 1 and "timm:resnet18" in unknown.stderr and "Traceback" not in unknown.output
    with pytest.raises(UnknownModelError):
        modify.get_model("timm:not_a_model")


def test_a_wrong_weights_file_names_its_first_key_from_the_cli(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)  # 1000 classes
    result = runner.invoke(
        app, ["convert", "timm:resnet18", "--weights", str(weights), "--num-classes", "10", "--input-size", "64"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "'fc.weight' has shape (1000, 512) in the file and (10, 512) in the model" in result.stderr


class NoisyInTraining(nn.Module):
    """A block whose forward branches on self.training (noise injection in training)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if self.training:
            y = y + 0.1 * torch.randn_like(y)
        return x + self.conv2(F.relu(y))


@pytest.mark.parametrize("training", [False, True])
def test_a_frozen_self_training_branch_is_said(training: bool) -> None:
    model = Net(NoisyInTraining(16), NoisyInTraining(16)).train(training)
    with pytest.warns(
        UserWarning, match=r"blocks\.1: .*self\.training.*traced in " + ("train" if training else "eval")
    ):
        result = convert(model, k=4, input_size=16)
    assert len(result.notes) == 1 and "blocks.1" in result.notes[0]


def test_models_without_mode_branches_convert_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convert(_r18(), input_size=64).notes == ()


def test_timm_batchnorm_act_in_a_reduced_block_follows_the_mode() -> None:
    # timm's BatchNormAct2d is traced through: its F.batch_norm call had `training` frozen. In the
    # reduced block it is a BatchNorm2d again: running statistics update in training, and eval
    # uses them.
    torch.manual_seed(0)
    result = convert(timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval(), input_size=64)
    assert result.notes == ()
    block = result.model.get_submodule(result.converted[0].module).block
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    before = norms[0].running_mean.clone()
    result.model.train()(torch.randn(4, 3, 64, 64))
    assert not torch.equal(before, norms[0].running_mean)
