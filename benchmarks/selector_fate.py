"""What happens to the selector of each MoD arm of a block table before its fine-tune: how many of its
hidden units fire on no image (`modify.conversion.selector_units`; all of them dead is a selector
that scores every channel 0.5, so top-k picks one fixed set for every image, by how the backend
breaks ties), as drawn, revived, and after the arm's 300 steps of block-local distillation with the
selector trained at a share of the learning rate (1: what the table's arms got; 0: frozen); and how
well the block then fits the original block (`modify.train.distill.BlockFit`: mean squared error on
the recorded activations; the block deleted and the table's static MoD arm, distilled alike, beside it).

    python benchmarks/selector_fate.py resnet18_fmnist32.pt --table benchmarks/results/block_table_r18 -o DIR
    python benchmarks/selector_fate.py mobilenet_v2_fmnist64.pt --input-size 64 \\
        --table benchmarks/results/block_table_mbv2 -o DIR --arms "features.3 "

``--report-only -o DIR`` rewrites the table from ``DIR/selector_fate.json`` (lanes split by
``--arms`` merged there). The arms are rebuilt from the table's record labels and checked against
their keys, and every stage is built by `build_candidate` ("as the table built it": no calibration
images, so no revival, and the selector at its full learning rate). Dead units are counted on the
sweep's 256 calibration images (a build with them collapses a selector the distillation left dead
into a static one, `build_candidate`: counted as every unit dead); block_probe.py's diagnostics
(distinct channel sets, scores, the block's update against the original block's) on the first
2048 test images. No fine-tuning (block_probe.py follows a selector through it). Writes
``selector_fate.md`` and ``selector_fate.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import modify
from modify.conversion.selector_units import dead_units
from modify.io.files import atomic_write_text
from modify.layers import MoDBlock, StaticSelector
from modify.study.candidates import Candidate, build_candidate
from modify.study.store import load_runs
from modify.train.data import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from block_probe import diagnose  # noqa: E402
from block_table import PLAN, mod_arm, static_arm  # noqa: E402  (the table's arms, exactly)

LABEL = re.compile(r"^(?P<block>\S+) MoD k=(?P<k>\d+)$")


def selection(model: nn.Module, original: nn.Module, block: str, calib: Tensor, images: Tensor) -> dict[str, Any]:
    """The one MoD block's selector: block_probe's diagnostics on ``images`` (distinct channel sets,
    scores, the block's update against the original block's), and its dead hidden units on ``calib``."""
    (mod,) = [m for m in model.modules() if isinstance(m, MoDBlock)]
    found = diagnose(model, original, block, images)
    if isinstance(mod.selector, StaticSelector):  # collapsed by build_candidate: every unit was dead on calib
        hidden = max(1, mod.channels // PLAN.mod.reduction)  # the selector it replaced
        return {**found, "dead": hidden, "hidden": hidden, "collapsed": True}
    dead, hidden = dead_units(model, [mod], calib)[0]
    return {**found, "dead": dead, "hidden": hidden}


class Bench:
    """The model, the data and the sweep's calibration images; builds arms as the sweep does."""

    def __init__(self, model_path: str, input_size: int) -> None:
        self.original = modify.load(model_path).eval()
        self.input_size = input_size
        self.train: Dataset = load_dataset("fashion-mnist", split="train", size=input_size)
        test = load_dataset("fashion-mnist", split="test", size=input_size)
        picks = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(0))[:256].tolist()
        self.calib = torch.stack([self.train[i][0] for i in picks])  # (256, 3, H, W), as run_sweep draws them
        self.images = next(iter(DataLoader(test, batch_size=2048)))[0]  # (2048, 3, H, W)

    def loader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=128, shuffle=True, drop_last=True)  # run_sweep's

    def build(self, arm: Candidate, *, revive: bool, selector_lr_scale: float | None) -> tuple[nn.Module, dict]:
        """The arm as `build_candidate` builds it (revived with the calibration images, or as drawn
        without them): without block distillation (``selector_lr_scale`` None), or with it at that
        selector share; returns the model and the block's `BlockFit` as a dict (empty without)."""
        distilled = selector_lr_scale is not None
        candidate = (
            dataclasses.replace(arm, selector_lr_scale=selector_lr_scale)
            if distilled
            else dataclasses.replace(arm, block_distill_steps=0)
        )
        model, details = build_candidate(
            candidate,
            self.original,
            input_size=self.input_size,
            calib=self.calib if revive else None,
            train_loader=self.loader() if distilled else None,
        )
        return model, details["block_distill"][0] if distilled else {}


