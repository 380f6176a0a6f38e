"""Static channel pruning with Torch-Pruning (``pip install 'modify[baselines]'``).

The second thing a user would try instead of a conversion: remove the least important channels
of every layer for good, with Torch-Pruning's dependency graph keeping the residual groups
consistent. `prune_channels` prunes a copy of the model to a MAC ratio, or to a speed-up measured
on this machine (batch 1, one thread, interleaved with the original), by bisection on
Torch-Pruning's per-layer pruning ratio. Channel counts are rounded to multiples of ``round_to``.

The pruned model records its new layer shapes, so `modify.save` / `modify.load` rebuild it from
the base architecture without pickling and without Torch-Pruning.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from modify.errors import ConversionError, ModifyError, first_line
from modify.io import provenance

__all__ = ["PruningResult", "prune_channels", "reshape_like", "replay", "require_torch_pruning", "BASELINES_HINT"]

BASELINES_HINT = "pip install 'modify[baselines]'"
# The layer attributes Torch-Pruning changes, per layer type; enough to rebuild the pruned layers.
_SHAPE_ATTRIBUTES = (
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "in_features",
    "out_features",
    "num_channels",
    "num_parameters",
    "normalized_shape",
    "embed_dim",
)


@dataclasses.dataclass(frozen=True)
class PruningResult:
    """What `prune_channels` did.

    Example:
        >>> import torchvision
        >>> result = prune_channels(torchvision.models.resnet18(num_classes=10), macs_ratio=2.0, input_size=32)
        >>> 1.9 < result.macs_ratio < 2.1, result.model.layer1[0].conv1.out_channels % 8
        (True, 0)
    """

    model: nn.Module  # the pruned copy
    pruning_ratio: float  # Torch-Pruning's per-layer channel ratio that reached the target
    macs: int  # MACs after pruning (Torch-Pruning's counter, at the example input)
    macs_before: int
    params: int
    params_before: int
    target: str  # "macs_ratio=2.0", "speedup=1.6" or "ratio=0.3"
    speedup: float | None = None  # measured batch-1 / one-thread speed-up, when the target was one
    importance: str = "magnitude"
    round_to: int | None = 8

    @property
    def macs_ratio(self) -> float:
        return self.macs_before / max(1, self.macs)

    @property
    def converted(self) -> tuple[()]:  # no MoD blocks
        return ()


def require_torch_pruning() -> Any:
    """The torch_pruning module; a `ModifyError` with the line that installs it where it is missing."""
    try:
        import torch_pruning
    except ImportError:
        raise ModifyError(f"static channel pruning needs Torch-Pruning: {BASELINES_HINT}") from None
    return torch_pruning


def _importance(tp: Any, name: str) -> Any:
    choices = {
        "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "bn": lambda: tp.importance.BNScaleImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if name not in choices:
        raise ModifyError(f"importance={name!r} is not known; choose one of {sorted(choices)}.")
    return choices[name]()


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (or 1x1 conv) layer: its outputs are the classes, never pruned."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:] if last else []


def _prune_copy(
    model: nn.Module,
    x: torch.Tensor,
    ratio: float,
    *,
    importance: str,
    round_to: int | None,
    ignored: Collection[str] | None,
    global_pruning: bool,
) -> nn.Module:
    tp = require_torch_pruning()
    pruned = copy.deepcopy(model).eval()
    names = dict(pruned.named_modules())
    unknown = [n for n in ignored or () if n not in names]
    if unknown:
        raise ConversionError(f"prune_channels: ignored_layers names {unknown[0]!r}, which the model does not have.")
    skip = [names[n] for n in ignored] if ignored is not None else _classifier(pruned)
    if ratio > 0:
        try:
            pruner = tp.pruner.MetaPruner(
                pruned,
                x,
                importance=_importance(tp, importance),
                pruning_ratio=ratio,
                ignored_layers=skip,
                round_to=round_to,
                global_pruning=global_pruning,
            )
            pruner.step()
        except ModifyError:
            raise
        except Exception as e:
            raise ConversionError(
                f"Torch-Pruning could not prune {type(model).__name__} at ratio {ratio:.3f}: {first_line(e)}. "
                "Name the layers it cannot handle in ignored_layers=."
            ) from e
    return pruned


def _count(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    macs, params = require_torch_pruning().utils.count_ops_and_params(model, x)
    return int(macs), int(params)


def _measured_speedup(model: nn.Module, original: nn.Module, x: torch.Tensor, rounds: int, seconds: float) -> float:
    from modify.measure.benchmark import BenchCase, bench

    report = bench(
        model,
        original,
        cases=[BenchCase(batch_size=1, threads=1)],
        input_size=x.shape[-1],
        rounds=rounds,
        min_run_time=seconds,
    )
    return report.results[0].speedup


def prune_channels(
    model: nn.Module,
    *,
    macs_ratio: float | None = None,
    speedup: float | None = None,
    ratio: float | None = None,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_size: int = 224,
    importance: str = "magnitude",
    round_to: int | None = 8,
    ignored_layers: Collection[str] | None = None,
    global_pruning: bool = False,
    bench_rounds: int = 3,
    bench_seconds: float = 0.2,
    tolerance: float = 0.02,
) -> PruningResult:
    """Prunes a copy of ``model`` to ``macs_ratio`` (MACs before / after) or to a measured ``speedup``.

    Args:
        model: a CNN Torch-Pruning can trace; left untouched (its mode too).
        macs_ratio: the target MAC ratio, > 1.
        speedup: instead, the target speed-up at batch 1 on one thread, measured here.
        ratio: instead, Torch-Pruning's per-layer pruning ratio itself, in [0, 1) (no search):
            rebuilds the architecture an earlier search found.
        example_inputs: the input for Torch-Pruning's graph and the counts (default a random
            (1, 3, input_size, input_size) image).
        importance: how channels are ranked: ``"magnitude"`` (L2 of the weights, the default),
            ``"l1"``, ``"bn"`` (BatchNorm scales) or ``"random"``.
        round_to: keep channel counts multiples of this (8: fast kernels); None for any count.
        ignored_layers: qualified names of layers never pruned (default: the last classifier layer).
        global_pruning: rank channels across layers instead of the same ratio in every layer.
        bench_rounds, bench_seconds: latency measurement per bisection step (``speedup`` only).
        tolerance: stop when the target is met within this relative error.

    Raises:
        ModifyError: Torch-Pruning is not installed (with the install line), or a bad target.
    """
    if sum(v is not None for v in (macs_ratio, speedup, ratio)) != 1:
        raise ConversionError("prune_channels: give exactly one of macs_ratio=, speedup= and ratio=.")
    if ratio is not None and not 0 <= ratio < 1:
        raise ConversionError(
            f"prune_channels: ratio={ratio} must lie in [0, 1) (the share of channels removed per layer)."
        )
    goal = macs_ratio if macs_ratio is not None else speedup
    if goal is not None and not goal > 1:
        which = "macs_ratio" if macs_ratio is not None else "speedup"
        raise ConversionError(f"prune_channels: {which}={goal} must be above 1 (1 = the unpruned model).")
    from modify.conversion.tracing import inputs_for

    x = inputs_for(model, example_inputs, input_size)[0]
    was_training = model.training
    model.eval()
    try:
        return _prune(
            model,
            x,
            macs_ratio,
            speedup,
            ratio,
            importance,
            round_to,
            ignored_layers,
            global_pruning,
            bench_rounds,
            bench_seconds,
            tolerance,
        )
    finally:
        model.train(was_training)  # the caller's model keeps its mode


def _prune(
    model: nn.Module,
    x: torch.Tensor,
    macs_ratio: float | None,
    speedup: float | None,
    ratio: float | None,
    importance: str,
    round_to: int | None,
    ignored_layers: Collection[str] | None,
    global_pruning: bool,
    bench_rounds: int,
    bench_seconds: float,
    tolerance: float,
) -> PruningResult:
    goal = macs_ratio if macs_ratio is not None else speedup
    macs_before, params_before = _count(model, x)

    def pruned_at(r: float) -> nn.Module:
        return _prune_copy(
            model, x, r, importance=importance, round_to=round_to, ignored=ignored_layers, global_pruning=global_pruning
        )

    def measure(r: float) -> tuple[nn.Module, float]:
        pruned = pruned_at(r)
        if macs_ratio is not None:
            return pruned, macs_before / max(1, _count(pruned, x)[0])
        return pruned, _measured_speedup(pruned, model, x, bench_rounds, bench_seconds)

    low, high = 0.0, 0.95
    best: tuple[float, nn.Module, float] | None = None
    if ratio is not None:
        best = (ratio, pruned_at(ratio), float("nan"))
    for _ in range(12 if ratio is None else 0):
        mid = (low + high) / 2
        pruned, reached = measure(mid)
        if best is None or abs(reached - goal) < abs(best[2] - goal):
            best = (mid, pruned, reached)
        if abs(reached - goal) <= tolerance * goal:
            break
        low, high = (mid, high) if reached < goal else (low, mid)
    assert best is not None
    ratio, pruned, reached = best
    macs, params = _count(pruned, x)
    _record_shapes(pruned, model)
    target = (
        f"macs_ratio={macs_ratio:g}"
        if macs_ratio is not None
        else f"speedup={speedup:g}"
        if speedup is not None
        else f"ratio={ratio:g}"
    )
    return PruningResult(
        pruned,
        ratio,
        macs,
        macs_before,
        params,
        params_before,
        target,
        speedup=reached if speedup is not None else None,
        importance=importance,
        round_to=round_to,
    )


def _record_shapes(pruned: nn.Module, original: nn.Module) -> None:
    """Stores on ``pruned`` what differs from ``original``: layer attributes and tensor shapes."""
    before = dict(original.named_modules())
    attributes: dict[str, dict[str, int]] = {}
    for name, module in pruned.named_modules():
        base = before.get(name)
        changed = {
            a: getattr(module, a)
            for a in _SHAPE_ATTRIBUTES
            if hasattr(module, a) and base is not None and getattr(base, a, None) != getattr(module, a)
        }
        if changed:
            attributes[name] = changed
    base_state = original.state_dict()
    shapes = {
        k: list(v.shape) for k, v in pruned.state_dict().items() if k in base_state and base_state[k].shape != v.shape
    }
    provenance.record(pruned, "prune", {"attributes": attributes, "shapes": shapes}, base=original)


def reshape_like(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Gives ``model`` (the base architecture) the pruned shapes ``record`` holds, in place, so a
    pruned state_dict loads into it strictly. The new tensors are empty: load weights next."""
    modules = dict(model.named_modules())
    for name, changed in record.get("attributes", {}).items():
        if name not in modules:
            raise ModifyError(f"the pruning record names the layer {name!r}, which the base model does not have.")
        for attribute, value in changed.items():
            setattr(modules[name], attribute, tuple(value) if attribute == "normalized_shape" else value)
    for key, shape in record.get("shapes", {}).items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is None:
            raise ModifyError(f"the pruning record names the tensor {key!r}, which the base model does not have.")
        old = getattr(module, leaf)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(leaf, new)
    return model


def replay(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """A recorded pruning (a `modify.io.provenance` step) on the rebuilt model: its shapes, then
    the history; the weights come afterwards."""
    return provenance.record(reshape_like(model, data), "prune", data)
