"""Timing that knows when it cannot be trusted: the spread of the per-round speed-ups, and the
busy-machine warning, worked out on synthetic round times and a faked load average."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from modify.cli import app
from modify.measure.benchmark import (
    MAX_NOISE,
    BenchCase,
    BenchReport,
    BenchResult,
    bench,
    bench_many,
    busy_warning,
    noise,
    spread,
)

QUIET = [[1.00, 1.01, 0.99, 1.00, 1.00], [2.00, 2.02, 1.99, 2.00, 2.01]]  # within a percent


def test_spread_is_half_the_interquartile_range_and_noise_is_relative() -> None:
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == 1.0  # q1 = 2, q3 = 4
    assert spread([7.0]) == 0.0 and noise([7.0]) == 0.0
    assert noise([2.0, 2.0, 2.2, 2.4, 2.0]) == pytest.approx(0.05)  # spread 0.1 over median 2.0
    from modify.study.latency import spread as moved

    assert moved is spread  # the planner's old import keeps working


def test_quiet_rounds_on_a_free_machine_give_no_warning() -> None:
    assert busy_warning(QUIET, threads=1, load=0.9, cores=2) is None  # 0.9 - 1 thread: nobody else
    assert busy_warning(QUIET, threads=2, load=2.0, cores=2) is None  # the timing's own 2 threads
    assert busy_warning([[1.0], [1.0]], threads=1, load=0.0, cores=1) is None  # one round: nothing to judge


def test_rounds_that_move_more_than_five_percent_are_a_busy_machine() -> None:
    # The baseline's rounds: median 1.0, quartiles 0.95 and 1.15: half the range 0.1 = 10%.
    noisy = [[1.0, 0.95, 1.3, 1.15, 0.9], QUIET[1]]
    line = busy_warning(noisy, threads=1, load=0.0, cores=8)
    assert line is not None and "\n" not in line
    assert line.startswith("busy machine: the times vary by ±10.0% from round to round (over 5%)")
    assert "load" not in line
    assert noise([1.0, 1.0, 1.08, 1.16, 1.0]) == pytest.approx(0.04) and 0.04 < MAX_NOISE
    assert busy_warning([[1.0, 1.0, 1.08, 1.16, 1.0]], threads=1, load=0.0, cores=8) is None
    assert busy_warning(noisy, threads=1, load=0.0, cores=8, max_noise=0.2) is None


def test_a_load_that_leaves_fewer_free_cores_than_timing_threads_is_a_busy_machine(monkeypatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 3.0, 3.0))  # two training jobs, plus the timing's thread
    line = busy_warning(QUIET, threads=1, cores=2)
    assert line is not None and "\n" not in line
    assert (
        "other processes keep 2.5 cores busy (load average 3.5 less "
        "the timing's own 1), leaving 0.0 of 2 for 1 timing thread" in line
    )
    # 4 cores: 2.5 busy, 1.5 free, enough for one thread but not for two
    assert busy_warning(QUIET, threads=1, cores=4) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (4.5, 3.0, 3.0))
    assert "leaving 1.5 of 4 for 2 timing threads" in busy_warning(QUIET, threads=2, cores=4)
    both = busy_warning([[1.0, 1.5, 1.0, 1.5]], threads=1, cores=2)
    assert "round to round" in both and "load average 4.5" in both and both.count("busy machine") == 1


def test_results_and_reports_carry_the_spread_and_the_warning_keeping_the_old_keys() -> None:
    case = BenchCase(1, 1)
    result = BenchResult(case, 0.5, 1.0, (0.5, 0.5, 0.5), (1.0, 1.2, 0.9), warning="busy machine: x.")
    assert result.round_speedups == pytest.approx((2.0, 2.4, 1.8))
    assert result.spread == pytest.approx(spread([2.0, 2.4, 1.8]))
    assert BenchResult(case, 0.5, 1.0, (0.5,), (1.0,)).warning is None  # positional construction as before
    report = BenchReport("m", "b", (8, 8), (result,))
    data = report.as_dict()
    row = data["results"][0]
    assert {"batch_size", "threads", "model_ms", "baseline_ms", "speedup", "round_speedups"} <= row.keys()
    assert row["spread"] == pytest.approx(result.spread) and row["warning"] == "busy machine: x."
    assert row["noise"] == pytest.approx(noise([1.0, 1.2, 0.9]))
    assert data["engine"] == "eager" and row["model_prepare_s"] == 0.0
    assert report.warnings == ("batch 1, 1 thread: busy machine: x.",)
    json.dumps(data)


def _tiny() -> tuple[torch.nn.Module, torch.nn.Module]:
    return torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 8, 1)


def test_bench_and_bench_many_warn_when_the_load_says_so(monkeypatch) -> None:
    model, baseline = _tiny()
    monkeypatch.setattr(os, "getloadavg", lambda: (1e4, 1e4, 1e4))
    report = bench(model, baseline, cases=[BenchCase(1, 1)], input_size=8, rounds=2, min_run_time=0.01)
    assert "load average 10000.0" in report.results[0].warning
    many = bench_many(
        {"a": model, "b": model}, baseline, cases=[BenchCase(1, 1)], input_size=8, rounds=2, min_run_time=0.01
    )
    assert many["a"][0].warning == many["b"][0].warning and "load average 10000.0" in many["a"][0].warning


def test_modify_bench_prints_the_spread_and_the_busy_line(monkeypatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (1e4, 1e4, 1e4))
    args = [
        "bench",
        "resnet18_mod",
        "--vs",
        "resnet18",
        "--input-size",
        "32",
        "--case",
        "1x1",
        "--rounds",
        "2",
        "--min-run-time",
        "0.02",
    ]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "±" in shown.stdout
    warning = [line for line in shown.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "busy machine" in warning[0] and "load average 10000.0" in warning[0]  # one line
    data = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert data["engine"] == "eager" and "load average 10000.0" in data["results"][0]["warning"]
    assert data["results"][0]["spread"] >= 0


def test_the_sweep_stores_the_spread_and_the_warning(monkeypatch, tmp_path) -> None:
    from modify.study.store import SweepStore
    from modify.study.sweep import CompareConfig, time_candidates

    monkeypatch.setattr(os, "getloadavg", lambda: (1e4, 1e4, 1e4))
    model, baseline = _tiny()
    store = SweepStore(tmp_path)
    store.create()
    config = CompareConfig(input_size=8, bench_rounds=2, bench_seconds=0.01, throughput_batch=2)
    (record,) = time_candidates({"arch": model}, baseline, config, store)
    stored = json.loads((tmp_path / "speed" / "arch.json").read_text())
    assert stored["spread"] == pytest.approx(spread(stored["round_speedups"]))
    assert stored["spread_batch"] is not None
    assert "batch 1, 1 thread: busy machine" in stored["warning"] and "load average 10000.0" in stored["warning"]
    assert record["warning"] == stored["warning"]


def test_bench_names_its_engine_and_rejects_a_wrong_one() -> None:
    from modify.errors import ChoiceError

    model, baseline = _tiny()
    with pytest.raises(ChoiceError, match="expected one of 'eager', 'compile', 'onnxruntime', 'aoti'"):
        bench(model, baseline, cases=[BenchCase(1, 1)], input_size=8, rounds=1, min_run_time=0.01, engine="tensorrt")


def test_onnxruntime_engine_times_both_exports_and_says_how_long_preparing_took(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from modify.layers import MoDBlock

    # reduction=1: a selector of 16 hidden units (one, at the default 16, is often all zero after its
    # ReLU: every score 0.5, and ONNX Runtime's TopK breaks such ties unlike torch.topk)
    block = MoDBlock(16, 4, torch.nn.Conv2d(4, 4, 3, padding=1), reduction=1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), block)
    baseline = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1))
    report = bench(
        model, baseline, cases=[BenchCase(2, 1)], input_size=8, rounds=2, min_run_time=0.01, engine="onnxruntime"
    )
    (result,) = report.results
    assert report.engine == "onnxruntime" and all(s > 0 for s in result.prepare_seconds)
    assert report.as_dict()["results"][0]["model_prepare_s"] == result.prepare_seconds[0]
    from modify.cli.render import bench_lines

    assert any("prepared model in" in line and "(not timed)" in line for line in bench_lines(report))
