"""The command line through typer's CliRunner, as a user would call it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from modify.cli import app

runner = CliRunner()


def test_profile_prints_params_macs_and_blocks() -> None:
    result = runner.invoke(app, ["profile", "resnet18_mod", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    assert "5.46 M" in result.output  # the paper's ResNet18-MoD parameter count
    assert "MACs" in result.output and "layer4.1" in result.output and "MoDBlock" in result.output
    assert "8 / 512" in result.output  # k / C of the last MoD block


def test_profile_json_parses_and_compares() -> None:
    result = runner.invoke(app, ["profile", "resnet50_mod", "--compare", "resnet50", "--json", "--input-size", "224"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 18_105_949
    assert {"params", "macs", "blocks", "convention", "uncounted"} <= data.keys()
    names = [b["name"] for b in data["blocks"]]
    assert "layer3.5" in names and data["blocks"][names.index("layer3.5")]["k"] == 16
    assert data["compare"]["params"] == 25_557_032
    assert data["ratios"]["macs"] == pytest.approx(1.594, abs=0.01)  # the MAC ceiling of the speed-up


def test_unknown_model_is_one_line_with_close_matches() -> None:
    result = runner.invoke(app, ["profile", "resnet05"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Unknown model 'resnet05'" in lines[0] and "resnet50" in lines[0]
    assert "Traceback" not in result.output + result.stderr


def test_bench_reports_both_models(tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "resnet18_mod",
            "--vs",
            "resnet18",
            "--input-size",
            "32",
            "--case",
            "1x1",
            "--case",
            "2x0",
            "--rounds",
            "2",
            "--min-run-time",
            "0.05",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["batch_size"] for r in data["results"]] == [1, 2]
    assert data["results"][0]["threads"] == 1
    for r in data["results"]:
        assert r["model_ms"] > 0 and r["baseline_ms"] > 0
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["model_ms"])
        assert len(r["round_speedups"]) == 2


def test_bench_bad_case_is_one_line() -> None:
    result = runner.invoke(app, ["bench", "resnet18_mod", "--vs", "resnet18", "--case", "fast"])
    assert result.exit_code == 1
    assert "--case 'fast' is not BATCHxTHREADS" in result.stderr


def test_models_lists_the_paper_architectures() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("resnet75_mod", "mobilenet_v2_mod_l", "vgg16_bn_mod_cifar"):
        assert name in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from modify.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "modify", "--help"], capture_output=True, text=True, check=True)
    assert "profile" in out.stdout and "bench" in out.stdout


def test_convert_writes_a_checkpoint_that_profile_and_bench_read(tmp_path) -> None:
    out = tmp_path / "r18_mod.pt"
    result = runner.invoke(
        app, ["convert", "resnet18", "--recipe", "recipes/every_other.yaml", "--input-size", "64", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "layer4.1" in result.output and "4 of 8 residual blocks converted" in result.output
    assert "projection shortcut" in result.output  # skipped blocks say why
    assert out.is_file()
    profiled = runner.invoke(app, ["profile", str(out), "--input-size", "64", "--json"])
    assert profiled.exit_code == 0, profiled.output
    assert json.loads(profiled.stdout)["params"] == 5_463_902  # ResNet18-MoD, 5.46 M
    timed = runner.invoke(
        app,
        [
            "bench",
            str(out),
            "--vs",
            "resnet18",
            "--input-size",
            "32",
            "--case",
            "1x1",
            "--rounds",
            "1",
            "--min-run-time",
            "0.02",
            "--json",
        ],
    )
    assert timed.exit_code == 0, timed.output
    assert json.loads(timed.stdout)["results"][0]["speedup"] > 0


def test_convert_json_and_no_overwrite_without_force(tmp_path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["convert", "resnet18", "-k", "0.25", "--input-size", "64", "-o", str(out)])
    assert result.exit_code == 1 and "exists; pass --force" in result.stderr
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(
        app, ["convert", "resnet18", "-k", "0.25", "--input-size", "64", "-o", str(out), "--force", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["k"] for r in data["rows"] if r["k"]] == [16, 32, 64, 128]
    assert data["macs_after"] < data["macs_before"] and data["output"] == str(out)


def test_blocks_is_a_dry_run_with_reasons() -> None:
    result = runner.invoke(app, ["blocks", "resnet50", "--input-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == 16
    assert [r["name"] for r in rows if r["k"]] == [
        "layer1.1",
        "layer2.1",
        "layer2.3",
        "layer3.1",
        "layer3.3",
        "layer3.5",
        "layer4.1",
    ]
    assert rows[0]["reason"].startswith("projection shortcut")
    assert all(r["macs_after"] < r["macs_before"] for r in rows if r["k"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "resnet18", "-k", "64", "--input-size", "64"], "block 'layer1.1' has 64 channels; k=64"),
        (["convert", "resnet18", "--recipe", "nope.yaml"], "nope.yaml"),
        (["convert", "resnet18", "-k", "2", "-c", "64"], "at most one of --recipe, -k and -c"),
        (["convert", "vgg11", "--input-size", "32"], "No residual Conv-Block found in VGG"),
        (["convert", "resnet18", "--weights", "missing.pt"], "No weights file at 'missing.pt'"),
        (["profile", "missing_model.pt"], "No checkpoint file at 'missing_model.pt'"),
        (["convert", "torchvision.models:nothing_here"], "has no attribute 'nothing_here'"),
        (["convert", "resnet18", "--init", "bogus"], "--init 'bogus' is not one of scratch, copy, zero, importance"),
        (["convert", "os:system"], "'os:system' could not be called with no arguments"),
        (["convert", "os:path"], "'os:path' returned a module, not an nn.Module"),
        (["compare", "resnet18", "--data", "fashion-mnist", "--seeds", ""], "--seeds is empty"),
        (["routes", "resnet18", "--data", "/nonexistent"], "/nonexistent"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_convert_loads_weights_and_import_paths(tmp_path) -> None:
    import torch
    import torchvision

    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), weights)
    result = runner.invoke(
        app,
        [
            "convert",
            "torchvision.models:resnet18",
            "--num-classes",
            "7",
            "--weights",
            str(weights),
            "--input-size",
            "64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    wrong = runner.invoke(app, ["convert", "resnet18", "--weights", str(weights), "--input-size", "64"])
    assert wrong.exit_code == 1 and "does not fit ResNet" in wrong.stderr and "--num-classes" in wrong.stderr


def test_the_block_report_fits_80_columns_and_gives_each_long_reason_once() -> None:
    result = runner.invoke(app, ["convert", "resnet50", "--input-size", "64"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert result.output.count("keeps its full width") == 1  # below the table, once for the four blocks
    assert "layer1.0, layer2.0, layer3.0, layer4.0:" in result.output
    assert result.output.count("(Conv2d") == 1
    verbose = runner.invoke(app, ["blocks", "resnet50", "--input-size", "64", "--verbose"], env={"COLUMNS": "80"})
    assert verbose.exit_code == 0 and verbose.output.count("(Conv2d") == 4  # in the table instead, for each block
