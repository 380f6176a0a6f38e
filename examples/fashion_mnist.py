"""End to end on a real data set: train ResNet-18 on Fashion-MNIST, convert it, fine-tune it back.

    python examples/fashion_mnist.py                       # the full run (60k / 10k images)
    python examples/fashion_mnist.py --train-limit 512 --test-limit 256 --baseline-epochs 1 \\
        --finetune-epochs 0.25 --bench-rounds 1 --bench-time 0.05 --throughput-steps 1   # seconds

1. Trains a torchvision ResNet-18 (10 classes) on the training images: 28x28 grey padded to 32x32
   and repeated to 3 channels (`modify.train.data.fashion_mnist`), SGD, cosine schedule.
2. Converts it with the paper's ``every_other`` recipe (c = 64) and with the milder
   ``late_stages`` (only layer3.1 and layer4.1), each under the three init strategies of
   `modify.conversion.init`, and measures test accuracy before any fine-tuning, as converted and with the
   BatchNorm statistics re-estimated (`modify.train.finetune.recalibrate_bn`, weights unchanged).
3. Fine-tunes one init per recipe (``--finetune-init``) for at most one epoch, distilling from the
   trained original (`modify.train.finetune.finetune`), and measures test accuracy again.
4. Counts MACs and parameters (`modify.profile_model`), times batch-1 latency against the
   original in the same process (`modify.measure.benchmark.bench`), and measures training throughput of
   the original (plain training) and of each converted model (distillation fine-tuning, teacher
   forward included) side by side, interleaved, medians over rounds.
5. Prints one table and the issue's three checks.

Prints; the library does not.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|trace)` is deprecated", category=FutureWarning)

import modify  # noqa: E402
from modify.conversion.init import initialize  # noqa: E402
from modify.errors import ModifyError  # noqa: E402
from modify.io.files import check_output_path  # noqa: E402
from modify.measure.benchmark import BenchCase, bench  # noqa: E402
from modify.train.data import fashion_mnist  # noqa: E402
from modify.train.finetune import FinetuneConfig, distillation_loss, evaluate, finetune, recalibrate_bn  # noqa: E402

RECIPES = {
    "every_other": {"recipe": "every_other"},  # the paper's placement, c = 64
    "late_stages": {"recipe": "late_stages"},  # milder: layer3.1 and layer4.1 only, c = 64
}
INITS = ("scratch", "zero", "importance")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: the Debian package's)"
    )
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--baseline-epochs", type=float, default=1.0, help="epochs of training the original")
    p.add_argument("--baseline-lr", type=float, default=0.1)
    p.add_argument(
        "--baseline", default=None, help="load a trained original from this modify checkpoint instead of training"
    )
    p.add_argument("--save-baseline", default=None, help="write the trained original here (modify checkpoint)")
    p.add_argument(
        "--finetune-epochs", type=float, default=1.0, help="epochs of fine-tuning each converted model (<= 1)"
    )
    p.add_argument(
        "--mild-finetune-epochs",
        type=float,
        default=None,
        help="epochs for the recipes other than every_other (default: --finetune-epochs)",
    )
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument("--finetune-init", choices=INITS, default="zero", help="the init that is fine-tuned")
    p.add_argument(
        "--recal-batches", type=int, default=20, help="batches for the BN-recalibrated accuracy before fine-tuning"
    )
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--recipes", default="every_other,late_stages", help=f"comma-separated, from {sorted(RECIPES)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    p.add_argument("--bench-rounds", type=int, default=7, help="alternating latency rounds per model pair")
    p.add_argument("--bench-time", type=float, default=0.5, help="seconds of timing per model per round")
    p.add_argument("--throughput-steps", type=int, default=3, help="training steps per model per throughput round")
    p.add_argument("--throughput-rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = p.parse_args(argv)
    if args.mild_finetune_epochs is None:
        args.mild_finetune_epochs = args.finetune_epochs
    if max(args.finetune_epochs, args.mild_finetune_epochs) > 1:
        p.error(f"--finetune-epochs {args.finetune_epochs}: the issue allows at most one epoch")
    for name in args.recipes.split(","):
        if name not in RECIPES:
            p.error(f"--recipes: unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_throughput(
    runs: dict[str, tuple[torch.nn.Module, torch.nn.Module | None]],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    rounds: int,
) -> dict[str, float]:
    """Training images/s of each (student, teacher) pair, measured in alternating rounds on copies
    (the real models are not changed): SGD steps on one fixed batch; with a teacher, its forward
    and the distillation loss are part of the step. Returns the median over rounds per name."""
    copies = {n: (copy.deepcopy(s).train(), t) for n, (s, t) in runs.items()}
    optims = {n: torch.optim.SGD(s.parameters(), lr=1e-3, momentum=0.9) for n, (s, _) in copies.items()}

    def step(name: str) -> None:
        student, teacher = copies[name]
        logits = student(images)
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(images)
            loss = 0.5 * distillation_loss(logits, target, 4.0) + 0.5 * loss
        optims[name].zero_grad()
        loss.backward()
        optims[name].step()

    names = list(copies)
    for n in names:  # warm-up
        step(n)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else reversed(names):
            t = time.perf_counter()
            for _ in range(steps):
                step(n)
            rates[n].append(steps * len(images) / (time.perf_counter() - t))
    return {n: statistics.median(v) for n, v in rates.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    for option, path in (("--save-baseline", args.save_baseline), ("--json", args.json)):
        try:  # before the training that would be lost to a path that cannot be written
            if path:
                check_output_path(path, force=True, option=option)
        except ModifyError as e:
            raise SystemExit(f"error: {e}") from None
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_set = fashion_mnist(args.data_dir, split="train", limit=args.train_limit)
    test_set = fashion_mnist(args.data_dir, split="test", limit=args.test_limit)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=args.eval_batch_size)
    calib = torch.stack([train_set[i][0] for i in range(min(256, len(train_set)))])  # (N, 3, 32, 32)
    log(f"Fashion-MNIST: {len(train_set)} training, {len(test_set)} test images; {torch.get_num_threads()} threads")

    # 1. The original.
    if args.baseline:
        original = modify.load(args.baseline)
        base_run = None
        log(f"loaded the original from {args.baseline}")
    else:
        original = modify.get_model("resnet18", num_classes=10)
        cfg = FinetuneConfig(lr=args.baseline_lr, weight_decay=5e-4, alpha=0.0, warmup=0.03, seed=args.seed)
        base_run = finetune(original, train_loader, config=cfg, epochs=args.baseline_epochs)
        log(
            f"trained the original: {base_run.steps} steps, "
            f"{base_run.seconds:.0f} s, {base_run.images_per_second:.1f} img/s"
        )
        if args.save_baseline:
            modify.save(original, args.save_baseline, force=True)
    original.eval()
    acc_original = evaluate(original, test_loader)
    prof_original = modify.profile_model(original, input_size=32)
    log(f"original test accuracy {100 * acc_original:.2f}%")

    rows = [
        {
            "model": "resnet18",
            "init": "-",
            "stage": f"trained {args.baseline_epochs:g} ep" if base_run else "loaded",
            "accuracy": acc_original,
            "macs": prof_original.macs,
            "params": prof_original.params,
            "latency_ms": None,
            "latency_ms_t": None,
            "speedup": 1.0,
            "speedup_t": 1.0,
        }
    ]
    finetuned: dict[str, torch.nn.Module] = {}
    runs: dict[str, dict] = {}
    for name in args.recipes.split(","):
        results = {}
        for init in INITS:
            torch.manual_seed(args.seed)
            result = modify.convert(original, input_size=32, **RECIPES[name])
            initialize(result, init, original=original, data=calib)
            acc = evaluate(result.model, test_loader)
            results[init] = result
            # The same model with its BatchNorm statistics re-estimated (no weight changes), on a copy:
            # most of the drop is the shifted activations statistics after the blocks were replaced.
            recal = copy.deepcopy(result.model)
            recalibrate_bn(recal, train_loader, args.recal_batches)
            acc_recal = evaluate(recal, test_loader)
            rows.append(
                {"model": name, "init": init, "stage": "before FT", "accuracy": acc, "accuracy_recal": acc_recal}
            )
            log(
                f"{name} / {init}: test accuracy before fine-tuning {100 * acc:.2f}%, "
                f"{100 * acc_recal:.2f}% with BN statistics recalibrated on {args.recal_batches} batches"
            )
        result = results[args.finetune_init]
        model = result.model
        cfg = FinetuneConfig(
            lr=args.finetune_lr, alpha=args.alpha, temperature=args.temperature, warmup=0.03, seed=args.seed
        )
        epochs = args.finetune_epochs if name == "every_other" else args.mild_finetune_epochs
        run = finetune(model, train_loader, teacher=original, config=cfg, epochs=epochs)
        acc = evaluate(model, test_loader)
        log(
            f"{name} / {args.finetune_init}: fine-tuned {run.steps} steps in {run.seconds:.0f} s "
            f"({run.images_per_second:.1f} img/s); test accuracy {100 * acc:.2f}%"
        )
        prof = modify.profile_model(model, input_size=32)
        cases = [BenchCase(batch_size=1, threads=1), BenchCase(batch_size=1, threads=args.threads)]
        report = bench(
            model,
            original,
            cases=cases,
            input_size=32,
            rounds=args.bench_rounds,
            min_run_time=args.bench_time,
            labels=(name, "resnet18"),
        )
        one, many = report.results
        log(
            f"{name}: batch-1 latency {one.model_median * 1e3:.2f} vs {one.baseline_median * 1e3:.2f} ms (1 thread), "
            f"{many.model_median * 1e3:.2f} vs {many.baseline_median * 1e3:.2f} ms ({args.threads} threads)"
        )
        rows.append(
            {
                "model": name,
                "init": args.finetune_init,
                "stage": f"after FT {run.epochs:.2g} ep",
                "accuracy": acc,
                "macs": prof.macs,
                "params": prof.params,
                "latency_ms": one.model_median * 1e3,
                "baseline_latency_ms": one.baseline_median * 1e3,
                "speedup": one.speedup,
                "speedup_t": many.speedup,
                "round_speedups": list(one.round_speedups),
            }
        )
        finetuned[name] = model
        runs[name] = {
            "steps": run.steps,
            "seconds": run.seconds,
            "images_per_second": run.images_per_second,
            "first_loss": run.losses[0],
            "last_loss": run.losses[-1],
        }

    # Training throughput side by side: the original trained plainly, each converted model fine-tuned with its teacher.
    x, y = next(iter(train_loader))
    contenders = {"resnet18 (train)": (original, None), **{f"{n} (FT+KD)": (m, original) for n, m in finetuned.items()}}
    throughput = train_throughput(contenders, x, y, steps=args.throughput_steps, rounds=args.throughput_rounds)

    print_table(rows, args)
    print()
    print(
        f"Training throughput, batch {args.batch_size}, {args.threads} threads, interleaved, "
        f"median of {args.throughput_rounds} rounds x {args.throughput_steps} steps (images/s):"
    )
    base = throughput["resnet18 (train)"]
    for n, v in throughput.items():
        print(f"  {n:<26} {v:8.1f}   x{v / base:.2f}")
    if base_run is not None:
        print(
            f"  in the runs above: original training {base_run.images_per_second:.1f} img/s; "
            + "; ".join(f"{n} fine-tuning {r['images_per_second']:.1f} img/s" for n, r in runs.items())
        )
    checks = {}
    if "every_other" in finetuned:
        after = next(r for r in rows if r["model"] == "every_other" and r["stage"].startswith("after"))
        checks = {
            "accuracy within 1.0 point of the original": 100 * (acc_original - after["accuracy"]) <= 1.0,
            "batch-1 CPU speed-up >= 1.4x (1 thread)": after["speedup"] >= 1.4,
            "fine-tuning throughput > original training": throughput["every_other (FT+KD)"] > base,
        }
        print()
        print("The issue's bar, every_other ResNet-18:")
        for text, ok in checks.items():
            print(f"  [{'x' if ok else ' '}] {text}")
    wall = time.perf_counter() - started
    print(f"\nwall time {wall / 60:.1f} min")
    out = {
        "rows": rows,
        "throughput": throughput,
        "runs": runs,
        "checks": checks,
        "wall_seconds": wall,
        "baseline_run": None
        if base_run is None
        else {"steps": base_run.steps, "seconds": base_run.seconds, "images_per_second": base_run.images_per_second},
        "args": vars(args),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    head = (
        f"{'model':<12} {'init':<11} {'stage':<15} {'test acc':>8} {'vs orig':>8} {'BN recal':>8} {'MACs':>9} "
        f"{'params':>8} {'b1 1t ms':>9} {'speed-up':>8} {f'b1 {args.threads}t':>8}"
    )
    print()
    print(head)
    print("-" * len(head))
    orig = rows[0]["accuracy"]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.1f} M" if r.get("macs") else ""
        params = f"{r['params'] / 1e6:.2f} M" if r.get("params") else ""
        lat = r.get("latency_ms") or r.get("baseline_latency_ms")
        lat_s = f"{lat:.2f}" if lat else ""
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        spt = f"{r['speedup_t']:.2f}x" if r.get("speedup_t") else ""
        delta = "" if r is rows[0] else f"{100 * (r['accuracy'] - orig):+.2f}"
        recal = f"{100 * r['accuracy_recal']:.2f}%" if r.get("accuracy_recal") is not None else ""
        print(
            f"{r['model']:<12} {r['init']:<11} {r['stage']:<15} "
            f"{100 * r['accuracy']:7.2f}% {delta:>8} {recal:>8} {macs:>9} "
            f"{params:>8} {lat_s:>9} {sp:>8} {spt:>8}"
        )
    lats = [r["baseline_latency_ms"] for r in rows if r.get("baseline_latency_ms")]
    print(
        "(BN recal: the same model's test accuracy after re-estimating its BatchNorm statistics on "
        f"{args.recal_batches} training batches, weights unchanged)"
    )
    if lats:
        print(
            f"(original's batch-1 latency, 1 thread, measured beside each: {', '.join(f'{v:.2f} ms' for v in lats)}; "
            "speed-up = original / converted, medians of interleaved rounds)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
