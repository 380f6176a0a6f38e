"""A plan as the user keeps it: a version-2 recipe, every block on a line of its own, each
commented with what was measured for it, readable and editable by hand.

`modify convert MODEL --recipe plan.yaml` applies it (the comments are ignored; change an action
or a k and convert again). The file lists every block the planner could change, kept ones
included, so an edit is a change of one word.

Example of what it writes::

    # modify plan for resnet18_fmnist.pt: 1.50x at batch 1, 1 thread, eager, 32x32
    # measured 1.53x (the summed savings predicted 1.56x); the original takes 7.81 ms
    # KL to the original on 1024 held-out training images: 0.0412 (the blocks alone, summed: 0.0351); top-1 agreement 98.1%
    # per block: saving alone (ms, +- half the interquartile range of the rounds), KL alone, and the runner-up
    version: 2
    mod: {form: branch, fusion: original, order: score, scale: true, reduction: 16, selection: static}
    init: importance
    zero_update: false
    rules:
    - {name: layer1.1, action: narrow, fraction: 0.25}  # 0.41 +- 0.02 ms, KL 0.0031; runner-up static MoD k=16 (+0.0020)
"""  # noqa: E501 (the example shows a line of the file as it is written)

from __future__ import annotations

import yaml

from modify.study.planner import PlanResult

__all__ = ["plan_yaml"]


def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def plan_yaml(result: PlanResult, *, model: str = "the model") -> str:
    """The plan of ``result`` as commented YAML (see the module docstring)."""
    config = result.config
    lines = [
        f"# modify plan for {model}: {config.speedup:g}x at {config.setting.describe()}",
        f"# measured {result.measured_speedup:.2f}x (the summed savings predicted {result.predicted_speedup:.2f}x); "
        f"the original takes {result.original_ms:.2f} ms"
        + ("" if result.met else "; BELOW THE TARGET: nothing faster was found"),
        f"# KL to the original on {config.calib_images} held-out "
        f"training images: {result.measured_kl:.4f} (the blocks alone, "
        f"summed: {result.predicted_kl:.4f}); top-1 agreement {100 * result.measured_agreement:.1f}%",
        "# per block: saving alone (ms, +- half the interquartile range of the rounds), KL alone, and the runner-up",
        f"version: {result.recipe['version']}",
        f"mod: {_flow(result.recipe['mod'])}",
        f"init: {config.init}",
        f"zero_update: {'true' if config.zero_update else 'false'}",
        "rules:",
    ]
    runner = {block: (label, extra) for block, label, extra in result.runner_up}
    rules = []
    for row in result.chosen:
        rule = row.choice.rule(row.channels) if row.action != "keep" else {"name": row.block, "action": "keep"}
        label, extra = runner.get(row.block, ("-", None))
        extra_text = f" ({extra:+.4f})" if extra is not None else ""
        note = (
            f"{row.saving_ms or 0.0:.2f} +- {row.spread_ms or 0.0:.2f} "
            f"ms, KL {row.kl or 0.0:.4f}; runner-up {label}{extra_text}"
        )
        rules.append((f"- {_flow(rule)}", note))
    width = max(len(text) for text, _ in rules)
    lines += [f"{text.ljust(width)}  # {note}" for text, note in rules]
    return "\n".join(lines) + "\n"
