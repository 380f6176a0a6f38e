"""Your own pretrained weights and your own images: load, convert, fine-tune briefly, save.

    python examples/own_weights_image_folder.py --model resnet50 --weights my_resnet50.pth \\
        --data path/to/images --epochs 1 -o resnet50_mod.pt
    python examples/own_weights_image_folder.py --model timm:convnext_atto --weights convnext.safetensors \\
        --data path/to/images --num-classes 5

``--data`` is an image folder: ``DATA/CLASS/IMAGE.jpg``, or ``DATA/train/...`` with
``DATA/val/...`` beside it (then the accuracy is measured on ``val``). ``--weights`` takes what
training scripts write: a state_dict, a checkpoint holding one (``state_dict``, ``model``,
``model_state_dict``), ``module.``-prefixed keys, or ``.safetensors``. Nothing is downloaded.

1. Builds the architecture (``--model``: a torchvision name or ``timm:NAME``) with your class
   count and loads your weights into it (`modify.io.weights.load_state_dict_file`).
2. Converts it with the default recipe (the paper's placement, the family's capacity) and the
   reduced blocks initialised from the original's weights (``init="copy"``).
3. Fine-tunes the converted model on your images, distilling from the original
   (`modify.train.finetune.finetune`), and measures top-1 accuracy before and after.
4. Writes a checkpoint `modify load`, `modify profile` and `modify export` read.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from torch.utils.data import DataLoader

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import modify  # noqa: E402
from modify.errors import ModifyError  # noqa: E402
from modify.io.files import check_output_path  # noqa: E402
from modify.io.weights import load_state_dict_file  # noqa: E402
from modify.train.data import load_dataset  # noqa: E402
from modify.train.finetune import FinetuneConfig, evaluate, finetune  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a torchvision name (resnet50) or timm:NAME")
    p.add_argument("--weights", required=True, type=Path, help="your weights file")
    p.add_argument("--data", required=True, help="an image folder")
    p.add_argument("--num-classes", type=int, default=None, help="default: the number of class folders")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (a quick try)")
    p.add_argument("-o", "--output", type=Path, default=Path("model_mod.pt"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Runs the example; returns the accuracies, the original with your weights, and the conversion."""
    args = parse(argv)
    try:  # before the fine-tune that would be lost to a path that cannot be written
        check_output_path(args.output, force=True, option="-o")
    except ModifyError as e:
        raise SystemExit(f"error: {e}") from None
    train = load_dataset(args.data, split="train", limit=args.limit, size=args.image_size)
    held_out = load_dataset(args.data, split="val", limit=args.limit, size=args.image_size)
    classes = getattr(getattr(train, "dataset", train), "classes", None)
    num_classes = args.num_classes or len(classes or [])

    original = modify.get_model(args.model, num_classes=num_classes).eval()
    load_state_dict_file(original, args.weights)
    result = modify.convert(original, init="copy", input_size=args.image_size)
    print(f"converted {len(result.converted)} blocks: {', '.join(f'{b.name} (k={b.k})' for b in result.converted)}")

    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=len(train) > args.batch_size)
    eval_loader = DataLoader(held_out, batch_size=args.batch_size)
    accuracy = {"original": evaluate(original, eval_loader), "converted": evaluate(result.model, eval_loader)}
    finetune(result.model, train_loader, teacher=original, config=FinetuneConfig(lr=args.lr), epochs=args.epochs)
    accuracy["fine-tuned"] = evaluate(result.model, eval_loader)
    for name, value in accuracy.items():
        print(f"{name:>10}: {100 * value:.2f}% top-1")
    print(f"wrote {modify.save(result, args.output, force=True)}")
    return {"accuracy": accuracy, "original": original, "result": result}


if __name__ == "__main__":
    main()
