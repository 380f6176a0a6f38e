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
        ["bench", "resnet18_mod", "--vs", "resnet18", "--input-size", "32", "--case", "1x1", "--case", "2x0",
         "--rounds", "2", "--min-run-time", "0.05", "--json"],
    )  # fmt: skip
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
