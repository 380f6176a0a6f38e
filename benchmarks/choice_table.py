"""The per-block numbers a plan was solved from, as one Markdown table: for every block and choice
(delete, MoD and narrow at each fraction), the measured saving in ms and the KL to the original
after the choice's cheap repair; the choice with the least KL per ms saved in each block is bold.
Several tables (settings) side by side when given several files.

    python benchmarks/choice_table.py benchmarks/results/plans_r18/table.json
    python benchmarks/choice_table.py b1.json b32.json --names "batch 1, 1 thread" "batch 32, 2 threads"

Reads what `modify plan` writes (its .json, whose "table" holds every choice) or a stored
`ChoiceTable` (compare's OUT/plans/table.json); measures nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load_table(path: str | Path) -> dict[str, Any]:
    raw = json.loads(Path(path).read_text())
    return raw.get("table") or raw


def markdown(table: dict[str, Any], name: str = "") -> str:
    """One table: a row per block, a column per choice, each cell 'saving ms / KL'."""
    rows = [r for r in table["rows"] if r["action"] != "keep"]
    labels: list[str] = []
    for r in rows:
        column = _column(r)
        if column not in labels:
            labels.append(column)
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    setting = table["setting"]
    head = (
        f"{name + ': ' if name else ''}batch {setting['batch']}, {setting['threads']} thread(s), {setting['engine']}, "
        f"{setting['input_size']}x{setting['input_size']}; original {table['original_ms']:.2f} ms. "
        "Cells: saving ms / KL (bold: least KL per ms saved in the block)"
    )
    lines = [head, "", "| block | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for block in blocks:
        cells = {_column(r): r for r in rows if r["block"] == block}
        usable = [r for r in cells.values() if r["error"] is None and (r["saving_ms"] or 0) > 0]
        best = min(usable, key=lambda r: r["kl"] / r["saving_ms"], default=None)
        out = []
        for label in labels:
            r = cells.get(label)
            if r is None:
                out.append("")
            elif r["error"] is not None:
                out.append("not built")
            else:
                text = f"{r['saving_ms']:.2f} / {r['kl']:.4f}"
                out.append(f"**{text}**" if r is best else text)
        lines.append(f"| {block} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _column(row: dict[str, Any]) -> str:
    if row["fraction"] is None:
        return row["action"]
    return f"{'MoD' if row['action'] == 'mod' else row['action']} {_share(row['fraction'])}"


def _share(fraction: float) -> str:
    inverse = 1 / fraction
    return f"C/{inverse:g}" if abs(inverse - round(inverse)) < 1e-9 else f"{fraction:g}C"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="a plan's .json or a stored table.json")
    p.add_argument("--names", nargs="*", default=None, help="one name per table")
    args = p.parse_args(argv)
    names = args.names or [""] * len(args.tables)
    if len(names) != len(args.tables):
        p.error(f"--names gives {len(names)} names for {len(args.tables)} tables")
    print("\n\n".join(markdown(load_table(t), n) for t, n in zip(args.tables, names, strict=True)))


if __name__ == "__main__":
    main(sys.argv[1:])
