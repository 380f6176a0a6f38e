"""How much of a CPU fine-tune glibc's allocator spends in the kernel, and what keeping large
blocks off mmap saves: the same `modify.train.finetune` run in fresh processes, alternately with
the default allocator and with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (freed
activations stay in the heap for the next step instead of going back to the kernel and being
faulted in, zeroed, again), interleaved, medians and ratios printed side by side.

    python benchmarks/cpu_allocator.py --model mobilenet_v2 --input-size 64 --steps 20 --repeats 3
    python benchmarks/cpu_allocator.py --model resnet18 --input-size 32 --threads 2 -o DIR

Each run is one process: build the model (``weights=None``, 10 classes) and a copy as teacher,
distil for ``--steps`` steps of batch 128 on random images, and report wall time per step, user
and system CPU seconds, minor page faults and peak resident memory (getrusage). Random images are
enough here: what the allocator does depends on the tensors' sizes, not their values.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "no-mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)},
}


def worker(model_name: str, input_size: int, steps: int, threads: int) -> dict[str, float]:
    """One fine-tune in this process; its rusage from the first step on (the warm-up step excluded)."""
    import torch
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    from modify.train.finetune import FinetuneConfig, finetune

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None, num_classes=10)
    teacher = copy.deepcopy(model).eval()
    n = 128 * (steps + 1)
    data = TensorDataset(torch.randn(n, 3, input_size, input_size), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=128, shuffle=True, drop_last=True)
    config = FinetuneConfig(lr=0.02, alpha=0.5, temperature=4.0)
    finetune(model, loader, teacher=teacher, steps=1, config=config)  # warm-up, not counted
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finetune(model, loader, teacher=teacher, steps=steps, config=config)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds_per_step": wall / steps,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_faults": float(after.ru_minflt - before.ru_minflt),
        "peak_rss_mb": after.ru_maxrss / 1024,  # Linux reports KiB
    }


def run_once(setting: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, **SETTINGS[setting], "OMP_NUM_THREADS": str(args.threads)}
    for name in SETTINGS["no-mmap"]:
        if name not in SETTINGS[setting]:
            env.pop(name, None)  # "default" means glibc's defaults, whatever this shell set
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--input-size", str(args.input_size)]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2", help="a torchvision classification model")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed fine-tune steps of batch 128 per run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved")
    p.add_argument("-o", "--out", default=None, help="a folder for allocator.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.model, args.input_size, args.steps, args.threads)))
        return
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for r in range(args.repeats):
        for setting in SETTINGS if r % 2 == 0 else reversed(SETTINGS):  # ABBA: drift hits both alike
            runs[setting].append(run_once(setting, args))
            print(f"run {r} {setting}: {runs[setting][-1]}", flush=True)
    medians = {s: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for s, rs in runs.items()}
    print(
        f"\n{args.model} at {args.input_size}x{args.input_size}, batch 128, {args.threads} thread(s), "
        f"{args.steps} steps, median of {args.repeats} runs each"
    )
    print("| setting | s/step | user s | system s | minor faults | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for s, m in medians.items():
        print(
            f"| {s} | {m['seconds_per_step']:.3f} | {m['user_s']:.1f} | {m['system_s']:.1f} | "
            f"{m['minor_faults']:.0f} | {m['peak_rss_mb']:.0f} |"
        )
    base, fast = medians["default"], medians["no-mmap"]
    print(
        f"\nno-mmap / default: time per step {fast['seconds_per_step'] / base['seconds_per_step']:.2f}, "
        f"system CPU {fast['system_s'] / max(base['system_s'], 1e-9):.2f}, "
        f"peak memory {fast['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        record = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "settings": SETTINGS}
        Path(args.out, "allocator.json").write_text(json.dumps({**record, "runs": runs, "medians": medians}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
