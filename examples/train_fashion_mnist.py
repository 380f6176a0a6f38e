"""Train a torchvision CNN on Fashion-MNIST and save it as a modify checkpoint: the "pretrained
model" that `modify compare` and the README's comparison start from.

    python examples/train_fashion_mnist.py --model resnet18 --epochs 2 -o resnet18_fmnist.pt
    python examples/train_fashion_mnist.py --model resnet18 --epochs 0.05 --train-limit 256 -o tiny.pt  # seconds
    python examples/train_fashion_mnist.py --model mobilenet_v2 --epochs 12 --lr 0.05 --input-size 64 \
        -o mobilenet_v2_fmnist64.pt --resume  # hours on a CPU: run it again after a stop, it goes on

28x28 grey images padded to 32x32 (or scaled up, ``--input-size 64``) and repeated to 3 channels
(`modify.train.data.fashion_mnist`), a random crop after padding by an eighth of the side and a random
horizontal flip (``--augment``), SGD with momentum, linear warm-up then cosine decay
(`modify.train.finetune.finetune` with no teacher), weights built with ``weights=None``: nothing is
downloaded. Prints the test accuracy and writes it into a
JSON file beside the checkpoint.

A long run keeps its state (model, optimizer, step, data order; `modify.train.finetune`'s state
file) in ``OUTPUT.state/`` every ``--checkpoint-every`` steps; ``--resume`` continues from it with the
same schedule and data order, so a CPU run of several hours survives being stopped. The state folder
is removed once the checkpoint is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|trace)` is deprecated", category=FutureWarning)

import modify  # noqa: E402
from modify.errors import ModifyError  # noqa: E402
from modify.io.files import atomic_write_text, check_output_path  # noqa: E402
from modify.train.data import fashion_mnist  # noqa: E402
from modify.train.finetune import FinetuneConfig, evaluate, finetune  # noqa: E402
from modify.train.state import state_path  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="a torchvision model name (built with weights=None)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    p.add_argument(
        "--augment", type=int, default=None, help="pad for the random crop + flip (default: input size / 8; 0: none)"
    )
    p.add_argument(
        "--input-size", type=int, default=32, help="image side: 32 pads the 28x28 images, larger scales them up"
    )
    p.add_argument("--data-dir", default=None, help="folder with the IDX files (default: the Debian package's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-every", type=int, default=200, help="write the run's state every N steps (default: 200; 0: never)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run whose state is in OUTPUT.state/")
    p.add_argument("-o", "--output", required=True, help="the modify checkpoint to write")
    args = p.parse_args(argv)
    try:  # the checkpoint and the JSON beside it, before the training that would be lost
        for path in (args.output, Path(args.output).with_suffix(".json")):
            check_output_path(path, force=True, option="-o")
    except ModifyError as e:
        raise SystemExit(f"error: {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set = fashion_mnist(args.data_dir, split="train", limit=args.train_limit, size=args.input_size)
    test_set = fashion_mnist(args.data_dir, split="test", limit=args.test_limit, size=args.input_size)
    pad = args.input_size // 8 if args.augment is None else args.augment
    loader = DataLoader(
        train_set.augmented(pad) if pad else train_set, batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    model = modify.get_model(args.model, num_classes=10)
    config = FinetuneConfig(lr=args.lr, weight_decay=5e-4, alpha=0.0, warmup=0.03, seed=args.seed)
    last = [time.perf_counter()]

    def progress(info) -> None:
        if time.perf_counter() - last[0] > 30 or info.step == info.total_steps:
            last[0] = time.perf_counter()
            print(
                f"step {info.step}/{info.total_steps} loss {info.loss:.3f} {info.images_per_second:.0f} img/s",
                flush=True,
            )

    state = Path(f"{args.output}.state")
    keep_state = args.checkpoint_every > 0 or args.resume
    if args.resume and not state_path(state).is_file():
        print(f"no state in {state}/ to resume from: starting afresh", flush=True)
    try:
        run = finetune(
            model,
            loader,
            config=config,
            epochs=args.epochs,
            on_step=progress,
            checkpoint_dir=state if keep_state else None,
            checkpoint_every=args.checkpoint_every or None,
            resume=args.resume,
        )
    except ModifyError as e:  # a state written with other settings
        raise SystemExit(f"error: {e}") from None
    accuracy = evaluate(model, DataLoader(test_set, batch_size=500))
    modify.save(model, args.output, force=True)
    out = {
        "model": args.model,
        "epochs": args.epochs,
        "test_accuracy": accuracy,
        "test_images": len(test_set),
        "seconds": run.seconds,
        "images_per_second": run.images_per_second,
        "seed": args.seed,
        "input_size": args.input_size,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "augment_pad": pad,
        "resumed_from_step": run.resumed_from,
    }
    atomic_write_text(Path(args.output).with_suffix(".json"), json.dumps(out, indent=1))
    if keep_state:
        shutil.rmtree(state, ignore_errors=True)
    print(
        f"{args.model}: test accuracy {100 * accuracy:.2f}% after {args.epochs:g} "
        f"epochs ({run.seconds / 60:.1f} min); wrote {args.output}"
    )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
