"""What `modify plan` writes beside each other: the plan (commented YAML, `modify.study.plan_file`),
every number behind it (JSON), and a picture of the choices (PNG): per block, each choice's
measured saving against its measured KL, the chosen one marked.

Example:
    >>> paths_beside("out/plan.yaml")
    {'yaml': PosixPath('out/plan.yaml'), 'json': PosixPath('out/plan.json'), 'png': PosixPath('out/plan.png')}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from modify.study.plan_file import plan_yaml
from modify.study.planner import PlanResult

__all__ = ["paths_beside", "plot_choices", "write_plan"]


def paths_beside(path: str | os.PathLike[str]) -> dict[str, Path]:
    """The plan file and its JSON and PNG, which share its name."""
    p = Path(path)
    return {"yaml": p, "json": p.with_suffix(".json"), "png": p.with_suffix(".png")}


def plot_choices(result: PlanResult, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Saving against KL for every measured choice, one colour per action, the chosen ones ringed."""
    from modify.measure.plots import pyplot, save_png

    plt = pyplot("the plan's plot")
    colors = {"delete": "tab:orange", "mod": "tab:blue", "narrow": "tab:green"}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    chosen = {(r.block, r.action, r.fraction) for r in result.chosen}
    floor = min([r.kl for r in result.rows if r.kl] or [1e-4]) / 2
    for action, color in colors.items():
        rows = [r for r in result.rows if r.action == action and r.error is None]
        if rows:
            ax.scatter(
                [r.saving_ms for r in rows],
                [max(r.kl or 0.0, floor) for r in rows],
                color=color,
                alpha=0.75,
                s=28,
                label=action,
            )
    picked = [r for r in result.rows if (r.block, r.action, r.fraction) in chosen and r.action != "keep"]
    ax.scatter(
        [r.saving_ms for r in picked],
        [max(r.kl or 0.0, floor) for r in picked],
        facecolors="none",
        edgecolors="black",
        s=110,
        linewidths=1.5,
        label="chosen",
    )
    for r in picked:
        ax.annotate(
            f"{r.block} {r.label}",
            (r.saving_ms, max(r.kl or 0.0, floor)),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_yscale("log")
    ax.set_xlabel(f"saving alone (ms), {result.config.setting.describe()}")
    ax.set_ylabel("KL to the original alone, after the cheap repair (nats, log)")
    ax.set_title(
        title or f"choices per block; plan for {result.config.speedup:g}x: measured {result.measured_speedup:.2f}x"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def write_plan(
    result: PlanResult,
    path: str | os.PathLike[str],
    *,
    model: str = "the model",
    force: bool = False,
    plot: bool = True,
) -> dict[str, Path]:
    """Writes the plan's YAML at ``path`` and its JSON and PNG beside it (atomically); returns the paths."""
    from modify.io.files import atomic_write_text

    paths = paths_beside(path)
    atomic_write_text(paths["yaml"], plan_yaml(result, model=model), force=force)
    atomic_write_text(paths["json"], json.dumps(result.as_dict(), indent=1, default=str), force=True)
    if plot:
        plot_choices(result, paths["png"])
    else:
        paths.pop("png")
    return paths
