"""How much does a finalist's KL after the brief fine-tune move with that fine-tune's seed (its data
order) alone? The number behind `PlanConfig.tune_margin`.

    python benchmarks/finalist_noise.py resnet18_fmnist32.pt PLAN.yaml [PLAN.yaml ...] --seeds 0,1,2 \\
        -o benchmarks/results/finalists_r18/noise.json

Each plan (a version-2 recipe, as `modify plan` writes it) is built and repaired as the planner
builds its finalists, fine-tuned for ``--steps`` steps as they are (`modify.study.finalists.
brief_finetune`) once per seed, and scored on the planner's held-out calibration images. Prints
per plan the KLs, their mean and half range relative to the mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

import modify
from modify.study.finalists import brief_finetune
from modify.study.latency import Setting
from modify.study.planner import PlanConfig, build_plan
from modify.study.sensitivity import calibration_batch, calibration_split, reference_outputs
from modify.train.data import load_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("plans", nargs="+", type=Path, help="version-2 recipes (YAML)")
    p.add_argument("-o", "--out", type=Path, required=True, help="JSON of every KL (resumable)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--input-size", type=int, default=32)
    args = p.parse_args(argv)
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    original = modify.load(args.model).eval()
    train = load_dataset("fashion-mnist", split="train", size=args.input_size)
    config = PlanConfig(speedup=1.5, setting=Setting(input_size=args.input_size))  # speed-up unused here
    repair_set, calib_set = calibration_split(train, calib_images=config.calib_images, seed=config.seed)
    calib = calibration_batch(calib_set)  # (1024, 3, H, W)
    reference = reference_outputs(original, calib)
    for path in args.plans:
        recipe = yaml.safe_load(path.read_text())
        kls = done.setdefault(str(path), {})
        for seed in (int(s) for s in args.seeds.split(",")):
            if str(seed) in kls:
                continue
            started = time.perf_counter()
            start = {"init": recipe.get("init", "copy"), "zero_update": bool(recipe.get("zero_update", False))}
            built_as = dataclasses.replace(config, **start)  # the plan file says how its MoD blocks start
            model = build_plan(original, recipe, built_as, weights=True, repair_set=repair_set)
            tuned = brief_finetune(
                model, original, repair_set, calib, reference, steps=args.steps, batch_size=config.batch_size, seed=seed
            )
            kls[str(seed)] = tuned.kl
            print(f"{path} seed {seed}: KL {tuned.kl:.5f} ({time.perf_counter() - started:.0f} s)", flush=True)
            args.out.write_text(json.dumps(done, indent=1))
    for path, kls in done.items():
        values = list(kls.values())
        mean = statistics.fmean(values)
        half = (max(values) - min(values)) / 2
        print(f"{path}: {len(values)} seeds, KL {mean:.5f} ± {half:.5f} ({100 * half / mean:.0f}% of the mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
