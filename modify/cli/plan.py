"""`modify plan MODEL --speedup 1.5 --data DATA`: the most accurate model at that measured speed,
choosing per block among keep, delete, MoD and narrow; writes the plan as a version-2 recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from modify.cli._common import (
    ENGINE_HELP,
    ENGINES,
    ClassesOpt,
    WeightsOpt,
    check_output,
    fail,
    load_base,
    quiet_torch_logs,
    user_errors,
)

app = typer.Typer()

SpeedupOpt = Annotated[
    float,
    typer.Option("--speedup", help="The speed-up to reach, measured in the setting below (1.5 = 1.5 times faster)."),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Training images: 'fashion-mnist' or an image folder "
        "(ROOT/CLASS/IMG, or ROOT/train/...). Never the test split.",
    ),
]
BatchOpt = Annotated[
    int, typer.Option("--batch", help="Images per forward pass in the setting the speed is for.", min=1)
]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Threads in that setting (0 = every core).", min=0)]
SizeOpt = Annotated[
    int | None, typer.Option("--input-size", help="Image side in that setting (default: the data's).", min=8)
]
EngineOpt = Annotated[str, typer.Option("--engine", help=ENGINE_HELP)]


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise fail(f"{option} {text!r} is not a comma-separated list of numbers (such as 0.5,0.25,0.125).") from None
    if not values:
        raise fail(f"{option} is empty; give at least one value (such as 0.25).")
    return values


def plan_options(
    speedup: float, batch: int, threads: int, engine: str, fractions: str, actions: str, selection: str = "static"
) -> dict[str, Any]:
    """The command line's planning options, checked before anything is loaded."""
    if speedup <= 1.0:
        raise fail(
            f"--speedup {speedup:g} is not above 1; ask for the speed-up "
            "you need, such as --speedup 1.5 (1.5 times faster)."
        )
    if engine not in ENGINES:
        raise fail(f"--engine {engine!r} is not one of {', '.join(ENGINES)}.")
    chosen = tuple(a.strip() for a in actions.split(",") if a.strip())
    unknown = [a for a in chosen if a not in ("delete", "mod", "narrow")]
    if unknown or not chosen:
        raise fail(f"--actions {actions!r}: choose from delete, mod, narrow (comma-separated).")
    from modify.layers.options import Selection  # torch-free: options are checked before anything loads

    if selection not in [m.value for m in Selection]:
        raise fail(
            f"--selection {selection!r}: choose static (one fixed channel set per MoD block) or dynamic "
            "(the paper's per-image Channel Selector)."
        )
    shares = _floats(fractions, "--fractions")
    if any(not 0 < f < 1 for f in shares):
        raise fail(f"--fractions {fractions!r}: each must lie strictly between 0 and 1 (such as 0.5,0.25,0.125).")
    return {
        "speedup": speedup,
        "batch": batch,
        "threads": threads,
        "engine": engine,
        "fractions": shares,
        "actions": chosen,
        "selection": selection,
    }


def run_plan(
    model: str,
    data: str,
    options: dict[str, Any],
    *,
    weights: Path | None,
    num_classes: int | None,
    input_size: int | None,
    data_dir: str | None,
    limit: int | None,
    calib_images: int,
    distill_steps: int,
    rounds: int,
    quiet: bool,
    table: Path | None = None,
    tune_steps: int = 200,
    finalists: int = 4,
) -> tuple[Any, Any, str, Any]:
    """Loads MODEL and the training data, plans with progress; returns (the original, the
    PlanResult, MODEL's label, the training data)."""
    quiet_torch_logs()
    from modify.study.latency import Setting
    from modify.study.planner import PlanConfig, plan
    from modify.train.data import load_dataset

    original, label = load_base(model, weights=str(weights) if weights else None, num_classes=num_classes)
    train = load_dataset(data, split="train", data_dir=data_dir, limit=limit, size=input_size)  # never the test split
    size = int(train[0][0].shape[-1])
    setting = Setting(batch=options["batch"], threads=options["threads"], input_size=size, engine=options["engine"])
    config = PlanConfig.for_selection(
        options["selection"],
        speedup=options["speedup"],
        setting=setting,
        actions=options["actions"],
        fractions=options["fractions"],
        calib_images=calib_images,
        distill_steps=distill_steps,
        rounds=rounds,
        tune_steps=tune_steps,
        finalists=finalists,
    )
    measured = _read_table(table, config) if table is not None else None
    if quiet:
        return (
            original,
            plan(original.eval(), speedup=config.speedup, data=train, config=config, table=measured),
            label,
            train,
        )
    from modify.cli.render import PlanProgress

    with PlanProgress() as bar:
        result = plan(
            original.eval(), speedup=config.speedup, data=train, config=config, table=measured, on_event=bar.event
        )
    return original, result, label, train


