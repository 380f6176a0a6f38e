"""A sweep's folder: every finished run, speed and pruned architecture as a JSON file, written
the moment it is known, so a killed sweep resumes where it stopped.

    out_dir/config.json       the settings the sweep started with (a resume must use the same; it may add seeds)
    out_dir/teacher.json      the original model's accuracy and weights fingerprint
    out_dir/runs/KEY-sSEED.json   one fine-tuned (candidate, seed): a `RunRecord`
    out_dir/speed/ARCH.json   one architecture's latency against the original
    out_dir/arch/ARCH.json    a pruned candidate's Torch-Pruning ratio (every seed prunes the same channels)
    out_dir/failed/KEY-sSEED.json  a candidate this model cannot take, with the reason

Example:
    >>> import tempfile
    >>> store = SweepStore(tempfile.mkdtemp())
    >>> store.runs(), store.failures(), store.teacher_accuracy()
    ([], [], None)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modify.errors import ModifyError
from modify.io.files import atomic_write_text, check_output_path

__all__ = [
    "RunRecord",
    "SweepStore",
    "fingerprint",
    "load_runs",
    "load_failures",
    "teacher_accuracy",
    "retime",
    "RUN_FORMAT",
]

RUN_FORMAT = "modify.compare_run"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One fine-tuned candidate: what the table and the plot are made of."""

    key: str
    method: str
    label: str
    seed: int
    accuracy_before: float  # test accuracy before fine-tuning (fraction)
    accuracy: float  # after
    macs: int
    params: int
    speedup: float | None  # original / candidate latency, batch 1, one thread (median of rounds); None until measured
    speedup_batch: float | None  # the same at batch `throughput_batch`, every thread
    latency_ms: float | None  # candidate's batch-1 latency
    teacher_latency_ms: float | None  # the original's, measured beside it
    finetune_seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # what building it reported
    arch_key: str = ""  # `Candidate.arch_key`: where its speed is stored

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SweepStore:
    """The files of one sweep folder (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.root = Path(out_dir)

    def create(self) -> None:
        """Makes the folders, after checking the output folder can be written."""
        check_output_path(self.root, kind="folder")  # a folder that cannot be written fails here, not after a run
        for folder in ("runs", "speed", "arch", "failed"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def write(self, relative: str, data: Any) -> None:
        atomic_write_text(self.root / relative, json.dumps(data, indent=1, default=str))

    def run_path(self, key: str, seed: int) -> Path:
        return self.root / "runs" / f"{key}-s{seed}.json"

    def has_speed(self, arch_key: str) -> bool:
        return (self.root / "speed" / f"{arch_key}.json").is_file()

    def stored_ratio(self, arch_key: str) -> float | None:
        """The Torch-Pruning ratio a pruned candidate's first build found, if it has been built."""
        path = self.root / "arch" / f"{arch_key}.json"
        return json.loads(path.read_text())["pruning_ratio"] if path.is_file() else None

    def runs(self) -> list[RunRecord]:
        """Every finished run, in the order they finished, with the speed of its architecture
        where that has been measured."""
        records = []
        for path in sorted((self.root / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime):
            data = json.loads(path.read_text())
            if data.get("format") != RUN_FORMAT:
                continue
            record = RunRecord(**data["record"])
            speed_path = self.root / "speed" / f"{record.arch_key}.json"
            if speed_path.is_file():
                speed = json.loads(speed_path.read_text())
                record = dataclasses.replace(
                    record,
                    speedup=speed["speedup"],
                    speedup_batch=speed["speedup_batch"],
                    latency_ms=speed["latency_ms"],
                    teacher_latency_ms=speed["teacher_latency_ms"],
                )
            records.append(record)
        return records

    def failures(self) -> list[dict[str, Any]]:
        """The candidates the sweep could not build, with the reason ({"label", "error"} each)."""
        folder = self.root / "failed"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def teacher_accuracy(self) -> float | None:
        """The original model's test accuracy the sweep measured, if any."""
        path = self.root / "teacher.json"
        return json.loads(path.read_text())["accuracy"] if path.is_file() else None

    def retime(self) -> int:
        """Forgets every stored speed (the next sweep times all architectures again, together);
        returns how many were dropped."""
        files = list((self.root / "speed").glob("*.json"))
        for f in files:
            f.unlink()
        return len(files)

    def check_config(self, settings: dict[str, Any]) -> None:
        """A sweep resumes only with the settings it started with, but for its seeds: a resume may ask
        for more (the runs already there are kept, config.json then lists every seed asked for)."""
        path = self.root / "config.json"
        asked = json.loads(json.dumps(settings))
        if not path.is_file():
            self.write("config.json", asked)
            return
        stored = json.loads(path.read_text())
        differs = _first_difference({**stored, "seeds": None}, {**asked, "seeds": None})
        if differs is not None:
            name, there, now = differs
            raise ModifyError(
                f"{str(self.root)!r} holds a sweep run with other settings ({path.name}: {name} {there!r} there, "
                f"{now!r} now); resume with the same settings, or choose another output folder."
            )
        seeds = sorted(set(stored.get("seeds", [])) | set(asked.get("seeds", [])))
        if seeds != stored.get("seeds"):
            self.write("config.json", {**stored, "seeds": seeds})

    def check_teacher(self, mark: str) -> bool:
        """Whether the folder already knows its original model; refuses another model's folder."""
        path = self.root / "teacher.json"
        if not path.is_file():
            return False
        known = json.loads(path.read_text()).get("fingerprint")
        if known is not None and known != mark:
            raise ModifyError(
                f"{str(self.root)!r} holds a sweep of another model (weights fingerprint {known}, this one {mark}); "
                "choose another output folder."
            )
        return known is not None


def _first_difference(there: Any, now: Any, name: str = "") -> tuple[str, Any, Any] | None:
    """The first setting (dotted name, sorted) whose value differs between two JSON settings, if any.

    >>> _first_difference({"epochs": 1, "finetune": {"lr": 0.02}}, {"epochs": 1, "finetune": {"lr": 0.1}})
    ('finetune.lr', 0.02, 0.1)
    """
    if isinstance(there, dict) and isinstance(now, dict):
        for key in sorted(set(there) | set(now)):
            found = _first_difference(there.get(key), now.get(key), f"{name}.{key}" if name else key)
            if found is not None:
                return found
        return None
    return None if there == now else (name, there, now)


def load_runs(out_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """Every finished run stored under ``out_dir`` (`SweepStore.runs`)."""
    return SweepStore(out_dir).runs()


def load_failures(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The candidates a sweep could not build (`SweepStore.failures`)."""
    return SweepStore(out_dir).failures()


def teacher_accuracy(out_dir: str | os.PathLike[str]) -> float | None:
    """The original model's test accuracy the sweep under ``out_dir`` measured, if any."""
    return SweepStore(out_dir).teacher_accuracy()


def retime(out_dir: str | os.PathLike[str]) -> int:
    """Forgets every stored speed under ``out_dir`` (`SweepStore.retime`)."""
    return SweepStore(out_dir).retime()


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers: which model a sweep folder belongs to."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
