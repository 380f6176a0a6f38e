"""Per block of a trained model: MoD, static MoD and narrow at k = C/8, C/4, C/2, deletion and keep,
each alone, after the same brief fine-tune; the table that says whether a MoD block is a real
middle between keeping its block and deleting it, and whether per-image selection beats a fixed
channel set at the same cost (issue 21).

    python benchmarks/block_table.py resnet18_fmnist.pt -o benchmarks/results/block_table_r18
    python benchmarks/block_table.py mobilenet_v2_fmnist64.pt --input-size 64 --blocks features.3 -o LANE_A
    python benchmarks/block_table.py mobilenet_v2_fmnist64.pt --input-size 64 \\
        --blocks features.3,features.9,features.16 --finished-only -o benchmarks/results/block_table_mbv2

On a 2-core machine two one-thread lanes finish about 1.8x sooner than one two-thread run (1.3x from
the lanes, 1.4x more from the allocator setting; 2.35 against 4.3 minutes a fine-tune): one
folder per lane (each run with `--blocks` of its own, OMP_NUM_THREADS=1 and the allocator setting
of README's fine-tuning section), then their runs/ copied into one folder and `--finished-only`
(fine-tune nothing; time, with nothing else running, and tabulate what is complete).

Every arm changes one block (the rest of the model as trained), is built as `modify plan` builds its
choices (MoD: the branch form fused into the selected channels' own positions, the original
block's weights, block-local distillation that never leaves it below its deletion; static MoD: the
same reduced block and fusion fed one fixed set, the k channels the block reads most, no selector;
narrow: the branch's inner widths cut to the share, its most important channels, block-local
distillation),
fine-tuned exactly as `modify compare` fine-tunes (0.5 epoch of distillation from the original, lr
0.02, seeds 0 and 1), through the same resumable sweep (`modify.study.sweep.run_sweep`; the folder
keeps every record). Printed and written beside the records: accuracy (mean ± half the seed range),
the test KL to the original (steadier than accuracy), batch-1 speed-ups, and MoD - static MoD;
then issue 21's questions as differences paired by seed (MoD - deletion, MoD - static MoD, MoD at
the largest k - MoD at the smallest).
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
from modify.conversion.pipeline import traced_sites
from modify.study.candidates import Candidate
from modify.study.planner import PlanConfig
from modify.study.store import RunRecord, SweepStore
from modify.study.sweep import CompareConfig, run_sweep
from modify.train.data import load_dataset
from modify.train.finetune import FinetuneConfig

# The MoD arm: the paper's Channel Selector, built as the planner built its MoD blocks before it
# switched to static MoD (its form and fusion, the original block's weights, block-local distillation).
PLAN = PlanConfig.for_selection("dynamic", speedup=1.5)
KD = 300  # block-local distillation steps, as `modify compare`'s candidates


def arms(blocks: dict[str, int], fractions: list[float], *, keep_on: str | None = None) -> list[Candidate]:
    """keep, then per block: delete, and per fraction MoD, static MoD and narrow.

    The keep arm's recipe names one block, ``keep_on`` (default: the first of ``blocks``); pass the
    model's first block so that sweeps over different ``--blocks`` share one keep record.
    """
    keep = {"version": 2, "rules": [{"name": keep_on or next(iter(blocks)), "action": "keep"}]}
    out = [Candidate("mixed", "keep", recipe=keep)]
    for name, channels in blocks.items():
        out.append(delete_arm(name))
        for f in fractions:
            k = _k(channels, f)
            out.append(mod_arm(name, k))
            out.append(static_arm(name, k))
            narrow = {"name": name, "action": "narrow", "fraction": f}
            out.append(
                Candidate(
                    "mixed", f"{name} narrow k={k}", recipe={"version": 2, "rules": [narrow]}, block_distill_steps=KD
                )
            )
    return out


def delete_arm(name: str) -> Candidate:
    """The deletion arm of block ``name``, labelled ``"NAME delete"``."""
    return Candidate("mixed", f"{name} delete", recipe={"version": 2, "rules": [{"name": name, "action": "delete"}]})


def mod_arm(name: str, k: int) -> Candidate:
    """The MoD arm of block ``name`` at width ``k``, labelled ``"NAME MoD k=K"``, built as the planner
    builds its MoD choices (its form and fusion, the original block's weights, block-local distillation)."""
    return Candidate(
        "mixed",
        f"{name} MoD k={k}",
        recipe=_mod_recipe(name, k),
        init=PLAN.init,
        zero_update=PLAN.zero_update,
        block_distill_steps=KD,
    )


def static_arm(name: str, k: int) -> Candidate:
    """The static MoD arm, labelled ``"NAME static k=K"``: the MoD arm's reduced block and fusion fed
    one fixed set, the k channels the block reads most (init "importance" picks them and copies
    their weights), then the same distillation."""
    recipe = _mod_recipe(name, k, selection="static")
    return Candidate("mixed", f"{name} static k={k}", recipe=recipe, init="importance", block_distill_steps=KD)


def _mod_recipe(name: str, k: int, **changes: Any) -> dict[str, Any]:
    """A version-2 recipe making block ``name`` a MoD block of width ``k``, built with the planner's
    MoD settings (``changes`` override some of them)."""
    rule = {"name": name, "action": "mod", "k": k}
    return {"version": 2, "mod": {**PLAN.mod.as_dict(), **changes}, "rules": [rule]}


def sweep_config(
    seeds: tuple[int, ...], input_size: int, *, epochs: float = 0.5, limit: int | None = None
) -> CompareConfig:
    """The fine-tune every arm gets: `modify compare`'s (distillation from the original, lr 0.02)."""
    return CompareConfig(
        epochs=epochs,
        seeds=seeds,
        finetune=FinetuneConfig(lr=0.02, alpha=0.5, temperature=4.0, warmup=0.03),
        input_size=input_size,
        throughput_batch=0,
        train_limit=limit,
        test_limit=limit,
    )


def _k(channels: int, fraction: float) -> int:
    """The MoD and narrow width of an arm: the share of the block's channels, at least one."""
    return max(1, int(channels * fraction))


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (over seeds)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def table(records: list[RunRecord], blocks: dict[str, int], fractions: list[float]) -> tuple[str, dict[str, Any]]:
    by_label: dict[str, list[RunRecord]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)

    def cell(label: str) -> dict[str, Any] | None:
        runs = by_label.get(label)
        if not runs:
            return None
        acc, acc_spread = _mean_spread([100 * r.accuracy for r in runs])
        kl, _ = _mean_spread([r.details.get("test", {}).get("kl", float("nan")) for r in runs])
        return {"accuracy": acc, "spread": acc_spread, "kl": kl, "speedup": runs[0].speedup, "seeds": len(runs)}

    data: dict[str, Any] = {"keep": cell("keep"), "blocks": {}}
    head = "| block | C | delete |" + "".join(f" MoD k={f:g}C | static | MoD - static | narrow |" for f in fractions)
    lines = [head, "|" + "---|" * (3 + 4 * len(fractions))]
    for name, channels in blocks.items():
        row = {"delete": cell(f"{name} delete")}
        text = f"| {name} | {channels} | {_fmt(row['delete'])} |"
        for f in fractions:
            k = _k(channels, f)
            m, s, n = (cell(f"{name} {kind} k={k}") for kind in ("MoD", "static", "narrow"))
            row[f"k={k}"] = {"mod": m, "static": s, "narrow": n}
            diff = f"{m['accuracy'] - s['accuracy']:+.2f}" if m and s else ""
            text += f" {_fmt(m)} | {_fmt(s)} | {diff} | {_fmt(n)} |"
        data["blocks"][name] = row
        lines.append(text)
    keep = data["keep"]
    lines.append("")
    lines.append(f"keep (the original, fine-tuned alike): {_fmt(keep)}" if keep else "keep: not run")
    return "\n".join(lines), data


def differences(records: list[RunRecord], blocks: dict[str, int], fractions: list[float]) -> tuple[str, dict[str, Any]]:
    """Issue 21's questions as paired differences (the same seed's two arms; mean ± half the range
    over seeds, in points): MoD - deletion per k, MoD - static MoD per k, and MoD at the largest k -
    MoD at the smallest (does it rise with k?)."""
    accuracy = {(r.label, r.seed): 100 * r.accuracy for r in records}
    seeds = sorted({r.seed for r in records})

    def paired(a: str, b: str) -> dict[str, Any] | None:
        d = [accuracy[a, s] - accuracy[b, s] for s in seeds if (a, s) in accuracy and (b, s) in accuracy]
        if not d:
            return None
        mean, spread = _mean_spread(d)
        return {"mean": mean, "spread": spread, "seeds": len(d)}

    def fmt(x: dict[str, Any] | None) -> str:
        return "-" if x is None else f"{x['mean']:+.2f} ± {x['spread']:.2f}"

    ks = {name: [_k(c, f) for f in fractions] for name, c in blocks.items()}
    shares = [f"C/{round(1 / f)}" for f in fractions]
    head = (
        "| block |"
        + "".join(f" MoD - delete {s} |" for s in shares)
        + "".join(f" MoD - static {s} |" for s in shares)
        + f" MoD {shares[-1]} - MoD {shares[0]} |"
    )
    lines = [head, "|" + "---|" * (2 + 2 * len(fractions))]
    data: dict[str, Any] = {}
    for name in blocks:
        mod = [f"{name} MoD k={k}" for k in ks[name]]
        row = {
            "mod_minus_delete": [paired(m, f"{name} delete") for m in mod],
            "mod_minus_static": [paired(m, f"{name} static k={k}") for m, k in zip(mod, ks[name], strict=True)],
            "mod_largest_minus_smallest": paired(mod[-1], mod[0]),
        }
        data[name] = row
        cells = [*row["mod_minus_delete"], *row["mod_minus_static"], row["mod_largest_minus_smallest"]]
        lines.append(f"| {name} |" + "".join(f" {fmt(c)} |" for c in cells))
    lines.append("")
    lines.append(f"Seeds {', '.join(map(str, seeds))}; points of test accuracy, paired by seed.")
    return "\n".join(lines), data


def _fmt(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    speed = f", {c['speedup']:.2f}x" if c.get("speedup") else ""
    return f"{c['accuracy']:.2f} ± {c['spread']:.2f} (KL {c['kl']:.4f}{speed})"


def plot(data: dict[str, Any], fractions: list[float], path: Path, *, metric: str = "accuracy") -> None:
    """One panel per block: MoD, static MoD and narrow against k, deletion and keep as lines."""
    from modify.measure.plots import pyplot, save_png

    plt = pyplot("the block table's plot")
    names = list(data["blocks"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False, sharey=True)
    styles = {
        "mod": ("MoD", "tab:blue", "o-"),
        "static": ("static MoD", "tab:purple", "s--"),
        "narrow": ("narrow", "tab:green", "^-"),
    }
    for ax, name in zip(axes[0], names, strict=True):
        row = data["blocks"][name]
        ks = [key for key in row if key.startswith("k=")]
        for kind, (label, color, style) in styles.items():
            points = [(f, row[key][kind]) for f, key in zip(fractions, ks, strict=True) if row[key][kind]]
            if points:
                ax.errorbar(
                    [f for f, _ in points],
                    [c[metric] for _, c in points],
                    yerr=[c.get("spread", 0) if metric == "accuracy" else 0 for _, c in points],
                    fmt=style,
                    color=color,
                    label=label,
                    capsize=2,
                )
        if row["delete"]:
            ax.axhline(row["delete"][metric], color="tab:orange", ls=":", label="delete")
        if data.get("keep"):
            ax.axhline(data["keep"][metric], color="grey", ls="-", lw=1, label="keep")
        ax.set_xscale("log", base=2)
        ax.set_xticks(fractions, [f"C/{round(1 / f)}" for f in fractions])
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy after fine-tuning (%)" if metric == "accuracy" else "test KL to the original")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint (examples/train_fashion_mnist.py)")
    p.add_argument("-o", "--out", required=True, help="the sweep folder (resumable)")
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--fractions", default="0.125,0.25,0.5")
    p.add_argument("--blocks", default=None, help="comma-separated block names (default: every convertible block)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="training and test images (quick looks)")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="fine-tune nothing: time and tabulate the arms whose every seed is in the folder",
    )
    args = p.parse_args(argv)
    original = modify.load(args.model)
    import torch

    _, sites = traced_sites(original, (torch.zeros(1, 3, args.input_size, args.input_size),))
    blocks = {s.name: s.channels for s in sites if s.convertible}
    keep_on = next(iter(blocks))  # one keep record whichever --blocks a run names
    if args.blocks:
        names = args.blocks.split(",")
        unknown = [b for b in names if b not in blocks]
        if unknown:
            listed = ", ".join(blocks)
            sys.exit(f"error: --blocks {','.join(unknown)}: not a convertible block of {args.model} (it has: {listed})")
        blocks = {b: blocks[b] for b in names}
    fractions = [float(f) for f in args.fractions.split(",")]
    train = load_dataset("fashion-mnist", split="train", limit=args.limit, size=args.input_size)
    test = load_dataset("fashion-mnist", split="test", limit=args.limit, size=args.input_size)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    config = sweep_config(seeds, args.input_size, epochs=args.epochs, limit=args.limit)

    def progress(kind: str, info: dict[str, Any]) -> None:
        if kind == "done":
            print(
                f"{info['label']} seed {info['seed']}: "
                f"{100 * info['accuracy_before']:.2f} -> {100 * info['accuracy']:.2f}",
                flush=True,
            )
        elif kind == "failed":
            print(f"failed: {info['label']}: {info['error']}", flush=True)

    candidates = arms(blocks, fractions, keep_on=keep_on)
    if args.finished_only:  # e.g. a sweep split into lanes by --blocks, merged, some lanes unfinished
        store = SweepStore(args.out)
        candidates = [c for c in candidates if all(store.run_path(c.key, s).is_file() for s in config.seeds)]
    records = run_sweep(
        original, train, test, candidates=candidates, config=config, out_dir=args.out, on_event=progress
    )
    text, data = table(records, blocks, fractions)
    paired_text, paired = differences(records, blocks, fractions)
    print(text + "\n\n" + paired_text)
    Path(args.out, "block_table.md").write_text(text + "\n\n" + paired_text + "\n")
    Path(args.out, "block_table.json").write_text(
        json.dumps(
            {
                "channels": blocks,
                "fractions": fractions,
                **data,
                "paired_differences": paired,
                "config": dataclasses.asdict(config),
            },
            indent=1,
            default=str,
        )
    )
    plot(data, fractions, Path(args.out, "block_table.png"))


if __name__ == "__main__":
    main(sys.argv[1:])
