"""Why does a brief fine-tune leave MoD blocks at or below deleting them? One cause at a time.

Issue 21's setting: a converged ResNet-18 (Fashion-MNIST, 32x32), layer3.1 and layer4.1 deleted in
every arm, and layer1.1 + layer2.1 kept, deleted, narrowed, or made MoD blocks in the ways below;
each arm fine-tuned exactly as `modify compare` fine-tunes (0.5 epoch of distillation from the
original, lr 0.02, seeds 0 and 1), then test accuracy and the batch-1 speed-up, through the same
resumable sweep (`modify.study.sweep.run_sweep`; the folder holds every record).

    python benchmarks/mod_middle.py resnet18_fmnist.pt -o benchmarks/results/mod_middle_r18
    python benchmarks/mod_middle.py resnet18_fmnist.pt -o /tmp/quick --limit 512 --epochs 0.05 --seeds 0  # a minute

Arms, each changing one thing against the one before it where it can:

- the two ends: both blocks kept, both deleted;
- today's default (``whole`` form, fresh weights) and the configuration `modify compare` found best
  (``branch`` form fused into the selected channels' own positions, copied weights, block-local
  distillation);
- ``branch`` + zero update: exactly the deletion at the start (bit for bit), fresh or the
  original's most important channels, with and without block-local distillation;
- the candidate causes: BatchNorm statistics of mixed channels (the reduced blocks' BatchNorms
  frozen to the original channels' running statistics during the fine-tune), the learning rate of
  the replaced blocks (x10), and per-image selection itself (static MoD: one fixed set of k
  channels, the most important);
- k = C/8, C/4, C/2 of the best configuration, and narrow at C/4.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import modify
from modify.study.candidates import Candidate
from modify.study.report import markdown_table, summarize
from modify.study.store import RunRecord, load_runs
from modify.study.sweep import CompareConfig, run_sweep
from modify.train.data import load_dataset
from modify.train.finetune import FinetuneConfig

CHANGED = ("layer1.1", "layer2.1")
DELETED = ("layer3.1", "layer4.1")
OP = {"form": "branch", "fusion": "original"}  # fused into the selected channels' own positions
WHOLE = {"form": "whole", "fusion": "first"}  # today's default (the paper's)


def recipe(action: str, *, mod: dict[str, Any] | None = None, **capacity: Any) -> dict[str, Any]:
    """Version 2: layer1.1 and layer2.1 get ``action`` (with ``capacity``), layer3.1 and layer4.1 are deleted."""
    rules = [{"name": list(CHANGED), "action": action, **capacity}, {"name": list(DELETED), "action": "delete"}]
    return {"version": 2, "defaults": {"fraction": 0.25}, "mod": dict(mod or OP), "rules": rules}


def arms() -> list[Candidate]:
    kd = 300  # block-local distillation steps, as `modify compare`'s candidates
    best = dict(init="importance", zero_update=True, block_distill_steps=kd)
    return [
        Candidate("mixed", "keep both", recipe=recipe("keep")),
        Candidate("mixed", "delete both", recipe=recipe("delete")),
        Candidate("mixed", "MoD C/4 whole, scratch (today's default)", recipe=recipe("mod", mod=WHOLE, fraction=0.25)),
        Candidate(
            "mixed",
            "MoD C/4 OP, copy + block KD (compare's best)",
            recipe=recipe("mod", fraction=0.25),
            init="copy",
            block_distill_steps=kd,
        ),
        Candidate("mixed", "MoD C/4 OP, zero update (= deletion)", recipe=recipe("mod", fraction=0.25), init="zero"),
        Candidate(
            "mixed",
            "MoD C/4 OP, zero update + block KD",
            recipe=recipe("mod", fraction=0.25),
            init="zero",
            block_distill_steps=kd,
        ),
        Candidate(
            "mixed", "MoD C/4 OP, importance, zero update + block KD", recipe=recipe("mod", fraction=0.25), **best
        ),
        Candidate(
            "mixed",
            "... + BatchNorms frozen",
            recipe=recipe("mod", fraction=0.25),
            **best,
            finetune=(("block_norms", "frozen"),),
        ),
        Candidate(
            "mixed",
            "... + blocks at 10x lr",
            recipe=recipe("mod", fraction=0.25),
            **best,
            finetune=(("block_lr_scale", 10.0),),
        ),
        Candidate(
            "mixed",
            "static MoD C/4 (same, one fixed channel set)",
            recipe=recipe("mod", mod={**OP, "selection": "static"}, fraction=0.25),
            **best,
        ),
        Candidate("mixed", "MoD C/8 (best config)", recipe=recipe("mod", fraction=0.125), **best),
        Candidate("mixed", "MoD C/2 (best config)", recipe=recipe("mod", fraction=0.5), **best),
        Candidate("mixed", "narrow C/4 + block KD", recipe=recipe("narrow", fraction=0.25), block_distill_steps=kd),
    ]


def accuracy_table(records: list[RunRecord]) -> str:
    """Per arm, in the order first run: seeds, test accuracy before and after fine-tuning (mean, and
    half the range over seeds) and the test KL to the original after it (what the timing-free
    `--report-only` prints)."""
    arms_seen: dict[str, list[RunRecord]] = {}
    for r in records:
        arms_seen.setdefault(r.label, []).append(r)
    lines = [
        "| arm | seeds | before FT % | after FT % (mean ± half range) | test KL to the original |",
        "|---|---|---|---|---|",
    ]
    for label, runs in arms_seen.items():
        acc = [100 * r.accuracy for r in runs]
        kl = [r.details.get("test", {}).get("kl") for r in runs]
        kl_text = f"{statistics.mean(kl):.4f}" if all(k is not None for k in kl) else "-"
        seeds = ",".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))
        before = statistics.mean(100 * r.accuracy_before for r in runs)
        spread = (max(acc) - min(acc)) / 2
        lines.append(f"| {label} | {seeds} | {before:.2f} | {statistics.mean(acc):.2f} ± {spread:.2f} | {kl_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained ResNet-18 checkpoint (examples/train_fashion_mnist.py)")
    p.add_argument("-o", "--out", required=True, help="the sweep folder (resumable)")
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--limit", type=int, default=None, help="training and test images (quick looks)")
    p.add_argument("--arms", default=None, help="comma-separated indices of the arms to run (default: all)")
    p.add_argument("--report-only", action="store_true", help="train and time nothing: the table of the stored runs")
    args = p.parse_args(argv)
    if args.report_only:
        text = accuracy_table(load_runs(args.out))
        print(text)
        Path(args.out, "mod_middle_accuracy.md").write_text(text + "\n")
        return
    original = modify.load(args.model)
    train = load_dataset("fashion-mnist", split="train", limit=args.limit)
    test = load_dataset("fashion-mnist", split="test", limit=args.limit)
    chosen = arms()
    if args.arms:
        chosen = [chosen[int(i)] for i in args.arms.split(",")]
    config = CompareConfig(
        epochs=args.epochs,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        finetune=FinetuneConfig(lr=0.02, alpha=0.5, temperature=4.0, warmup=0.03),
        input_size=32,
        train_limit=args.limit,
        test_limit=args.limit,
    )

    def progress(kind: str, info: dict[str, Any]) -> None:
        if kind in ("start", "failed"):
            print(kind, info.get("label"), info.get("seed"), info.get("error", ""), flush=True)
        elif kind == "done":
            print(
                f"  {info['label']} seed {info['seed']}: "
                f"{100 * info['accuracy_before']:.2f} -> {100 * info['accuracy']:.2f}",
                flush=True,
            )

    records = run_sweep(original, train, test, candidates=chosen, config=config, out_dir=args.out, on_event=progress)
    rows = summarize(records)
    table = markdown_table(rows)
    print(table)
    Path(args.out, "mod_middle.md").write_text(table + "\n")
    Path(args.out, "mod_middle.json").write_text(json.dumps(dataclasses.asdict(rows), indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
