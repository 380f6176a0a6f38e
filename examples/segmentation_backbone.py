"""Convert the CNN backbone of a segmentation model and run the whole model: masks out, smaller
backbone in, checkpoint round trip.

    python examples/segmentation_backbone.py --model deeplabv3_resnet50 --weights my_deeplab.pth
    python examples/segmentation_backbone.py --model fcn_resnet50 --input-size 64     # random weights

1. Builds a torchvision segmentation model (``fcn_resnet50``, ``deeplabv3_resnet50``,
   ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``), random weights unless
   ``--weights`` gives yours (nothing is downloaded).
2. Converts its backbone with the default recipe (`modify.conversion.backbones.convert_backbone`; the
   dilated stages keep their dilation) and runs the whole model on an image batch.
3. Prints MACs before and after for the whole model and the masks' agreement with the original
   (random weights: only the shapes mean something; with yours, fine-tune before you judge).
4. Saves and reloads the converted model (`modify.save` / `modify.load`) and checks the reload.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import modify  # noqa: E402
from modify.conversion.backbones import convert_backbone  # noqa: E402
from modify.io.weights import load_state_dict_file  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn_resnet50")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--input-size", type=int, default=224)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    original = modify.get_model(args.model, weights_backbone=None, num_classes=args.num_classes).eval()
    if args.weights is not None:
        load_state_dict_file(original, args.weights)
    result = convert_backbone(original, input_size=args.input_size)
    print(f"backbone: {len(result.converted)} blocks converted ({', '.join(b.name for b in result.converted)})")
    images = torch.randn(2, 3, args.input_size, args.input_size)
    with torch.no_grad():
        before, after = original(images)["out"], result.model.eval()(images)["out"]
    assert after.shape == before.shape == (2, args.num_classes, args.input_size, args.input_size)
    agree = float((after.argmax(1) == before.argmax(1)).float().mean())
    macs_before = modify.profile_model(original, input_size=args.input_size).macs
    macs_after = modify.profile_model(result.model, input_size=args.input_size).macs
    print(
        f"masks {tuple(after.shape)}; MACs {macs_before / 1e9:.2f} G -> {macs_after / 1e9:.2f} G "
        f"({macs_before / macs_after:.2f}x); pixels labelled as the original: {100 * agree:.1f}%"
    )
    with tempfile.TemporaryDirectory() as folder:
        reloaded = modify.load(modify.save(result, Path(folder) / "seg_mod.pt"))
        with torch.no_grad():
            assert torch.equal(reloaded(images)["out"], after), "the reloaded model differs"
    print("saved and reloaded: identical masks")
    return {"macs_before": macs_before, "macs_after": macs_after, "agreement": agree}


if __name__ == "__main__":
    main()
