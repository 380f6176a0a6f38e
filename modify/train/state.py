"""What a resumable fine-tuning run writes and reads back: the state file (model, optimizer, grad
scaler, step, data position, losses) and the RNG states that make a resumed run draw the same data
order. Written atomically (`modify.io.files`); refused when written by another version or with
another schedule.

Example:
    >>> state = rng_state()
    >>> set_rng_state(state)  # the same draws again
    >>> sorted(k for k in state if k != "cuda")
    ['numpy', 'python', 'torch']
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import torch

from modify.errors import ModifyError
from modify.train.config import FinetuneConfig

__all__ = [
    "STATE_FILE",
    "STATE_FORMAT",
    "STATE_VERSION",
    "SavedRun",
    "rng_state",
    "set_rng_state",
    "seed_all",
    "state_path",
    "read_state",
    "write_state",
    "check_same_run",
]

STATE_FILE = "finetune_state.pt"
STATE_FORMAT = "modify.finetune_state"
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """The state file's content, one field per key (beside ``format`` and ``version``): what a
    fine-tuning run writes every N steps and a resumed run starts from."""

    config: dict[str, Any]  # the run's FinetuneConfig.as_dict(): a resumed run must match its schedule
    total_steps: int  # the steps the run plans
    step: int  # steps done
    epoch: int  # the current epoch, 0-based
    position: int  # batches of the current epoch already used
    epoch_rng: dict[str, Any] | None  # RNG states at the start of the current epoch (its data order)
    rng: dict[str, Any]  # RNG states when the state was written
    model: dict[str, torch.Tensor]  # the model's state_dict, on the CPU
    optimizer: dict[str, Any]  # the optimizer's state_dict
    scaler: dict[str, Any]  # the grad scaler's state_dict
    losses: list[float]  # the loss of every step done
    lrs: list[float]  # the learning rate of every step done
    eval_before: float | None = None  # eval accuracy before the first step (None: no eval data)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _plain_python_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    except ImportError:
        pass
    return state


def _plain_python_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        try:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        except ImportError:
            pass


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def state_path(checkpoint_dir: str | os.PathLike[str]) -> Path:
    return Path(checkpoint_dir) / STATE_FILE


def read_state(path: Path) -> SavedRun:
    """The state file at ``path``; refused when it is not one, or of another version."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModifyError(
            f"cannot read the fine-tuning state {str(path)!r} ({type(e).__name__}); delete it to start afresh."
        ) from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ModifyError(
            f"{str(path)!r} is not a modify fine-tuning state; delete it or choose another checkpoint_dir."
        )
    if state.get("version") != STATE_VERSION:
        raise ModifyError(
            f"{str(path)!r} is a fine-tuning state of version {state.get('version')!r}, this modify writes and resumes "
            f"version {STATE_VERSION}; finish the run with the modify "
            "that started it, or delete the state to start afresh."
        )
    return SavedRun(**{f.name: state.get(f.name) for f in dataclasses.fields(SavedRun)})


_SCHEDULE_FIELDS = ("lr", "min_lr", "warmup", "optimizer", "momentum", "weight_decay", "alpha", "temperature", "seed")


def check_same_run(state: SavedRun, config: FinetuneConfig, total_steps: int, path: Path) -> None:
    """A resumed run has the schedule of the run that wrote ``state``."""
    saved = state.config
    for name in _SCHEDULE_FIELDS:
        now = config.as_dict()[name]
        if saved.get(name) != now:
            raise ModifyError(
                f"the state in {str(path)!r} was written with {name}={saved.get(name)!r}, this run has {name}={now!r}; "
                "resume with the same settings, or drop resume to start afresh."
            )
    if state.total_steps != total_steps:
        raise ModifyError(
            f"the state in {str(path)!r} plans {state.total_steps} steps, this run {total_steps}; "
            "resume with the same epochs/steps and data, or drop resume to start afresh."
        )


def write_state(path: Path, state: SavedRun) -> str:
    """Replaces the state file atomically; returns its path."""
    from modify.io.files import atomic_write

    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(SavedRun)}  # no deep copy of the tensors
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **fields}
    return str(atomic_write(path, lambda tmp: torch.save(payload, tmp), force=True))
