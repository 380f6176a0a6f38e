"""The library's records as rich tables and lines: profiles, benchmarks, model names, the block
report, fine-tuning, the sweep, routes and plans. Built here, printed by the commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from modify.measure.benchmark import BenchReport
    from modify.measure.profiling import ProfileReport
    from modify.measure.report import BlockRow, ConversionSummary
    from modify.measure.routes import RoutesReport
    from modify.study.planner import PlanResult
    from modify.study.report import Summary
    from modify.train.finetune import FinetuneResult

__all__ = [
    "profile_tables",
    "compare_table",
    "bench_table",
    "bench_lines",
    "models_table",
    "short_reason",
    "blocks_table",
    "reasons_text",
    "conversion_tables",
    "finetune_table",
    "sweep_table",
    "routes_table",
    "plan_table",
    "plan_summary",
]


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f} M"


def _g(value: float) -> str:
    return f"{value / 1e9:,.3f} G"


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


def profile_tables(report: ProfileReport) -> list[Table]:
    """The summary line and the per-block table of one profile."""
    summary = Table(title=f"{report.model} @ {'x'.join(map(str, report.input_shape))}", show_header=False, min_width=60)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("parameters", _m(report.params))
    summary.add_row("MACs", _g(report.macs))
    summary.caption = f"MACs: {report.convention}"
    if report.uncounted:
        summary.add_row("not counted", ", ".join(f"{op} x{n}" for op, n in sorted(report.uncounted.items())))
    timed = report.block_ms is not None and bool(report.latency_ms)
    blocks = Table(title="per block")
    blocks.add_column("block", no_wrap=True)
    if not timed:
        blocks.add_column("type", no_wrap=True)
    blocks.add_column("k / C", justify="right", no_wrap=True)
    if not timed:
        blocks.add_column("params", justify="right", no_wrap=True)
    blocks.add_column("MACs", justify="right", no_wrap=True)
    blocks.add_column("MAC share", justify="right", no_wrap=True)
    if timed:
        summary.add_row("latency", f"{report.latency_ms:.2f} ms (batch {report.input_shape[0]}, one thread)")
        blocks.add_column("ms", justify="right", no_wrap=True)
        blocks.add_column("time share", justify="right", no_wrap=True)
        blocks.add_column("time / MACs", justify="right", no_wrap=True)
        blocks.caption = "time / MACs: share of time over share of MACs; bold rows take time their MACs do not explain"
    for row in report.blocks:
        kc = f"{row.k} / {row.channels}" if row.k is not None else ""
        style = "cyan" if row.type == "MoDBlock" else None
        mac_share = row.macs / report.macs if report.macs else 0.0
        cells = [row.name] + ([] if timed else [row.type]) + [kc] + ([] if timed else [f"{row.params:,}"])
        cells += [f"{row.macs / 1e6:,.2f}M", f"{100 * mac_share:.1f}%"]
        if timed:
            ms = report.block_ms.get(row.name, 0.0)
            time_share = ms / report.latency_ms
            ratio = time_share / mac_share if mac_share > 1e-4 else None
            cells += [f"{ms:.2f}", f"{100 * time_share:.1f}%", f"{ratio:.1f}x" if ratio is not None else "-"]
            if ratio is not None and ratio > 2 and time_share > 0.005:
                style = "bold yellow" if row.type != "MoDBlock" else "bold cyan"
        blocks.add_row(*cells, style=style)
    return [summary, blocks]


def compare_table(report: ProfileReport, other: ProfileReport) -> Table:
    """Two profiles side by side with ratios (other / report: how much smaller ``report`` is)."""
    table = Table(title=f"{report.model} vs {other.model}")
    table.add_column("")
    table.add_column(report.model, justify="right")
    table.add_column(other.model, justify="right")
    table.add_column(f"{other.model} / {report.model}", justify="right")
    table.add_row("parameters", _m(report.params), _m(other.params), _ratio(other.params, report.params))
    table.add_row("MACs", _g(report.macs), _g(other.macs), _ratio(other.macs, report.macs))
    return table


def bench_table(report: BenchReport) -> Table:
    """Median latencies and speed-ups, one row per case; ± is half the interquartile range of the
    per-round speed-ups."""
    engine = "" if report.engine == "eager" else f", {report.engine}"
    table = Table(
        title=f"{report.model} vs {report.baseline} @ {report.input_size[0]}x{report.input_size[1]}, eval, fp32{engine}"
    )
    table.add_column("setting")
    table.add_column(f"{report.model} ms", justify="right")
    table.add_column(f"{report.baseline} ms", justify="right")
    table.add_column("speed-up", justify="right")
    table.add_column("±", justify="right")
    table.add_column("per-round speed-ups", justify="right")
    for r in report.results:
        rounds = " ".join(f"{s:.2f}" for s in r.round_speedups)
        spread = f"{r.spread:.2f}" if len(r.round_speedups) > 1 else "-"
        style = "yellow" if r.warning else None
        table.add_row(
            r.case.label(),
            f"{r.model_median * 1e3:.2f}",
            f"{r.baseline_median * 1e3:.2f}",
            f"{r.speedup:.2f}x",
            spread,
            rounds,
            style=style,
        )
    return table


def bench_lines(report: BenchReport) -> list[str]:
    """What to print under the table: compile times (compiled engines), one line per busy case."""
    lines = []
    if report.engine != "eager":
        for r in report.results:
            lines.append(
                f"{report.engine}, {r.case.label()}: prepared {report.model} in {r.prepare_seconds[0]:.1f} s, "
                f"{report.baseline} in {r.prepare_seconds[1]:.1f} s (not timed)"
            )
    lines += [f"[bold yellow]warning:[/] {w}" for w in report.warnings]
    return lines


def models_table(names: list[str], baselines: dict[str, str]) -> Table:
    table = Table(title="models")
    table.add_column("name")
    table.add_column("compared with (paper)")
    for name in names:
        table.add_row(name, baselines.get(name, ""))
    return table


def _mmac(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:,.1f}M" if value >= 100_000 else f"{value / 1e3:,.1f}K"


def short_reason(reason: str) -> str:
    """The head of a skip reason, for a table cell: up to its first ':' or ' ('.

    Example:
        >>> short_reason("projection shortcut (Conv2d + BatchNorm2d): the first block of a stage keeps its full width")
        'projection shortcut'
    """
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


def blocks_table(label: str, summary: ConversionSummary, *, verbose: bool = False) -> Table:
    """Every residual block: converted with k, or left standard with the reason (its short form
    unless ``verbose``; `reasons_text` lists the long forms once)."""
    table = Table(title=f"residual blocks of {label}", caption=summary.note)
    table.add_column("block", no_wrap=True)
    table.add_column("stage", justify="right", no_wrap=True)  # stage.index
    table.add_column("C", justify="right", no_wrap=True)
    table.add_column("k", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("note", ratio=1)
    for r in summary.rows:
        reason = r.reason or ""
        note = _change_note(r) if r.converted else (reason if verbose else short_reason(reason))
        table.add_row(
            r.name,
            f"{r.stage}.{r.index}",
            str(r.channels),
            str(r.k) if r.converted else "-",
            _mmac(r.macs_before),
            _mmac(r.macs_after) if r.converted else "",
            note,
            style="cyan" if r.converted else "dim",
        )
    return table


def _change_note(row: BlockRow) -> str:
    """What the conversion did to a block: its class for a MoD block, else narrowed or deleted."""
    if row.action == "narrow":
        from fractions import Fraction

        return f"narrowed to {Fraction(row.fraction).limit_denominator(64)}" if row.fraction else "narrowed"
    if row.action == "delete":
        return "deleted (its shortcut)"
    return row.block_type


def reasons_text(summary: ConversionSummary) -> Text | None:
    """Each long skip reason once, with the blocks it applies to; None when every reason is short."""
    by_reason: dict[str, list[str]] = {}
    for r in summary.rows:
        if not r.converted and r.reason and short_reason(r.reason) != r.reason:
            by_reason.setdefault(r.reason, []).append(r.name)
    if not by_reason:
        return None
    text = Text()
    for reason, names in by_reason.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        text.append(f"{shown}: ", style="bold")
        text.append(f"{reason}\n")
    return text


def conversion_tables(label: str, summary: ConversionSummary, *, verbose: bool = False) -> list[Table | Text]:
    """The block table, the long reasons (unless ``verbose`` put them in the table) and the before/after totals."""
    totals = Table(title=f"{label}: before and after")
    totals.add_column("")
    totals.add_column("before", justify="right")
    totals.add_column("after", justify="right")
    totals.add_column("ratio", justify="right")
    totals.add_row(
        "parameters",
        _m(summary.params_before),
        _m(summary.params_after),
        _ratio(summary.params_before, summary.params_after),
    )
    totals.add_row(
        "MACs", _g(summary.macs_before), _g(summary.macs_after), _ratio(summary.macs_before, summary.macs_after)
    )
    n = sum(r.converted for r in summary.rows)
    kinds = {a: sum(r.action == a for r in summary.rows) for a in ("mod", "narrow", "delete")}
    if kinds["narrow"] or kinds["delete"]:
        parts = ", ".join(
            f"{v} {name}"
            for name, v in (("MoD", kinds["mod"]), ("narrowed", kinds["narrow"]), ("deleted", kinds["delete"]))
            if v
        )
        totals.caption = f"{n} of {len(summary.rows)} residual blocks changed: {parts}"
    else:
        totals.caption = f"{n} of {len(summary.rows)} residual blocks converted"
    reasons = None if verbose else reasons_text(summary)
    return [blocks_table(label, summary, verbose=verbose), *([reasons] if reasons is not None else []), totals]


def finetune_table(result: FinetuneResult, output: str | None = None) -> Table:
    """The summary of one fine-tuning run."""
    table = Table(title="fine-tuning", show_header=False, min_width=50)
    table.add_column(style="bold")
    table.add_column(justify="right")
    epochs = "" if result.epochs != result.epochs else f" ({result.epochs:.2f} epochs)"  # nan: no length
    table.add_row("steps", f"{result.steps} / {result.total_steps}{epochs}")
    if result.resumed_from is not None:
        table.add_row("resumed from step", str(result.resumed_from))
    if result.losses:
        table.add_row("loss, first -> last step", f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    table.add_row("train accuracy", f"{100 * result.train_accuracy:.2f}%")
    if result.eval_accuracy_before is not None:
        table.add_row("eval accuracy before", f"{100 * result.eval_accuracy_before:.2f}%")
    if result.eval_accuracy_after is not None:
        table.add_row("eval accuracy after", f"{100 * result.eval_accuracy_after:.2f}%")
    table.add_row("throughput", f"{result.images_per_second:.1f} images/s")
    table.add_row("time", f"{result.seconds:.1f} s ({result.train_seconds:.1f} s training)")
    table.add_row("precision / processes", f"{result.precision} / {result.world_size}")
    if result.checkpoint:
        table.add_row("resumable state", result.checkpoint)
    if output:
        table.add_row("written", output)
    return table


def sweep_table(summary: Summary) -> Table:
    """The comparison, one row per candidate (seeds averaged)."""
    table = Table(
        title="After the same fine-tune: accuracy (± half the seed range) and measured speed-up "
        "(b1: batch 1, one thread; b32: batch 32, every thread); F: on its method's frontier"
    )
    for name, justify in (
        ("method", "left"),
        ("configuration", "left"),
        ("acc. %", "right"),
        ("±", "right"),
        ("b1", "right"),
        ("b32", "right"),
        ("MMAC", "right"),
        ("F", "center"),
    ):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name != "configuration")  # type: ignore[arg-type]
    for r in summary.rows:
        table.add_row(
            r.method,
            r.label,
            f"{100 * r.accuracy:.2f}",
            f"{100 * r.spread:.2f}",
            f"{r.speedup:.2f}x",
            f"{r.speedup_batch:.2f}x" if r.speedup_batch is not None else "",
            f"{r.macs / 1e6:.1f}",
            "*" if r.frontier else "",
        )
    return table


def routes_table(label: str, report: RoutesReport) -> Table:
    """One row per MoD block: how input-dependent its selection is."""
    table = Table(title=f"{label}: channel selections over {report.images} images")
    for name in ("block", "k / C", "entropy", "class divergence", "distinct sets", "never picked", "always picked"):
        table.add_column(name, justify="left" if name == "block" else "right")
    for b in report.blocks:
        table.add_row(
            b.module,
            f"{b.k} / {b.channels}",
            f"{b.entropy:.2f}",
            f"{b.class_divergence:.2f}",
            str(b.distinct_sets),
            str(len(b.never)),
            str(len(b.always)),
        )
    return table


def plan_table(result: PlanResult) -> Table:
    """Per block: the chosen action, its saving and KL alone, and the runner-up (80 columns)."""
    table = Table(
        title=f"plan for {result.config.speedup:g}x ({result.config.setting.describe()})", title_justify="left"
    )
    for name, justify in (
        ("block", "left"),
        ("choice", "left"),
        ("saves ms", "right"),
        ("KL", "right"),
        ("agree", "right"),
        ("runner-up (+KL)", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    runner = {block: (label, extra) for block, label, extra in result.runner_up}
    for r in result.chosen:
        label, extra = runner.get(r.block, ("-", None))
        style = "dim" if r.action == "keep" else ("cyan" if r.action == "mod" else "")
        table.add_row(
            r.block,
            r.label,
            f"{r.saving_ms:.2f}±{r.spread_ms:.2f}",
            f"{r.kl:.4f}",
            f"{100 * r.agreement:.1f}%",
            f"{label}" + (f" ({extra:+.4f})" if extra is not None else ""),
            style=style,
        )
    return table


def finalists_table(result: PlanResult) -> Table:
    """The plans fine-tuned briefly to pick the plan: how each was found, its measured speed-up,
    its KL summed, together after the cheap repair, and after the brief fine-tune (80 columns)."""
    steps = result.config.tune_steps
    margin = f"{100 * result.config.tune_margin:.0f}%"
    title = f"finalists, {steps} steps of fine-tuning: the fastest within {margin} of the least KL"
    table = Table(title=title, title_justify="left", min_width=min(80, len(title)))  # the title on one line
    for name, justify in (
        ("plan", "left"),
        ("speed-up", "right"),
        ("KL sum", "right"),
        ("KL", "right"),
        ("KL tuned", "right"),
        ("", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for f in result.finalists:
        table.add_row(
            f.source,
            f"{f.measured_speedup:.2f}x",
            f"{f.summed_kl:.4f}",
            f"{f.kl:.4f}" if f.kl is not None else "-",
            f"{f.tuned_kl:.4f}" if f.tuned_kl is not None else "below target",
            "picked" if f.picked else "",
            style="bold" if f.picked else ("dim" if f.kl is None else ""),
        )
    return table


def plan_summary(result: PlanResult) -> list[str]:
    """The plan's measured speed-up and KL beside what the sums predicted."""
    met = "" if result.met else " - below the target: nothing faster was found"
    picked = [f for f in result.finalists if f.picked]
    tuned = (
        [
            f"picked from {len(result.finalists)} finalists ({picked[0].source}): KL {picked[0].tuned_kl:.4f} after "
            f"{result.config.tune_steps} steps of fine-tuning"
        ]
        if picked
        else []
    )
    return [
        f"speed-up: measured {result.measured_speedup:.2f}x (±{result.measured_spread:.2f}), predicted by the summed "
        f"savings {result.predicted_speedup:.2f}x; original {result.original_ms:.2f} ms{met}",
        f"KL to the original: {result.measured_kl:.4f} together, "
        f"{result.predicted_kl:.4f} summed over the blocks alone; "
        f"top-1 agreement {100 * result.measured_agreement:.1f}% "
        f"({result.config.calib_images} held-out training images)",
        *tuned,
    ]
