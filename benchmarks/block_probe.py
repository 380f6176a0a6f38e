"""One cell of the block table (benchmarks/block_table.py) again, with one candidate cause of a
weak MoD block changed at a time: in its fine-tune, the reduced block's BatchNorms frozen to their
running statistics (batch statistics of per-image channel sets describe no channel), and the
replaced block's learning rate at a tenth (the fine-tune undoing what block-local distillation
fitted); in how it is built, the reduced block's weights taken from the channels the selector is
set to prefer (``init importance``: slot j starts as the j-th most important channel, whose
weights it holds, where ``copy`` holds the leading channels' weights and a fresh selector), and
the selected channels fed in ascending index order instead of score order (``order index``: a
channel that two routings share lands in the same slot more often), and the two together (each
slot holding the weights of the channel it receives, however the scores tie); and the selector frozen
during block-local distillation (which otherwise kills every selector unit on the ResNet-18 of the
table, leaving one fixed channel set: benchmarks/selector_fate.py), and the selector's hidden
ReLU replaced by a LeakyReLU or a GELU (no dead state to end in); and each selected channel
bringing its own weights (``weights channel``, `modify.layers.channel_weights`: the per-image
choice without a slot meeting another channel's weights), with the ReLU or a GELU selector,
from ``init importance``, and with block distillation also teaching the selector, per image, the
k channels the original block changes most (``routed``: `modify.train.distill`'s ``route_weight``
1). Everything else is the
table's MoD arm: built as the planner builds it, 0.5 epoch of distillation from the original,
lr 0.02, a resumable sweep folder.

    python benchmarks/block_probe.py mobilenet_v2_fmnist64.pt --input-size 64 --block features.3 --k 12 -o DIR

Prints before/after accuracy and the test KL to the original per arm and seed (``probe.md``), and,
for every model it fine-tunes, what its MoD block does as built and after the fine-tune, on the
first 2048 test images (``diagnostics-s<SEEDS>.json`` per process, all of them in
``diagnostics.md``): how many distinct channel sets the images pick, how often slot j holds its
most common channel, the selected scores, and the block's update (its output minus its input)
against the original block's update on the same input (norm ratio and cosine), and how many of the
selector's hidden units fire on none of the first 256 (`modify.conversion.selector_units`: all of them
dead is a selector that scores every channel 0.5; a selector the distillation left dead is now
collapsed into the set it picks, `modify.study.candidates.build_candidate`, and reads "static,
score 0.5"). The table's own
MoD, static MoD and deletion arms are read from ``--table`` (a block_table folder) when given, so
they are not fine-tuned twice (and then have no diagnostics); ``--arms REGEX`` runs only the arms
whose label it finds.
"""

from __future__ import annotations

import argparse
import collections
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
from modify.layers import MoDBlock, StaticSelector
from modify.study.candidates import Candidate
from modify.study.store import RunRecord, load_runs
from modify.study.sweep import run_sweep
from modify.train.data import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from block_table import delete_arm, mod_arm, static_arm, sweep_config  # noqa: E402  (the table's arms and fine-tune, exactly)

CAUSES = {
    "BatchNorms frozen": (("block_norms", "frozen"),),
    "block lr x0.1": (("block_lr_scale", 0.1),),
}


def _mod_option(c: Candidate, key: str, value: str) -> Candidate:
    return dataclasses.replace(c, recipe={**c.recipe, "mod": {**c.recipe["mod"], key: value}})


def _index_order(c: Candidate) -> Candidate:
    return _mod_option(c, "order", "index")


