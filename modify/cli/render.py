"""Rich rendering of the library's records; the only module of `modify` that imports rich."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from modify.benchmark import BenchReport
    from modify.profiling import ProfileReport

__all__ = ["console", "error_console", "profile_tables", "compare_table", "bench_table", "models_table"]


@cache
def console() -> Console:
    return Console(soft_wrap=False)


@cache
def error_console() -> Console:
    return Console(stderr=True)


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
    blocks = Table(title="per block")
    blocks.add_column("block")
    blocks.add_column("type")
    blocks.add_column("k / C", justify="right")
    blocks.add_column("params", justify="right")
    blocks.add_column("MACs", justify="right")
    blocks.add_column("share", justify="right")
    for row in report.blocks:
        kc = f"{row.k} / {row.channels}" if row.k is not None else ""
        style = "cyan" if row.type == "MoDBlock" else None
        share = f"{100 * row.macs / report.macs:.1f}%" if report.macs else ""
        blocks.add_row(row.name, row.type, kc, f"{row.params:,}", f"{row.macs / 1e6:,.3f} M", share, style=style)
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
    """Median latencies and speed-ups, one row per case."""
    table = Table(title=f"{report.model} vs {report.baseline} @ {report.input_size[0]}x{report.input_size[1]}, eval, fp32")
    table.add_column("setting")
    table.add_column(f"{report.model} ms", justify="right")
    table.add_column(f"{report.baseline} ms", justify="right")
    table.add_column("speed-up", justify="right")
    table.add_column("per-round speed-ups", justify="right")
    for r in report.results:
        rounds = " ".join(f"{s:.2f}" for s in r.round_speedups)
        table.add_row(r.case.label(), f"{r.model_median * 1e3:.2f}", f"{r.baseline_median * 1e3:.2f}", f"{r.speedup:.2f}x", rounds)
    return table


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


def blocks_table(label: str, summary) -> Table:
    """Every residual block: converted with k, or left standard with the reason."""
    table = Table(title=f"residual blocks of {label}", caption=summary.note)
    table.add_column("block", no_wrap=True)
    table.add_column("stage.idx", justify="right", no_wrap=True)
    table.add_column("C", justify="right", no_wrap=True)
    table.add_column("k", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("note", ratio=1)
    for r in summary.rows:
        note = r.block_type if r.converted else (r.reason or "")
        table.add_row(
            r.name, f"{r.stage}.{r.index}", str(r.channels), str(r.k) if r.converted else "-",
            _mmac(r.macs_before), _mmac(r.macs_after) if r.converted else "", note,
            style="cyan" if r.converted else "dim",
        )  # fmt: skip
    return table


def conversion_tables(label: str, summary) -> list[Table]:
    """The block table and the before/after totals."""
    totals = Table(title=f"{label}: before and after")
    totals.add_column("")
    totals.add_column("before", justify="right")
    totals.add_column("after", justify="right")
    totals.add_column("ratio", justify="right")
    totals.add_row("parameters", _m(summary.params_before), _m(summary.params_after), _ratio(summary.params_before, summary.params_after))
    totals.add_row("MACs", _g(summary.macs_before), _g(summary.macs_after), _ratio(summary.macs_before, summary.macs_after))
    n = sum(r.converted for r in summary.rows)
    totals.caption = f"{n} of {len(summary.rows)} residual blocks converted"
    return [blocks_table(label, summary), totals]
