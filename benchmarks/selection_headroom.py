"""What choosing a block's k channels per image could gain over one fixed set, before any training,
when each image's channels keep their own weights.

    python benchmarks/selection_headroom.py resnet18_fmnist32.pt --blocks layer1.0,layer2.1,layer3.1,layer4.1 -o DIR

A MoD block built from a trained one feeds the selected channels to a reduced block whose slot j has
one set of weights; when the selection changes per image, slot j receives other channels than the
ones its weights came from. This measures selection without that mismatch: the trained block itself,
run on only k of its C input channels, writing only those k (the branch form fused into the channels'
own positions, as `modify plan` builds MoD blocks), with its inner width cut to the k channels of
largest BatchNorm scale (as ``init importance`` does). For a BasicBlock with an identity shortcut,
``out = relu(x + m * bn2(conv2(relu(bn1(conv1(m * x))) * m_inner)))``, ``m`` the image's k
channels: exactly the original block restricted to them, with their own weights. The channels per
image come from:

- ``static, most read``: the k channels conv1 reads most (L1 norm of its weights), one set for all:
  static MoD's set;
- ``per image, largest input``: the k channels of largest mean activation in each image (what a
  selector sees first);
- ``per image, oracle``: the k channels the original block changes most in each image (it looks
  at the answer: an upper bound on any selector with these weights);

and, for reference, the block deleted and kept. Each row: the model's top-1 accuracy and KL to the
original on the first ``--images`` test images, and the median cosine between the block's update
and the original's. No training: the gap between the oracle and the static set is the most that
per-image selection could buy with matched weights; the fine-tuned arms of block_probe.py show
what the reduced blocks make of it. Writes ``headroom.json`` and ``headroom.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models.resnet import BasicBlock

import modify
from modify.io.files import atomic_write_text
from modify.train.data import load_dataset

Chooser = Callable[[BasicBlock, Tensor, Tensor, int], Tensor]  # (block, x, original update, k) -> mask (N, C, 1, 1)


def _mask(indices: Tensor, n: int, c: int) -> Tensor:
    """A (n, C, 1, 1) mask of ``indices`` ((k,) for every image, or (n, k) per image)."""
    m = torch.zeros(n, c)
    m.scatter_(1, indices.expand(n, -1) if indices.dim() == 1 else indices, 1.0)
    return m[:, :, None, None]


def most_read(block: BasicBlock, x: Tensor, update: Tensor, k: int) -> Tensor:
    return _mask(block.conv1.weight.abs().sum((0, 2, 3)).topk(k).indices, x.shape[0], x.shape[1])


def largest_input(block: BasicBlock, x: Tensor, update: Tensor, k: int) -> Tensor:
    return _mask(x.mean((2, 3)).topk(k, dim=1).indices, x.shape[0], x.shape[1])  # (N, k) per image


def oracle(block: BasicBlock, x: Tensor, update: Tensor, k: int) -> Tensor:
    return _mask(update.pow(2).sum((2, 3)).topk(k, dim=1).indices, x.shape[0], x.shape[1])


CHOOSERS: dict[str, Chooser] = {
    "static, most read": most_read,
    "per image, largest input": largest_input,
    "per image, oracle": oracle,
}


def restricted(block: BasicBlock, x: Tensor, m: Tensor, k: int) -> Tensor:
    """The block run on the channels of mask ``m`` (N, C, 1, 1) only, writing only those, its inner
    width cut to the k channels of largest |bn1 scale|: (N, C, H, W) -> (N, C, H, W)."""
    inner = _mask(block.bn1.weight.abs().topk(min(k, block.bn1.num_features)).indices, 1, block.bn1.num_features)
    h = F.relu(block.bn1(block.conv1(x * m))) * inner  # (N, C_inner, H, W)
    return F.relu(x + m * block.bn2(block.conv2(h)))  # (N, C, H, W)


def measure(
    model: nn.Module, name: str, images: Tensor, labels: Tensor, reference: Tensor, change: Callable | None
) -> dict[str, float]:
    """Accuracy, KL to ``reference`` logits and the block's update cosine with ``change`` (block, x,
    original output) -> output applied to block ``name`` (None: the original)."""
    block = model.get_submodule(name)
    cosines: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        x = args[0]
        new = change(mod, x, out) if change is not None else out
        a, b = (new - x).flatten(1), (out - x).flatten(1)  # (N, CHW) the updates
        cosines.append(F.cosine_similarity(a, b, dim=1, eps=1e-12))
        return new

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = torch.cat([model(b) for b in images.split(256)])
    finally:
        handle.remove()
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "kl": float(kl),
        "update_cosine": float(torch.cat(cosines).median()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained checkpoint (examples/train_fashion_mnist.py)")
    p.add_argument("--blocks", default="layer1.0,layer1.1,layer2.1,layer3.1,layer4.1")
    p.add_argument("--fractions", default="0.125,0.25,0.5")
    p.add_argument("--images", type=int, default=2048, help="first test images")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("-o", "--out", required=True, type=Path)
    args = p.parse_args(argv)
    model = modify.load(args.model).eval()
    test = load_dataset("fashion-mnist", split="test", size=args.input_size)
    images, labels = next(iter(DataLoader(test, batch_size=args.images)))  # (M, 3, H, W), (M,)
    with torch.no_grad():
        reference = torch.cat([model(b) for b in images.split(256)])
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.blocks.split(","):
        block = model.get_submodule(name)
        if not isinstance(block, BasicBlock) or block.downsample is not None:
            raise SystemExit(f"{name} is not a BasicBlock with an identity shortcut; this measures those only.")
        x = torch.rand(2, block.conv1.in_channels, 8, 8)  # the restriction to every channel is the block itself
        with torch.no_grad():
            full = restricted(block, x, torch.ones(2, x.shape[1], 1, 1), block.bn1.num_features)
            torch.testing.assert_close(full, block(x))
        rows = found.setdefault(name, {})
        rows["keep"] = measure(model, name, images, labels, reference, None)
        rows["delete"] = measure(model, name, images, labels, reference, lambda b, x, out: x)
        for fraction in (float(f) for f in args.fractions.split(",")):
            k = max(1, int(block.conv1.in_channels * fraction))
            for label, choose in CHOOSERS.items():
                change = lambda b, x, out, choose=choose, k=k: restricted(b, x, choose(b, x, out - x, k), k)  # noqa: E731
                rows[f"{label}, k={k}"] = measure(model, name, images, labels, reference, change)
                print(name, f"{label}, k={k}", rows[f"{label}, k={k}"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "headroom.json", json.dumps(found, indent=1) + "\n")
    lines = ["| block | rows | accuracy % | KL | update cosine |", "|---|---|---|---|---|"]
    for name, rows in found.items():
        for label, r in rows.items():
            lines.append(f"| {name} | {label} | {100 * r['accuracy']:.2f} | {r['kl']:.4f} | {r['update_cosine']:.3f} |")
    atomic_write_text(args.out / "headroom.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
