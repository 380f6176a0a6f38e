"""Export a converted model to ONNX and serve it with ONNX Runtime: the file, a session, and
answers that match PyTorch's.

    modify convert resnet50 -o r50_mod.pt
    python examples/serve_onnxruntime.py r50_mod.pt --requests 20
    pip install 'modify[onnx]'   # onnx, onnxruntime, onnxscript, if they are missing

1. Loads the checkpoint (`modify.load`) and writes ``CHECKPOINT.onnx`` with a dynamic batch
   dimension (`modify.deploy.export.export_onnx`, which checks the file against PyTorch itself).
2. Opens an ONNX Runtime session (CPU, all optimisations) as a server would, once.
3. Answers ``--requests`` requests of random batch sizes, checks every answer against the PyTorch
   model (top-1 class equal, logits within 1e-3) and prints the median latency per batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import modify  # noqa: E402
from modify.deploy.export import export_onnx  # noqa: E402
from modify.errors import ModifyError  # noqa: E402
from modify.io.files import check_output_path  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint from `modify convert -o`")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[int, float]:
    args = parse(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("this example needs ONNX Runtime: pip install 'modify[onnx]'") from None
    onnx_path = args.checkpoint.with_suffix(".onnx")
    try:  # the export is written beside the checkpoint
        check_output_path(onnx_path, force=True)
    except ModifyError as e:
        raise SystemExit(f"error: {e}") from None
    model = modify.load(args.checkpoint)
    report = export_onnx(model, onnx_path, input_size=args.input_size, dynamic_batch=True, force=True)
    path = report.path
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    generator = torch.Generator().manual_seed(0)
    latencies: dict[int, list[float]] = {}
    for _ in range(args.requests):
        batch = int(torch.randint(1, args.max_batch + 1, (1,), generator=generator))
        images = torch.randn(batch, 3, args.input_size, args.input_size, generator=generator)
        start = time.perf_counter()
        (logits,) = session.run(None, {name: images.numpy()})
        latencies.setdefault(batch, []).append(time.perf_counter() - start)
        with torch.no_grad():
            expected = model(images)
        answer = torch.from_numpy(logits)
        assert torch.equal(answer.argmax(1), expected.argmax(1)), "ONNX Runtime and PyTorch disagree on a class"
        torch.testing.assert_close(answer, expected, atol=1e-3, rtol=1e-3)
    medians = {b: statistics.median(ts) * 1e3 for b, ts in sorted(latencies.items())}
    print(f"served {args.requests} requests from {path}; answers match PyTorch")
    for batch, ms in medians.items():
        print(f"  batch {batch}: {ms:.1f} ms median ({len(latencies[batch])} requests)")
    return medians


if __name__ == "__main__":
    main()