def _read_table(path: Path, config: Any) -> Any:
    """The choices an earlier plan measured (its .json), for images of this plan's size; measured in
    another batch, thread count or engine, `plan` times them again and keeps their scores."""
    from modify.errors import PlanError
    from modify.study.planner import ChoiceTable

    try:
        raw = json.loads(Path(path).read_text())
        table = ChoiceTable.from_dict(raw.get("table") or raw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanError(
            f"--table {str(path)!r} holds no measured choices "
            f"({type(e).__name__}); give the .json an earlier plan wrote."
        ) from None
    if table.setting.input_size != config.setting.input_size or table.calib_images != config.calib_images:
        raise PlanError(
            f"--table {str(path)!r} was measured at {table.setting.describe()} "
            f"on {table.calib_images} calibration images, "
            f"not at {config.setting.describe()} on {config.calib_images}; plan again without --table."
        )
    if table.setting != config.setting:
        from modify.cli.render import error_console

        error_console().print(
            f"--table was timed at {table.setting.describe()}: timing its choices again at "
            f"{config.setting.describe()} (their KL is kept)",
            highlight=False,
        )
    return table


@app.command("plan")
@user_errors
def plan_command(
    model: Annotated[
        str,
        typer.Argument(help="The trained model: a modify checkpoint, a torchvision name, timm:NAME or an import path."),
    ],
    speedup: SpeedupOpt,
    data: DataOpt,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The plan (YAML); its JSON and PNG go beside it.")
    ] = Path("plan.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing plan file.")] = False,
    batch: BatchOpt = 1,
    threads: ThreadsOpt = 1,
    input_size: SizeOpt = None,
    engine: EngineOpt = "eager",
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder of the data set files (fashion-mnist: the IDX files).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N training images.", min=2)] = None,
    fractions: Annotated[
        str, typer.Option("--fractions", help="MoD k and narrow widths as shares of C.")
    ] = "0.5,0.25,0.125",
    actions: Annotated[
        str, typer.Option("--actions", help="What a block may become besides kept.")
    ] = "delete,mod,narrow",
    selection: Annotated[
        str,
        typer.Option(
            "--selection",
            help="How MoD blocks pick their k channels: static (the k the block reads most, one set for every "
            "image; measured closer to the original after a brief fine-tune) or dynamic (the paper's per-image "
            "Channel Selector).",
        ),
    ] = "static",
    calib_images: Annotated[
        int, typer.Option("--calib-images", help="Training images held out to score every choice on.", min=1)
    ] = 1024,
    distill_steps: Annotated[
        int, typer.Option("--distill-steps", help="Block-local distillation steps per MoD or narrowed block.", min=0)
    ] = 200,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved timing rounds.", min=1)] = 7,
    tune_steps: Annotated[
        int,
        typer.Option(
            "--tune-steps",
            help="Steps of the brief fine-tune that picks among the finalists (0: the solver's plan).",
            min=0,
        ),
    ] = 200,
    finalists: Annotated[
        int, typer.Option("--finalists", help="Plans meeting the target to fine-tune briefly and pick from.", min=1)
    ] = 4,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print everything as one JSON object instead of the table.")
    ] = False,
    table: Annotated[
        Path | None,
        typer.Option(
            "--table",
            help="Solve from the choices an earlier plan measured (its .json), without scoring them again "
            "(timed again only if it was for another batch, thread count or engine).",
        ),
    ] = None,
) -> None:
    """Plan per block (keep, delete, MoD, narrow) for a speed-up measured on this machine; write the plan."""
    options = plan_options(speedup, batch, threads, engine, fractions, actions, selection)
    quiet_torch_logs()
    from modify.study.plan_report import paths_beside

    for kind, path in paths_beside(output).items():
        check_output(path, force=force or kind != "yaml")  # before anything is timed or trained
    _, result, label, _ = run_plan(
        model,
        data,
        options,
        weights=weights,
        num_classes=num_classes,
        input_size=input_size,
        data_dir=data_dir,
        limit=limit,
        calib_images=calib_images,
        distill_steps=distill_steps,
        rounds=rounds,
        quiet=as_json,
        table=table,
        tune_steps=tune_steps,
        finalists=finalists,
    )
    from modify.study.plan_report import write_plan

    paths = write_plan(result, output, model=label, force=force)
    if as_json:
        typer.echo(
            json.dumps(
                {**result.as_dict(), "model": label, "written": {k: str(v) for k, v in paths.items()}}, default=str
            )
        )
        return
    from modify.cli.render import console, finalists_table, plan_summary, plan_table

    out = console()
    out.print(plan_table(result))
    if result.finalists:
        out.print(finalists_table(result))
    for line in plan_summary(result):
        out.print(line, highlight=False)
    out.print(
        f"wrote {paths['yaml']} (apply: modify convert {model} "
        f"--recipe {paths['yaml']}), {paths['json']}, {paths['png']}",
        highlight=False,
        soft_wrap=True,
    )