BUILDS = {
    "selector frozen in block KD": lambda c: dataclasses.replace(c, selector_lr_scale=0.0),
    "init importance": lambda c: dataclasses.replace(c, init="importance"),
    "order index": _index_order,
    "init importance, order index": lambda c: dataclasses.replace(_index_order(c), init="importance"),
    "selector leaky_relu": lambda c: _mod_option(c, "activation", "leaky_relu"),
    "selector gelu": lambda c: _mod_option(c, "activation", "gelu"),
    "own weights": lambda c: dataclasses.replace(_mod_option(c, "weights", "channel"), init="importance"),
    "own weights, selector gelu": lambda c: dataclasses.replace(
        _mod_option(_mod_option(c, "weights", "channel"), "activation", "gelu"), init="importance"
    ),
    "own weights, selector gelu, routed": lambda c: dataclasses.replace(
        _mod_option(_mod_option(c, "weights", "channel"), "activation", "gelu"), init="importance", route_weight=1.0
    ),
}


def probes(block: str, k: int) -> list[Candidate]:
    """The table's MoD arm at ``k`` (label ``"BLOCK MoD k=K"``), one variant per cause, and the
    table's static MoD arm (``"BLOCK static k=K"``) and deletion (``"BLOCK delete"``), the
    references the causes are read against."""
    base = mod_arm(block, k)
    tuned = [dataclasses.replace(base, label=f"{base.label}, {c}", finetune=f) for c, f in CAUSES.items()]
    built = [dataclasses.replace(change(base), label=f"{base.label}, {c}") for c, change in BUILDS.items()]
    return [base, *tuned, *built, static_arm(block, k), delete_arm(block)]


