"""The sweep's records as a verdict: a table, a trade-off plot, and what a user should pick.

Seeds are averaged per candidate (mean accuracy, with the half range over seeds as the spread);
speed is the candidate's measured batch-1 / one-thread speed-up against the teacher. A candidate
is on its method's Pareto frontier when no candidate of that method is both at least as fast and
more accurate. MoD is judged against the best deletion or pruning candidate within
``window`` (0.05x) of its speed-up.

Example:
    >>> rows = summarize([_demo("mod", "m", 0.90, 1.5), _demo("delete", "d", 0.88, 1.52)])
    >>> [(r.label, r.frontier) for r in rows.rows], round(rows.matches[0].margin, 3)
    ([('m', True), ('d', True)], 0.02)
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modify.study.store import RunRecord

__all__ = ["Row", "Match", "PlanMatch", "Summary", "summarize", "write_report", "markdown_table", "recommendation"]

SPEED_RANGE = (1.3, 2.0)  # the speed-ups a conversion is for


@dataclasses.dataclass(frozen=True)
class Row:
    """One candidate, its seeds averaged."""

    key: str
    method: str
    label: str
    accuracy: float  # mean test accuracy after fine-tuning over seeds (fraction)
    spread: float  # half the range over seeds (0 for one seed)
    accuracies: tuple[float, ...]  # per seed, in seed order
    seeds: tuple[int, ...]
    accuracy_before: float  # mean before fine-tuning
    speedup: float  # batch 1, one thread
    speedup_batch: float | None  # batch 32, every thread
    macs: int
    params: int
    train_seconds: float = 0.0  # mean fine-tuning time, block-local distillation included
    frontier: bool = False  # on its method's Pareto frontier


@dataclasses.dataclass(frozen=True)
class Match:
    """A MoD candidate against the best baseline at its speed."""

    mod: str  # label of the MoD candidate
    speedup: float
    baseline: str | None  # label of the best deletion / pruning candidate within the window
    baseline_speedup: float | None
    margin: float  # MoD accuracy - baseline accuracy (fraction; nan without a baseline)
    spread: float  # the larger seed spread of the two


@dataclasses.dataclass(frozen=True)
class PlanMatch:
    """A planned row against the most accurate deletion or pruning row measuring at least its speed."""

    plan: str  # label of the planned row ("plan 1.5x")
    speedup: float
    accuracy: float
    spread: float
    baseline: str | None  # the most accurate delete / prune row with speed-up >= the plan's
    baseline_speedup: float | None
    baseline_accuracy: float | None
    margin: float  # plan accuracy - baseline accuracy (nan without a baseline)


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: tuple[Row, ...]
    matches: tuple[Match, ...]
    teacher_accuracy: float | None
    window: float
    plans: tuple[PlanMatch, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "teacher_accuracy": self.teacher_accuracy,
            "window": self.window,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "matches": [dataclasses.asdict(m) for m in self.matches],
            "plans": [dataclasses.asdict(m) for m in self.plans],
        }


def _demo(method: str, label: str, accuracy: float, speedup: float) -> RunRecord:
    """A one-seed record for the examples."""
    return RunRecord(label, method, label, 0, accuracy, accuracy, 1, 1, speedup, None, 1.0, speedup, 0.0)


def _rows(records: Sequence[RunRecord]) -> list[Row]:
    by_key: dict[str, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    # Only the seeds every candidate has finished are averaged: a sweep stopped half-way through
    # its second seed compares like with like.
    common = set.intersection(*({r.seed for r in runs} for runs in by_key.values())) if by_key else set()
    rows = []
    for key, runs in by_key.items():
        runs = sorted((r for r in runs if r.seed in common), key=lambda r: r.seed)
        if not runs:
            continue
        accs = tuple(r.accuracy for r in runs)
        first = runs[0]
        seconds = statistics.fmean(
            r.finetune_seconds + float(r.details.get("block_distill_seconds", 0.0)) for r in runs
        )
        rows.append(
            Row(
                key,
                first.method,
                first.label,
                statistics.fmean(accs),
                (max(accs) - min(accs)) / 2,
                accs,
                tuple(r.seed for r in runs),
                statistics.fmean(r.accuracy_before for r in runs),
                first.speedup,
                first.speedup_batch,
                first.macs,
                first.params,
                seconds,
            )
        )
    return rows


def _mark_frontier(rows: list[Row]) -> list[Row]:
    out = []
    for row in rows:
        same = [r for r in rows if r.method == row.method and r is not row]
        dominated = any(r.speedup >= row.speedup and r.accuracy > row.accuracy for r in same)
        out.append(dataclasses.replace(row, frontier=not dominated))
    return out


def summarize(records: Sequence[RunRecord], *, teacher_accuracy: float | None = None, window: float = 0.05) -> Summary:
    """Averages seeds, marks each method's frontier and matches every MoD candidate against the
    best baseline within ``window`` of its speed-up. Records not yet timed are left out."""
    rows = _mark_frontier(_rows([r for r in records if r.speedup is not None]))
    rows.sort(key=lambda r: (r.method != "mod", r.method, -r.speedup, r.label))
    baselines = [r for r in rows if r.method != "mod"]
    matches = []
    for m in (r for r in rows if r.method == "mod"):
        near = [b for b in baselines if abs(b.speedup - m.speedup) <= window]
        best = max(near, key=lambda b: b.accuracy, default=None)
        matches.append(
            Match(
                m.label,
                m.speedup,
                best.label if best else None,
                best.speedup if best else None,
                m.accuracy - best.accuracy if best else float("nan"),
                max(m.spread, best.spread) if best else m.spread,
            )
        )
    return Summary(tuple(rows), tuple(matches), teacher_accuracy, window, tuple(_plan_matches(rows)))


def _plan_matches(rows: Sequence[Row]) -> list[PlanMatch]:
    """Each planned row against the most accurate deletion or pruning row at least as fast."""
    out = []
    for p in (r for r in rows if r.method == "plan"):
        faster = [b for b in rows if b.method in ("delete", "prune") and b.speedup >= p.speedup]
        best = max(faster, key=lambda b: (b.accuracy, b.speedup), default=None)
        out.append(
            PlanMatch(
                p.label,
                p.speedup,
                p.accuracy,
                p.spread,
                best.label if best else None,
                best.speedup if best else None,
                best.accuracy if best else None,
                p.accuracy - best.accuracy if best else float("nan"),
            )
        )
    return out


def markdown_table(summary: Summary) -> str:
    """The rows as a Markdown table, fastest first within each method."""
    teacher = summary.teacher_accuracy
    lines = [
        "| method | configuration | test acc. (mean ± half range) | vs original | "
        "before FT | speed-up b1/1t | b32/all | MACs | params | train s | frontier |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.rows:
        delta = f"{100 * (r.accuracy - teacher):+.2f}" if teacher is not None else ""
        batch = f"{r.speedup_batch:.2f}x" if r.speedup_batch is not None else ""
        lines.append(
            f"| {r.method} | {r.label} | {100 * r.accuracy:.2f} ± "
            f"{100 * r.spread:.2f} | {delta} | {100 * r.accuracy_before:.1f} "
            f"| {r.speedup:.2f}x | {batch} | {r.macs / 1e6:.1f} M | {r.params / 1e6:.2f} M | {r.train_seconds:.0f} "
            f"| {'*' if r.frontier else ''} |"
        )
    if summary.plans:
        lines += [
            "",
            "| plan | speed-up | accuracy | most accurate delete / prune row "
            "at least as fast | its speed-up | its accuracy | plan - it |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in summary.plans:
            other = (
                f"{m.baseline} | {m.baseline_speedup:.2f}x | {100 * m.baseline_accuracy:.2f}"
                if m.baseline is not None
                else "none as fast | | "
            )
            margin = f"{100 * m.margin:+.2f}" if m.baseline is not None else ""
            lines.append(
                f"| {m.plan} | {m.speedup:.2f}x | {100 * m.accuracy:.2f} ± {100 * m.spread:.2f} | {other} | {margin} |"
            )
    return "\n".join(lines)


def recommendation(summary: Summary) -> list[str]:
    """What a user of this model should pick, in a few sentences, from the measurements."""
    low, high = SPEED_RANGE
    inside = [m for m in summary.matches if low <= m.speedup <= high and m.baseline is not None]
    lines = []
    seeds = len(summary.rows[0].seeds) if summary.rows else 0
    wins = [m for m in inside if m.margin > max(m.spread, 0.0)]
    if wins:
        best = max(wins, key=lambda m: m.margin)
        spread = (
            f"beyond the seed spread ({100 * best.spread:.2f})"
            if seeds > 1
            else "with one seed, so no spread to judge it by: run more seeds"
        )
        lines.append(
            f"MoD wins: {best.mod} at {best.speedup:.2f}x is {100 * best.margin:.2f} points above {best.baseline} "
            f"({best.baseline_speedup:.2f}x), {spread}."
        )
    elif inside:
        best = max(inside, key=lambda m: m.margin)
        lines.append(
            f"MoD does not win on this model: its best match, {best.mod} at {best.speedup:.2f}x, is "
            f"{100 * best.margin:+.2f} points against {best.baseline} ({best.baseline_speedup:.2f}x)."
        )
    else:
        lines.append(
            f"No MoD candidate has a deletion or pruning candidate within {summary.window:.2f}x of its speed-up in "
            f"{low:g}-{high:g}x: add baselines at those speeds to judge it."
        )
    for method in ("delete", "prune", "mod"):
        found = [r for r in summary.rows if r.method == method and low <= r.speedup <= high]
        if found:
            best = max(found, key=lambda r: r.accuracy)
            lines.append(
                f"Most accurate {method} candidate in {low:g}-{high:g}x: {best.label}, "
                f"{100 * best.accuracy:.2f}% at {best.speedup:.2f}x."
            )
    for m in summary.plans:
        if m.baseline is None:
            lines.append(
                f"{m.plan}: {100 * m.accuracy:.2f}% at {m.speedup:.2f}x; no deletion or pruning row is as fast."
            )
        else:
            lines.append(
                f"{m.plan}: {100 * m.accuracy:.2f}% at {m.speedup:.2f}x, "
                f"{100 * m.margin:+.2f} points against {m.baseline} "
                f"({100 * m.baseline_accuracy:.2f}% at {m.baseline_speedup:.2f}x), seed spread {100 * m.spread:.2f}."
            )
    everything = [r for r in summary.rows if low <= r.speedup <= high]
    if everything:
        pick = max(everything, key=lambda r: (r.accuracy, r.speedup))
        lines.append(
            f"Pick: {pick.label} ({pick.method}) for accuracy in that "
            "range; for a given speed, read the plot's frontiers."
        )
    return lines


def plot(summary: Summary, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Accuracy against measured speed-up, one series per method, each frontier drawn as a line."""
    from modify.measure.plots import pyplot, save_png

    plt = pyplot("the comparison plot")
    colors = {"mod": "tab:blue", "delete": "tab:orange", "prune": "tab:green", "mixed": "tab:purple", "plan": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method, color in colors.items():
        rows = [r for r in summary.rows if r.method == method]
        if not rows:
            continue
        ax.errorbar(
            [r.speedup for r in rows],
            [100 * r.accuracy for r in rows],
            yerr=[100 * r.spread for r in rows],
            fmt="o",
            color=color,
            alpha=0.8,
            capsize=2,
            label=method,
        )
        front = sorted((r for r in rows if r.frontier), key=lambda r: r.speedup)
        ax.plot([r.speedup for r in front], [100 * r.accuracy for r in front], "-", color=color, alpha=0.6)
    if summary.teacher_accuracy is not None:
        ax.axhline(100 * summary.teacher_accuracy, color="grey", ls="--", lw=1, label="original")
    ax.set_xlabel("measured speed-up vs the original (batch 1, one thread)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(title or "accuracy vs speed-up (lines: Pareto frontier per method)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def write_report(summary: Summary, out_dir: str | os.PathLike[str], *, title: str = "") -> dict[str, Path]:
    """Writes ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``."""
    from modify.io.files import atomic_write_text

    out = Path(out_dir)
    data = {**summary.as_dict(), "recommendation": recommendation(summary)}
    md = markdown_table(summary) + "\n\n" + "\n".join(f"- {line}" for line in data["recommendation"]) + "\n"
    paths = {
        "json": atomic_write_text(out / "compare.json", json.dumps(data, indent=1)),
        "markdown": atomic_write_text(out / "compare.md", md),
    }
    paths["plot"] = plot(summary, out / "compare.png", title=title)
    return paths
