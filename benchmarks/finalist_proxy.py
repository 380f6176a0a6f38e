"""Does a brief fine-tune rank candidates the way `modify compare`'s fine-tune ends them? The check
behind the planner's finalists (`modify.study.finalists`).

    python benchmarks/finalist_proxy.py resnet18_fmnist32.pt benchmarks/results/compare_r18_converged \\
        -o benchmarks/results/finalists_r18

For every candidate (delete, prune, plan, ...) of a finished comparison: built again from its
record as the comparison built it, then BatchNorm re-estimated; its KL to the original on the
planner's held-out calibration images (1024 training images, seed 0; never the test split), then
fine-tuned as the planner's finalists are (the comparison's distillation, learning rate and
schedule, batch 64, on the rest of the training images) for the last of ``--checkpoints`` steps,
its KL measured again at each checkpoint on the way (the last is exactly a finalist's brief
fine-tune of that length; the earlier ones are mid-schedule). Printed and written (JSON and PNG):
each candidate's KLs beside its final test accuracy in the comparison (mean of its seeds), and the
Spearman rank correlation of -KL and that accuracy at each step count. A proxy that ranks well
picks well among finalists. Resumable: the JSON keeps every candidate done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import modify
from modify.study.candidates import Candidate, build_candidate
from modify.study.sensitivity import calibration_batch, calibration_split, reference_outputs, score
from modify.study.sweep import CompareConfig
from modify.train.data import load_dataset
from modify.train.evaluation import recalibrate_bn
from modify.train.finetune import finetune


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties broken by order; the KLs here have none)."""

    def ranks(xs: list[float]) -> list[float]:
        out = [0.0] * len(xs)
        for pos, i in enumerate(sorted(range(len(xs)), key=lambda i: xs[i])):
            out[i] = float(pos)
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else 0.0


def candidates(sweep: Path) -> dict[str, tuple[Candidate, float | None, list[float]]]:
    """key -> (the candidate as its records describe it, its stored pruning ratio, its accuracies)."""
    out: dict[str, tuple[Candidate, float | None, list[float]]] = {}
    for path in sorted((sweep / "runs").glob("*.json")):
        record = json.loads(path.read_text())["record"]
        if record["key"] in out:
            out[record["key"]][2].append(record["accuracy"])
            continue
        spec = dict(record["details"]["spec"])
        spec["blocks"] = tuple(spec["blocks"]) if spec.get("blocks") else None
        spec["finetune"] = tuple(spec.get("finetune", {}).items())
        candidate = Candidate(label=record["label"], **spec)
        assert candidate.key == record["key"], f"{record['label']}: the spec no longer gives its key"
        arch = sweep / "arch" / f"{candidate.arch_key}.json"
        ratio = json.loads(arch.read_text())["pruning_ratio"] if arch.is_file() else None
        out[record["key"]] = (candidate, ratio, [record["accuracy"]])
    return out


def measure(args: argparse.Namespace, done: dict[str, Any], path: Path) -> None:
    original = modify.load(args.model).eval()
    train = load_dataset("fashion-mnist", split="train", size=args.input_size)
    repair_set, calib_set = calibration_split(train, calib_images=1024, seed=0)
    calib = calibration_batch(calib_set)  # (1024, 3, H, W)
    reference = reference_outputs(original, calib)
    for key, (candidate, ratio, accuracies) in candidates(args.sweep).items():
        if key in done:
            continue
        started = time.perf_counter()
        loader = DataLoader(
            repair_set, batch_size=64, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
        )
        model, _ = build_candidate(
            candidate, original, input_size=args.input_size, calib=calib[:256], train_loader=loader, pruning_ratio=ratio
        )
        recalibrate_bn(model, loader, 8)
        kls = {"0": score(model.eval(), calib, reference).kl}

        def on_step(info: Any, model: Any = model, kls: dict[str, float] = kls) -> None:
            if info.step in args.checkpoints:
                kls[str(info.step)] = score(model.eval(), calib, reference).kl
                model.train()

        config = dataclasses.replace(CompareConfig().finetune, seed=0)  # as the finalists' brief fine-tune
        finetune(model, loader, teacher=original, config=config, steps=max(args.checkpoints), on_step=on_step)
        done[key] = {
            "label": candidate.label,
            "method": candidate.method,
            "accuracy": sum(accuracies) / len(accuracies),
            "seeds": len(accuracies),
            "kl": kls,
            "seconds": time.perf_counter() - started,
        }
        print(
            candidate.label, f"{100 * done[key]['accuracy']:.2f}", {k: round(v, 4) for k, v in kls.items()}, flush=True
        )
        path.write_text(json.dumps(done, indent=1))


def report(done: dict[str, Any], out: Path) -> list[str]:
    rows = sorted(done.values(), key=lambda r: -r["accuracy"])
    steps = sorted({int(s) for r in rows for s in r["kl"]})
    lines = [
        "| candidate | accuracy after compare's fine-tune | " + " | ".join(f"KL after {s} steps" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for r in rows:
        cells = " | ".join(f"{r['kl'][str(s)]:.4f}" if str(s) in r["kl"] else "" for s in steps)
        lines.append(f"| {r['label']} | {100 * r['accuracy']:.2f} | {cells} |")
    accuracy = [r["accuracy"] for r in rows]
    rho = {s: spearman([-r["kl"][str(s)] for r in rows], accuracy) for s in steps}
    lines.append("")
    lines += [f"Spearman(-KL after {s} steps, accuracy) = {rho[s]:+.2f} over {len(rows)} candidates" for s in steps]
    (out / "proxy.md").write_text("\n".join(lines) + "\n")
    (out / "spearman.json").write_text(json.dumps({str(s): rho[s] for s in steps}, indent=1))
    _plot(rows, steps, rho, out / "proxy.png")
    return lines


def _plot(rows: list[dict[str, Any]], steps: list[int], rho: dict[int, float], path: Path) -> None:
    from modify.measure.plots import pyplot, save_png

    plt = pyplot("the proxy plot")
    shown = [steps[0], steps[-1]]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.5), sharey=True)
    colors = {"delete": "tab:orange", "prune": "tab:red", "plan": "tab:green", "mod": "tab:blue", "mixed": "tab:purple"}
    for ax, s in zip(axes, shown, strict=True):
        for r in rows:
            ax.scatter(r["kl"][str(s)], 100 * r["accuracy"], color=colors.get(r["method"], "gray"), s=30)
            ax.annotate(r["label"].replace("delete ", "del "), (r["kl"][str(s)], 100 * r["accuracy"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel(f"KL to the original after {s} steps of fine-tuning (held-out training images)")
        ax.set_title(f"{'the cheap repair alone' if s == 0 else f'{s} steps'}: Spearman {rho[s]:+.2f}")
        ax.grid(alpha=0.3, which="both")
    for method in sorted({r["method"] for r in rows}):
        axes[0].scatter([], [], color=colors.get(method, "gray"), s=30, label=method)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("test accuracy after compare's 0.5-epoch fine-tune (%)")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the compared model's checkpoint")
    p.add_argument("sweep", type=Path, help="a finished `modify compare` folder of that model")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--checkpoints", default="25,50,100,200", help="steps at which to score; the last ends the run")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.checkpoints = [int(s) for s in args.checkpoints.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "proxy.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    if not args.report_only:
        measure(args, done, path)
    print("\n".join(report(done, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
