"""`modify compare`: the sweep, its report, and resuming after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import modify
from modify.study.candidates import Candidate, default_candidates
from modify.study.report import markdown_table, recommendation, summarize
from modify.study.store import RunRecord


def _record(method: str, label: str, seed: int, accuracy: float, speedup: float) -> RunRecord:
    return RunRecord(
        key=label,
        method=method,
        label=label,
        seed=seed,
        accuracy_before=0.5,
        accuracy=accuracy,
        macs=100,
        params=10,
        speedup=speedup,
        speedup_batch=None,
        latency_ms=1.0,
        teacher_latency_ms=speedup,
        finetune_seconds=1.0,
    )


def test_summary_averages_seeds_marks_frontiers_and_matches_speeds() -> None:
    records = [
        _record("mod", "m-fast", 0, 0.880, 1.80),
        _record("mod", "m-fast", 1, 0.884, 1.80),
        _record("mod", "m-slow", 0, 0.890, 1.40),
        _record("mod", "m-slow", 1, 0.890, 1.40),
        _record("mod", "m-bad", 0, 0.850, 1.35),
        _record("mod", "m-bad", 1, 0.850, 1.35),
        _record("delete", "d", 0, 0.870, 1.82),
        _record("delete", "d", 1, 0.874, 1.82),
        _record("prune", "p", 0, 0.895, 1.43),
        _record("prune", "p", 1, 0.891, 1.43),
    ]
    s = summarize(records, teacher_accuracy=0.9)
    rows = {r.label: r for r in s.rows}
    assert rows["m-fast"].accuracy == pytest.approx(0.882) and rows["m-fast"].spread == pytest.approx(0.002)
    assert rows["m-bad"].frontier is False  # m-slow is faster and more accurate
    assert rows["m-fast"].frontier and rows["m-slow"].frontier and rows["d"].frontier
    matches = {m.mod: m for m in s.matches}
    assert matches["m-fast"].baseline == "d" and matches["m-fast"].margin == pytest.approx(0.01)
    assert matches["m-slow"].baseline == "p" and matches["m-slow"].margin == pytest.approx(-0.003)
    text = recommendation(s)
    assert text[0].startswith("MoD wins: m-fast at 1.80x is 1.00 points above d")
    assert "| mod | m-fast | 88.20 ± 0.20 | -1.80 |" in markdown_table(s)


def test_candidate_keys_ignore_labels_and_the_default_sweep_spans_the_methods() -> None:
    a = Candidate("mod", "x", recipe={"version": 1, "rules": [{"index": "odd"}]}, init="importance")
    b = Candidate("mod", "y", recipe={"version": 1, "rules": [{"index": "odd"}]}, init="importance")
    assert a.key == b.key and a.key != Candidate("mod", "x", init="zero").key
    distilled = Candidate(
        "mod", "x", recipe={"version": 1, "rules": [{"index": "odd"}]}, init="zero", block_distill_steps=300
    )
    assert distilled.arch_key == a.arch_key and distilled.key != a.key  # weights differ, the speed does not
    # A plan that only deletes blocks is their deletion: one speed record, however it was written
    deleting = {"version": 2, "rules": [{"name": "l2", "action": "delete"}, {"name": "l3", "action": "delete"}]}
    deletion = Candidate("delete", "d", blocks=("l2", "l3"))
    assert Candidate("plan", "p", recipe=deleting, block_distill_steps=300).arch_key == deletion.arch_key
    narrowing = {"version": 2, "rules": [*deleting["rules"], {"name": "l4", "action": "narrow", "fraction": 0.5}]}
    assert Candidate("plan", "p", recipe=narrowing).arch_key != deletion.arch_key
    assert Candidate("plan", "p", recipe=deleting).key != deletion.key  # its own records (built another way)
    cands = default_candidates(blocks=["l1", "l2", "l3", "l4"])
    assert {c.method for c in cands} == {"mod", "delete", "prune"}
    assert [c.blocks for c in cands if c.method == "delete"][0] == ("l1", "l2", "l3", "l4")
    with pytest.raises(modify.ModifyError, match="not one of"):
        Candidate("magic", "z")


def _runs(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*.json")) if (out / "runs").is_dir() else []


def test_cli_compare_runs_end_to_end_and_resumes_after_a_kill(tmp_path: Path) -> None:
    from test_data import write_fashion_mnist

    write_fashion_mnist(tmp_path / "idx", n_train=64, n_test=32)
    modify.save(modify.get_model("resnet18", num_classes=10), tmp_path / "r18.pt")
    out = tmp_path / "cmp"
    args = [
        sys.executable,
        "-m",
        "modify",
        "compare",
        str(tmp_path / "r18.pt"),
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path / "idx"),
        "-o",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--seeds",
        "0",
        "--max-configs",
        "3",
        "--methods",
        "mod,delete",
        "--bench-rounds",
        "1",
        "--bench-time",
        "0.01",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while len(_runs(out)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _runs(out)
    assert len(first) >= 1, proc.stderr.read().decode()[-2000:]
    kept = {p.name: p.read_text() for p in first}
    assert len(first) < 6, "the sweep finished before it was killed; nothing was resumed"

    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = _runs(out)
    assert len(runs) == 6
    assert all(p.read_text() == kept[p.name] for p in runs if p.name in kept)  # finished runs were not redone
    report = json.loads((out / "compare.json").read_text())
    assert {r["method"] for r in report["rows"]} == {"mod", "delete"} and report["recommendation"]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG" and "| method |" in (out / "compare.md").read_text()
    again = subprocess.run(args[:-6] + ["--report-only"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "wrote" in again.stdout
    speeds = {p.name: json.loads(p.read_text()) for p in (out / "speed").glob("*.json")}
    # Six candidates, six architectures (the first three MoD candidates differ in k or form; the
    # candidates that differ only in weights share one, see the test above), all timed in the same rounds.
    assert len(speeds) == 6 and all(s["timed_with"] == 6 for s in speeds.values())
    retimed = subprocess.run(args + ["--retime"], capture_output=True, text=True, env=env, timeout=600)
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    assert all(p.read_text() == kept[p.name] for p in _runs(out) if p.name in kept)  # retiming trains nothing
    assert {p.name for p in (out / "speed").glob("*.json")} == set(speeds)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "a,b"], "--seeds 'a,b' is not a comma-separated list"),
        (["--methods", "mod,magic"], "--methods 'mod,magic': choose from"),
    ],
)
def test_cli_compare_bad_options_are_one_line(extra: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from modify.cli import app

    done = CliRunner().invoke(app, ["compare", "resnet18", "--data", "fashion-mnist", *extra])
    assert done.exit_code == 1 and message in done.stderr and "Traceback" not in done.output


def test_cli_report_only_needs_a_sweep(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modify.cli import app

    done = CliRunner().invoke(
        app, ["compare", "resnet18", "--data", "fashion-mnist", "-o", str(tmp_path), "--report-only"]
    )
    assert done.exit_code == 1 and "holds no sweep" in done.stderr


def _tiny_sets():
    import torch

    from modify.train.data import ImageTensorDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (48,), generator=g)
    make = lambda sl: ImageTensorDataset(images[sl], labels[sl], classes=[str(i) for i in range(10)], mean=0.3, std=0.3)  # noqa: E731
    return make(slice(0, 32)), make(slice(32, 48))


def test_a_candidate_that_cannot_be_built_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    from modify.study.store import load_failures
    from modify.study.sweep import CompareConfig, run_sweep

    train, test = _tiny_sets()
    original = modify.get_model("resnet18", num_classes=10)
    too_wide = Candidate("mod", "k=1000", recipe={"version": 1, "defaults": {"k": 1000}, "rules": [{"index": "odd"}]})
    delete = Candidate("delete", "delete layer4.1", blocks=("layer4.1",))
    config = CompareConfig(epochs=1, seeds=(0,), batch_size=16, bench_rounds=1, bench_seconds=0.01, throughput_batch=0)
    events: list[tuple[str, Any]] = []
    records = run_sweep(
        original,
        train,
        test,
        candidates=[too_wide, delete],
        config=config,
        out_dir=tmp_path,
        on_event=lambda kind, info: events.append((kind, info.get("model"))),
    )
    assert [r.label for r in records] == ["delete layer4.1"] and records[0].speedup is not None
    # The model is handed over as built and after its fine-tune (the same module, trained in place).
    (_, built), (_, trained) = [e for e in events if e[0] in ("built", "trained")]
    assert built is trained
    assert [k for k, _ in events if k != "step"] == ["start", "failed", "start", "built", "trained", "done", "speed"]
    failures = load_failures(tmp_path)
    assert [f["label"] for f in failures] == ["k=1000"] and "k" in failures[0]["error"]
    other = modify.get_model("resnet18", num_classes=10)  # other random weights
    with pytest.raises(modify.ModifyError, match="holds a sweep of another model"):
        run_sweep(other, train, test, candidates=[delete], config=config, out_dir=tmp_path)
    with pytest.raises(modify.ModifyError, match=r"other settings \(config.json: epochs 1 there, 2 now\)"):
        run_sweep(
            original, train, test, candidates=[delete], config=dataclasses.replace(config, epochs=2), out_dir=tmp_path
        )
    lr = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, lr=0.5))
    with pytest.raises(modify.ModifyError, match=r"finetune.lr 0.02 there, 0.5 now"):
        run_sweep(original, train, test, candidates=[delete], config=lr, out_dir=tmp_path)
    # A resume may add a seed: the seed-0 run is kept (its file untouched), seed 1 is run beside it.
    first = (tmp_path / "runs").glob("*-s0.json").__next__()
    written = first.stat().st_mtime_ns
    both = run_sweep(
        original, train, test, candidates=[delete], config=dataclasses.replace(config, seeds=(0, 1)), out_dir=tmp_path
    )
    assert sorted(r.seed for r in both) == [0, 1] and first.stat().st_mtime_ns == written
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    run_sweep(original, train, test, candidates=[delete], config=config, out_dir=tmp_path)  # seed 0 alone: no change
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(modify.ModifyError, match="epochs=0 must be positive"):
        CompareConfig(epochs=0)


def test_the_comparison_and_plan_tables_read_whole_at_80_columns() -> None:
    from rich.console import Console

    from modify.cli.render import sweep_table
    from modify.study.store import RunRecord

    def record(method: str, label: str, accuracy: float, speedup: float) -> RunRecord:  # one seed
        return RunRecord(
            key=label,
            method=method,
            label=label,
            seed=0,
            accuracy_before=accuracy,
            accuracy=accuracy,
            macs=1,
            params=1,
            speedup=speedup,
            speedup_batch=None,
            latency_ms=1.0,
            teacher_latency_ms=speedup,
            finetune_seconds=0.0,
        )

    rows = [
        record("mod", "MoD-OP k=0.25 importance + routed block KD", 0.889, 1.33),
        record("delete", "delete layer1.1+layer2.1+layer3.1+layer4.1", 0.8886, 2.07),
        record("plan", "plan 1.5x", 0.91, 1.52),
    ]
    console = Console(width=80, record=True)
    console.print(sweep_table(summarize(rows)))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "routed block KD" in text and "+layer4.1" in text
