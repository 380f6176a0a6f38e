"""The MoD block's forward before issue 11 against the current one, in one process: the same
models and weights, interleaved rounds, eager PyTorch, batch 1, one thread. The previous forward
is `tests/test_fast_path.py`'s `previous_forward` (which the tests hold bit-identical to the
current one).

Run: python benchmarks/mod_forward_ab.py [--rounds 9]
Prints, for ResNet-18 (10 classes, default recipe) at 32x32 and ResNet50-MoD at 224x224, the
median ms of each forward and the median of the per-round ratios previous / current (> 1: the
current one is faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import modify  # noqa: E402
from modify.layers import MoDBlock  # noqa: E402
from test_fast_path import previous_forward  # noqa: E402

MODELS = {
    "ResNet-18 @32": (
        lambda: modify.convert(torchvision.models.resnet18(num_classes=10), input_size=32).model,
        32,
        200,
    ),
    "ResNet50-MoD @224": (lambda: modify.get_model("resnet50_mod"), 224, 15),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, eager, batch 1, one thread; medians of {args.rounds} interleaved rounds")
    print("| model | previous forward ms | current forward ms | previous / current | max abs difference |")
    print("|---|---|---|---|---|")
    for label, (build, size, reps) in MODELS.items():
        torch.manual_seed(0)
        current = build().eval()
        previous = copy.deepcopy(current)
        for m in previous.modules():
            if isinstance(m, MoDBlock):
                m.forward = types.MethodType(previous_forward, m)
        x = torch.randn(1, 3, size, size)
        times: dict[str, list[float]] = {"previous": [], "current": []}
        with torch.no_grad():
            diff = float((current(x.clone()) - previous(x.clone())).abs().max())
            for _ in range(3):
                current(x.clone()), previous(x.clone())
            for r in range(args.rounds):
                order = (("current", current), ("previous", previous))
                for name, model in order if r % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    for _ in range(reps):
                        model(x)
                    times[name].append((time.perf_counter() - start) / reps * 1e3)
        ratio = statistics.median(p / c for p, c in zip(times["previous"], times["current"], strict=True))
        print(
            f"| {label} | {statistics.median(times['previous']):.2f} | {statistics.median(times['current']):.2f} | "
            f"{ratio:.3f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
