"""How long `modify.convert` takes on torchvision ResNet50 (target: under 2 s on a 2-core CPU).

Run: python benchmarks/convert_time.py [--model resnet50] [--repeats 5]
Times the whole conversion (trace + shape propagation + discovery + planning + surgery) of a
freshly built model, several times, and prints each run, the median and the stage split of the
last run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--recipe", default="every_other")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import modify
    from modify.conversion.discover import find_blocks
    from modify.conversion.plan import plan
    from modify.conversion.tracing import trace

    model = modify.get_model(args.model)
    modify.convert(model, recipe=args.recipe)  # warm-up: imports, first-call caches
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = modify.convert(model, recipe=args.recipe)
        times.append(time.perf_counter() - start)
    t0 = time.perf_counter()
    gm = trace(model)
    t1 = time.perf_counter()
    sites = find_blocks(gm)
    t2 = time.perf_counter()
    plan(sites, recipe=args.recipe)
    t3 = time.perf_counter()
    print(
        f"model {args.model}, recipe {args.recipe}, {len(result.converted)} blocks converted, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("runs (s): " + " ".join(f"{t:.2f}" for t in times))
    print(f"median conversion time: {statistics.median(times):.2f} s")
    print(f"stages of one run (s): trace+shapes {t1 - t0:.2f}, discover {t2 - t1:.2f}, plan {t3 - t2:.3f}")


if __name__ == "__main__":
    main()
