"""One cell of the block table (benchmarks/block_table.py) again, with one candidate cause of a
weak MoD block changed at a time in its fine-tune: the reduced block's BatchNorms frozen to their
running statistics (batch statistics of per-image channel sets describe no channel), and the
replaced block's learning rate at a tenth (the fine-tune undoing what block-local distillation
fitted). Everything else is the table's MoD arm: built as the planner builds it, 0.5 epoch of
distillation from the original, lr 0.02, seeds 0 and 1, a resumable sweep folder.

    python benchmarks/block_probe.py mobilenet_v2_fmnist64.pt --input-size 64 --block features.3 --k 12 -o DIR

Prints before/after accuracy and the test KL to the original per arm and seed; the unchanged arm
is read from ``--table`` (a block_table folder) when given, so it is not fine-tuned twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import modify
from modify.study.candidates import Candidate
from modify.study.store import RunRecord, load_runs
from modify.study.sweep import run_sweep
from modify.train.data import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from block_table import mod_arm, sweep_config  # noqa: E402  (the table's MoD arm and fine-tune, exactly)

CAUSES = {
    "BatchNorms frozen": (("block_norms", "frozen"),),
    "block lr x0.1": (("block_lr_scale", 0.1),),
}


def probes(block: str, k: int) -> list[Candidate]:
    """The table's MoD arm at ``k`` (label ``"BLOCK MoD k=K"``) and one variant per cause."""
    base = mod_arm(block, k)
    return [base] + [dataclasses.replace(base, label=f"{base.label}, {c}", finetune=f) for c, f in CAUSES.items()]


def report(records: list[RunRecord], labels: list[str]) -> str:
    lines = ["| arm | seed | before FT % | after FT % | test KL |", "|---|---|---|---|---|"]
    for label in labels:
        for r in sorted((r for r in records if r.label == label), key=lambda r: r.seed):
            kl = r.details.get("test", {}).get("kl", float("nan"))
            lines.append(f"| {label} | {r.seed} | {100 * r.accuracy_before:.2f} | {100 * r.accuracy:.2f} | {kl:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint (examples/train_fashion_mnist.py)")
    p.add_argument("--block", required=True)
    p.add_argument("--k", type=int, required=True, help="the MoD width, as in the table's label")
    p.add_argument("-o", "--out", required=True, help="the sweep folder (resumable)")
    p.add_argument("--table", default=None, help="a block_table folder holding the unchanged arm")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--input-size", type=int, default=32)
    args = p.parse_args(argv)
    arms = probes(args.block, args.k)
    table = [r for r in load_runs(args.table) if r.key == arms[0].key] if args.table else []
    seeds = tuple(int(s) for s in args.seeds.split(","))
    todo = [a for a in arms if any((a.key, s) not in {(r.key, r.seed) for r in table} for s in seeds)]
    original = modify.load(args.model)
    train = load_dataset("fashion-mnist", split="train", size=args.input_size)
    test = load_dataset("fashion-mnist", split="test", size=args.input_size)
    config = sweep_config(seeds, args.input_size)
    records = run_sweep(original, train, test, candidates=todo, config=config, out_dir=args.out) + table
    text = report(records, [a.label for a in arms])
    print(text)
    Path(args.out, "probe.md").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
