"""Live rich progress bars for the long commands: fine-tuning, the sweep and the planner, each
passed to the library as its callback and drawn on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from modify.cli.render.console import error_console

if TYPE_CHECKING:
    from modify.train.finetune import StepInfo

__all__ = ["FinetuneProgress", "SweepProgress", "PlanProgress"]


class _LiveBars:
    """What the bars share: a description, a bar, done of total, ``middle`` columns, the elapsed
    time (and ``tail`` columns), on stderr, kept after they stop; a context manager."""

    def __init__(self, *middle: object, tail: tuple[object, ...] = ()) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            *middle,
            TimeElapsedColumn(),
            *tail,
            console=error_console(),
            transient=False,
        )

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class FinetuneProgress(_LiveBars):
    """A rich progress bar for `modify.train.finetune.finetune`: pass ``update`` as ``on_step``."""

    def __init__(self, total_steps: int, description: str = "fine-tuning") -> None:
        from rich.progress import TextColumn, TimeRemainingColumn

        super().__init__(
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[rate]} img/s"),
            tail=(TimeRemainingColumn(),),
        )
        self.task = self.progress.add_task(description, total=total_steps, loss="-", acc="-", rate="-")
        self._accuracy: list[float] = []

    def update(self, info: StepInfo) -> None:
        # The accuracy shown is over the last 20 steps: one batch is too noisy to read.
        self._accuracy = (self._accuracy + [info.accuracy])[-20:]
        acc = sum(self._accuracy) / len(self._accuracy)
        self.progress.update(
            self.task,
            completed=info.step,
            total=info.total_steps,
            loss=f"{info.loss:.4f}",
            acc=f"{100 * acc:.1f}%",
            rate=f"{info.images_per_second:.1f}",
        )


class SweepProgress(_LiveBars):
    """Two rich bars for `modify.study.sweep.run_sweep`: configurations, and the steps of the one
    being fine-tuned. Pass ``event`` as ``on_event``."""

    def __init__(self, runs: int, done: int = 0) -> None:
        from rich.progress import TextColumn

        super().__init__(TextColumn("{task.fields[note]}"))
        self.sweep = self.progress.add_task("configurations", total=runs, completed=done, note="")
        self.steps = self.progress.add_task("fine-tuning", total=1, note="")
        self.warned: set[str] = set()

    def event(self, kind: str, info: dict) -> None:
        if kind == "start":
            self.progress.reset(self.steps, total=1, note=f"{info['label']} (seed {info['seed']})")
        elif kind == "step":
            self.progress.update(
                self.steps, completed=info["step"], total=info["total_steps"], note=f"loss {info['loss']:.3f}"
            )
        elif kind == "done":
            self.progress.advance(self.sweep)
            self.progress.update(self.sweep, note=f"last: {info['label']} {100 * info['accuracy']:.2f}%")
        elif kind == "speed":
            self.progress.update(
                self.steps, note=f"timed {info['label']}: {info['speedup']:.2f}x ± {info.get('spread', 0.0):.2f}"
            )
            warning = info.get("warning")
            if warning and warning not in self.warned:  # the architectures timed together share one
                self.warned.add(warning)
                self.progress.console.print(f"[bold yellow]warning:[/] timing: {warning}", highlight=False)


class PlanProgress(_LiveBars):
    """rich bars for `modify.study.planner.plan`: timing the choices (by block), scoring them,
    measuring the plan. Pass ``event`` as ``on_event``."""

    _NAMES = {
        "timing": "timing the choices",
        "scoring": "scoring the choices",
        "families": "each action's own plan",
        "finalists": "fine-tuning the finalists",
    }

    def __init__(self) -> None:
        from rich.progress import TextColumn

        super().__init__(TextColumn("{task.fields[note]}"))
        self.task: object | None = None

    def event(self, kind: str, info: dict) -> None:
        if kind == "stage" and info["name"] in self._NAMES:
            note = info.get("setting", "")
            self.task = self.progress.add_task(self._NAMES[info["name"]], total=info["total"], note=note)
        elif kind == "timed" and self.task is not None:
            self.progress.advance(self.task, 1)
            self.progress.update(self.task, note=f"last: {info['block']}")
        elif kind == "scored" and self.task is not None:
            self.progress.advance(self.task, 1)
            self.progress.update(self.task, note=f"{info['key']}: KL {info['kl']:.4f}")
        elif kind == "family" and self.task is not None:
            self.progress.advance(self.task, 1)
            speed = info["speedup"]
            self.progress.update(self.task, note=f"measured {speed:.2f}x" if speed else "out of reach alone")
        elif kind == "finalist" and self.task is not None:
            self.progress.advance(self.task, 1)
            tuned = info["tuned_kl"]
            self.progress.update(
                self.task,
                note=f"{info['source']}: " + (f"KL {tuned:.4f}" if tuned is not None else "below the target"),
            )
        elif kind == "attempt":
            self.progress.console.print(
                f"plan measured {info['measured_speedup']:.2f}x (predicted {info['predicted_speedup']:.2f}x)",
                highlight=False,
            )
