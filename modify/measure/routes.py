"""Which channels each MoD block selects over a data set, and whether the choice depends on the input.

A selector that has collapsed into a static choice picks the same k channels for every image:
then the MoD block is a statically pruned block that still pays for its selector. `routes`
records every selection of every MoD block over a data set and reports, per block:

- ``frequency[c]``: the share of images whose top-k holds channel c (sums to k);
- ``class_frequency[y][c]``: the same per class, and ``class_divergence``: the mean over classes,
  weighted by their image counts, of the total-variation distance between the class's and the
  overall selection, in 0..1 (small classes read high by chance: use a few hundred images);
- ``entropy``: where the selection sits between static and uniform, in 0..1:
  (H(frequency / k) - log2 k) / (log2 C - log2 k), 0 when every image picks the same k channels;
- ``never`` / ``always``: channels no image picks, and channels every image picks;
- ``distinct_sets``: how many different sets of k channels were picked;
- a histogram of the selected channels' scores.

Example:
    >>> import torch
    >>> from torchvision.models.resnet import BasicBlock
    >>> from modify.layers import MoDBlock
    >>> net = torch.nn.Sequential(MoDBlock(8, 2, BasicBlock(2, 2))).eval()
    >>> report = routes(net, [(torch.randn(6, 8, 4, 4), torch.tensor([0, 0, 0, 1, 1, 1]))])
    >>> b = report.blocks[0]
    >>> b.module, b.k, round(sum(b.frequency), 6), report.images
    ('0', 2, 2.0, 6)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modify.errors import ModifyError
from modify.layers import MoDBlock

__all__ = ["BlockRoutes", "RoutesReport", "routes", "selection_stats", "write_routes"]

SCORE_BINS = 20


@dataclasses.dataclass(frozen=True)
class BlockRoutes:
    """The selections of one MoD block over the data."""

    module: str
    channels: int  # C
    k: int
    frequency: tuple[float, ...]  # (C,) share of images that selected each channel
    class_frequency: dict[int, tuple[float, ...]]  # class -> (C,) the same within the class
    class_divergence: (
        float  # size-weighted mean total-variation distance of the classes' selections from the overall one
    )
    entropy: float  # 0 = the same k channels for every image, 1 = every channel equally often
    never: tuple[int, ...]  # channels no image selected
    always: tuple[int, ...]  # channels every image selected
    distinct_sets: int  # different k-channel sets selected
    score_edges: tuple[float, ...]  # histogram of the selected scores: SCORE_BINS + 1 edges in 0..1
    score_counts: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RoutesReport:
    blocks: tuple[BlockRoutes, ...]
    images: int

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "blocks": [dataclasses.asdict(b) for b in self.blocks]}


def selection_stats(module: str, channels: int, indices: Tensor, labels: Tensor, scores: Tensor) -> BlockRoutes:
    """The statistics of one block from its selections ``indices`` (M, k), the images' ``labels``
    (M,) and the selected ``scores`` (M, k)."""
    m, k = indices.shape
    picked = torch.zeros(m, channels)
    picked.scatter_(1, indices.long(), 1.0)  # (M, C) one-hot of each image's set
    frequency = picked.mean(0)  # (C,)
    per_class = {int(y): picked[labels == y].mean(0) for y in torch.unique(labels)}
    sizes = {int(y): int((labels == y).sum()) for y in per_class}
    # Weighted by class size: a class of a few images differs from the mean by chance alone.
    divergence = sum(sizes[y] / m * 0.5 * (f - frequency).abs().sum().item() / k for y, f in per_class.items())
    q = frequency / k
    h = -sum(float(p) * math.log2(float(p)) for p in q if p > 0)
    span = math.log2(channels) - math.log2(k)
    entropy = (h - math.log2(k)) / span if span > 0 else 0.0
    sets = {tuple(sorted(row)) for row in indices.tolist()}
    counts = torch.histc(scores.float().flatten(), bins=SCORE_BINS, min=0.0, max=1.0)
    edges = torch.linspace(0, 1, SCORE_BINS + 1)
    return BlockRoutes(
        module=module,
        channels=channels,
        k=k,
        frequency=tuple(frequency.tolist()),
        class_frequency={y: tuple(f.tolist()) for y, f in per_class.items()},
        class_divergence=float(divergence),
        entropy=float(max(0.0, entropy)),
        never=tuple(int(c) for c in (frequency == 0).nonzero().flatten()),
        always=tuple(int(c) for c in (frequency == 1).nonzero().flatten()),
        distinct_sets=len(sets),
        score_edges=tuple(edges.tolist()),
        score_counts=tuple(int(c) for c in counts.tolist()),
    )


@torch.no_grad()
def routes(model: nn.Module, data: Iterable[Any], *, batches: int | None = None) -> RoutesReport:
    """Runs ``model`` (eval mode) over (images, labels) batches and reports every MoD block's selections.

    Raises:
        ModifyError: the model holds no MoD block.
    """
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, MoDBlock)]
    if not blocks:
        raise ModifyError("the model holds no MoD block, so there are no selections to show; give a converted model.")
    seen: dict[str, tuple[list[Tensor], list[Tensor]]] = {name: ([], []) for name, _ in blocks}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: tuple[Tensor, Tensor]) -> None:
            scores, indices = out  # (N, k) each
            seen[name][0].append(indices.detach().cpu())
            seen[name][1].append(scores.detach().float().cpu())

        return hook

    hooks = [m.selector.register_forward_hook(keep(name)) for name, m in blocks]
    labels: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for i, (images, y) in enumerate(data):
            if batches is not None and i >= batches:
                break
            model(images)
            labels.append(torch.as_tensor(y).cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not labels:
        raise ModifyError("the data held no batch; give a data set with at least one image.")
    y = torch.cat(labels)
    out = [
        selection_stats(name, m.channels, torch.cat(seen[name][0]), y, torch.cat(seen[name][1])) for name, m in blocks
    ]
    return RoutesReport(tuple(out), images=len(y))


def write_routes(report: RoutesReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Writes ``routes.json`` and ``routes.png`` (a selection heatmap per block: all images, then each class)."""
    from modify.io.files import atomic_write_text
    from modify.measure.plots import pyplot, save_png

    plt = pyplot("the routes heatmap")

    out = Path(out_dir)
    n = len(report.blocks)
    fig, axes = plt.subplots(n, 2, figsize=(11, 1.2 + 1.6 * n), squeeze=False, gridspec_kw={"width_ratios": [4, 1]})
    for row, b in zip(axes, report.blocks, strict=True):
        classes = sorted(b.class_frequency)
        matrix = [list(b.frequency)] + [list(b.class_frequency[c]) for c in classes]
        image = row[0].imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        row[0].set_yticks(range(len(matrix)), ["all"] + [str(c) for c in classes], fontsize=6)
        row[0].set_title(
            f"{b.module}: k={b.k} of C={b.channels}, entropy {b.entropy:.2f}, "
            f"class divergence {b.class_divergence:.2f}, {b.distinct_sets} distinct sets",
            fontsize=8,
        )
        row[0].set_xlabel("channel", fontsize=7)
        fig.colorbar(image, ax=row[0], fraction=0.02)
        centres = [(a + z) / 2 for a, z in itertools.pairwise(b.score_edges)]
        row[1].bar(centres, b.score_counts, width=1 / len(centres))
        row[1].set_title("selected scores", fontsize=8)
        row[1].set_xlim(0, 1)
    fig.tight_layout()
    return {
        "json": atomic_write_text(out / "routes.json", json.dumps(report.as_dict(), indent=1)),
        "plot": save_png(fig, out / "routes.png", dpi=110),
    }
