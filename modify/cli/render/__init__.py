"""Rich rendering of the library's records; the only package of `modify` that imports rich
(`console`: the two consoles, `tables`: the records as tables, `progress`: live progress bars).
The commands import it inside their functions, so `modify --help` loads no rich."""

from __future__ import annotations

from modify.cli.render.console import (
    console as console,
    error_console as error_console,
)
from modify.cli.render.progress import (
    FinetuneProgress as FinetuneProgress,
    PlanProgress as PlanProgress,
    SweepProgress as SweepProgress,
)
from modify.cli.render.tables import (
    bench_lines as bench_lines,
    bench_table as bench_table,
    blocks_table as blocks_table,
    compare_table as compare_table,
    conversion_tables as conversion_tables,
    finalists_table as finalists_table,
    finetune_table as finetune_table,
    models_table as models_table,
    plan_summary as plan_summary,
    plan_table as plan_table,
    profile_tables as profile_tables,
    reasons_text as reasons_text,
    routes_table as routes_table,
    short_reason as short_reason,
    sweep_table as sweep_table,
)

__all__ = [
    "console",
    "error_console",
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
    "finalists_table",
    "plan_summary",
    "FinetuneProgress",
    "SweepProgress",
    "PlanProgress",
]