def diagnose(model: nn.Module, original: nn.Module, block: str, images: Tensor) -> dict[str, Any]:
    """What the model's one MoD block does on ``images`` (N, 3, H, W), against ``original``'s ``block``
    fed the same input: its channel choices and its update (output minus input), the update's norm
    ratio and cosine to the original block's as medians over the images. An identity MoD block
    (k = C, `modify.conversion.pipeline.IDENTITY_CONFIG`) gives one set, ratio 1 and cosine 1."""
    (mod,) = [m for m in model.modules() if isinstance(m, MoDBlock)]
    reference = original.get_submodule(block).eval()
    seen: dict[str, list[Tensor]] = collections.defaultdict(list)

    def before_block(m: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen["input"] = [args[0].clone()]  # (N, C, H, W); the fusion may add into it in place

    def on_block(m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        x = seen["input"][0]  # (N, C, H, W)
        ours, theirs = (out - x).flatten(1), (reference(x) - x).flatten(1)  # (N, C*H*W) each
        seen["ratio"].append(ours.norm(dim=1) / theirs.norm(dim=1).clamp_min(1e-12))
        seen["cosine"].append(torch.nn.functional.cosine_similarity(ours, theirs, dim=1))

    def on_selector(m: nn.Module, args: tuple[Tensor, ...], out: tuple[Tensor, Tensor]) -> None:
        seen["scores"].append(out[0])  # (N, k)
        seen["indices"].append(out[1])  # (N, k)

    hooks = [
        mod.register_forward_pre_hook(before_block),
        mod.register_forward_hook(on_block),
        mod.selector.register_forward_hook(on_selector),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in images.split(256):
                model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    indices, scores = torch.cat(seen["indices"]), torch.cat(seen["scores"])  # (N, k) each
    n = len(indices)
    sets = collections.Counter(tuple(sorted(row)) for row in indices.tolist())
    modal = [collections.Counter(indices[:, j].tolist()).most_common(1)[0][1] / n for j in range(indices.shape[1])]
    ratio, cosine = torch.cat(seen["ratio"]), torch.cat(seen["cosine"])
    if isinstance(mod.selector, StaticSelector):  # static MoD, or a dead selector collapsed (score 0.5)
        units = f"none: static, score {mod.selector.score:g}"
    else:
        units = "{}/{}".format(*dead_units(model, [mod], images[:256])[0])
    return {
        "selector_units_dead": units,
        "distinct_sets": len(sets),
        "most_common_set_share": sets.most_common(1)[0][1] / n,
        "slot_modal_share": sum(modal) / len(modal),
        "score_mean": scores.mean().item(),
        "score_std": scores.std().item(),
        "update_norm_ratio": ratio.median().item(),
        "update_cosine": cosine.median().item(),
    }


class Diagnostics:
    """Collects `diagnose` for every model a sweep builds and fine-tunes (its ``built`` and
    ``trained`` events); ``event`` is the sweep's ``on_event``."""

    def __init__(self, original: nn.Module, block: str, test: Dataset, path: Path) -> None:
        self.original, self.block, self.path = original, block, path
        self.images = next(iter(DataLoader(test, batch_size=2048)))[0]  # (2048, 3, H, W): the first test images
        self.found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def event(self, kind: str, info: dict[str, Any]) -> None:
        if kind not in ("built", "trained") or not any(isinstance(m, MoDBlock) for m in info["model"].modules()):
            return  # a deletion has no MoD block to diagnose
        stage = "as built" if kind == "built" else "fine-tuned"
        found = diagnose(info["model"], self.original, self.block, self.images)
        self.found.setdefault(info["label"], {}).setdefault(str(info["seed"]), {})[stage] = found
        self.path.write_text(json.dumps(self.found, indent=1) + "\n")

    @staticmethod
    def table(folder: Path) -> str:
        """Every ``diagnostics-*.json`` of ``folder`` (one per process: lanes split by ``--seeds``) as markdown."""
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("diagnostics-*.json")):
            for label, seeds in json.loads(path.read_text()).items():
                found.setdefault(label, {}).update(seeds)
        lines = [
            "| arm | seed | stage | distinct sets | commonest set | slot modal share | score mean ± std "
            "| update norm / original's | update cosine | selector units dead |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, seeds in found.items():
            for seed, stages in sorted(seeds.items()):
                for stage, d in stages.items():
                    lines.append(
                        f"| {label} | {seed} | {stage} | {d['distinct_sets']} | {d['most_common_set_share']:.3f} "
                        f"| {d['slot_modal_share']:.3f} | {d['score_mean']:.3f} ± {d['score_std']:.3f} "
                        f"| {d['update_norm_ratio']:.3f} | {d['update_cosine']:.3f} "
                        f"| {d.get('selector_units_dead', 'not measured')} |"
                    )
        return "\n".join(lines)


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
    p.add_argument("--table", default=None, help="a block_table folder holding the MoD and static arms")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="train and test on this many images (a smoke run)")
    p.add_argument("--arms", default=None, help="a regular expression: only the arms whose label it finds")
    args = p.parse_args(argv)
    arms = probes(args.block, args.k)
    if args.arms:
        arms = [a for a in arms if re.search(args.arms, a.label)]
        if not arms:
            raise SystemExit(
                f"--arms {args.arms!r} finds none of {', '.join(a.label for a in probes(args.block, args.k))}"
            )
    tabled = {mod_arm(args.block, args.k).key, static_arm(args.block, args.k).key, delete_arm(args.block).key}
    table = [r for r in load_runs(args.table) if r.key in tabled] if args.table else []
    seeds = tuple(int(s) for s in args.seeds.split(","))
    stored = {(r.key, r.seed) for r in table}
    todo = [a for a in arms if any((a.key, s) not in stored for s in seeds)]
    original = modify.load(args.model)
    train = load_dataset("fashion-mnist", split="train", size=args.input_size)
    test = load_dataset("fashion-mnist", split="test", size=args.input_size)
    config = sweep_config(seeds, args.input_size, limit=args.limit)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    diagnostics = Diagnostics(
        original, args.block, test, Path(args.out, f"diagnostics-s{args.seeds.replace(',', '-')}.json")
    )
    records = (
        run_sweep(original, train, test, candidates=todo, config=config, out_dir=args.out, on_event=diagnostics.event)
        + table
    )
    text = report(records, [a.label for a in arms])
    print(text)
    Path(args.out, "probe.md").write_text(text + "\n")
    diagnosed = Diagnostics.table(Path(args.out))
    print(diagnosed)
    Path(args.out, "diagnostics.md").write_text(diagnosed + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