def fate(bench: Bench, block: str, k: int, scales: list[float]) -> dict[str, Any]:
    arm = mod_arm(block, k)
    row: dict[str, Any] = {"arm": arm.label}
    stages: list[tuple[str, bool, float | None]] = [("as drawn", False, None), ("revived", True, None)]
    stages += [("as the table built it", False, 1.0)] + [(f"revived, selector lr x{s:g}", True, s) for s in scales]
    for stage, revive, scale in stages:
        model, fit = bench.build(arm, revive=revive, selector_lr_scale=scale)
        row[stage] = {**selection(model, bench.original, block, bench.calib, bench.images), **fit}
    _, details = build_candidate(
        static_arm(block, k),
        bench.original,
        input_size=bench.input_size,
        calib=bench.calib,
        train_loader=bench.loader(),
    )
    row["static MoD"] = details["block_distill"][0]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    distilled = [s for s in rows[0] if "selector lr" in s or s == "as the table built it"] if rows else []
    lines = [
        "Dead units / hidden units (256 calibration images); distinct channel sets over 2048 test images; "
        "block MSE after block distillation, on the images the MoD arm's distillation recorded (deleted: the "
        "block's input against its output there; static MoD: distilled alike, on the images its own build drew).",
        "",
        "| arm | as drawn | revived | " + " | ".join(distilled) + " | deleted MSE | static MoD MSE |",
        "|---|---|---|" + "---|" * len(distilled) + "---|---|",
    ]
    for r in rows:
        cells = [r["arm"], f"{r['as drawn']['dead']}/{r['as drawn']['hidden']}"]
        cells.append(f"{r['revived']['dead']}/{r['revived']['hidden']}")
        for s in distilled:
            d = r[s]
            cells.append(f"{d['dead']}/{d['hidden']} dead, {d['distinct_sets']} sets, MSE {d['loss_after']:.4f}")
        cells += [f"{r[distilled[0]]['loss_deleted']:.4f}", f"{r['static MoD']['loss_after']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for s in ["as drawn", "revived", *distilled]:
        dead = sum(r[s]["dead"] == r[s]["hidden"] for r in rows)
        lines.append(f"- {s}: every selector unit dead in {dead} of {len(rows)} arms.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="the table's trained checkpoint (not with --report-only)")
    p.add_argument("--table", help="a block_table folder (its MoD arms are measured)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--arms", default=None, help="only the MoD arms whose label this regular expression finds")
    p.add_argument("--scales", default="1,0.1,0", help="selector learning-rate shares to distil with")
    p.add_argument("--report-only", action="store_true", help="rewrite selector_fate.md from the JSON in OUT")
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        text = markdown(json.loads((out / "selector_fate.json").read_text()))
        atomic_write_text(out / "selector_fate.md", text + "\n")
        print(text)
        return
    if args.model is None or args.table is None:
        raise SystemExit("error: give the trained checkpoint and --table DIR (or --report-only -o DIR)")
    bench = Bench(args.model, args.input_size)
    scales = [float(s) for s in args.scales.split(",")]
    labels = sorted({r.label: r.key for r in load_runs(args.table) if LABEL.match(r.label)}.items())
    rows = []
    for label, key in labels:
        if args.arms and not re.search(args.arms, label):
            continue
        match = LABEL.match(label)
        assert match is not None
        block, k = match["block"], int(match["k"])
        if mod_arm(block, k).key != key:
            raise SystemExit(f"error: {label}: the MoD arm's key is {mod_arm(block, k).key}, the record's {key}")
        rows.append(fate(bench, block, k, scales))
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "selector_fate.json", json.dumps(rows, indent=1) + "\n")
    text = markdown(rows)
    atomic_write_text(out / "selector_fate.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
