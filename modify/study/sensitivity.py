"""What each choice costs in accuracy, measured cheaply: the model with that change alone, after
its cheap repair, against the original, on calibration images held out from the training split.

- The split (`calibration_split`): a fixed random share of the training images is held out for
  scoring; the repair sees only the rest. The test split is never read (the planner is given the
  training data alone).
- The repair (`repair`), what a brief fine-tune would start from: block-local distillation of
  every MoD or narrowed block (`modify.train.distill`), then every BatchNorm's statistics
  re-estimated on repair images (EagleEye's adaptive BN: a pruned net's accuracy before and after
  fine-tuning correlate once its statistics are re-estimated).
- The score (`score`): the mean KL divergence from the original's output distribution to the
  candidate's, and their top-1 agreement, over the calibration images. KL is what distillation
  fine-tuning minimises, and it sees every class's probability, where agreement sees only the top
  one.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.randn(10, 3, 8, 8), torch.zeros(10, dtype=torch.long))
    >>> repair_set, calib_set = calibration_split(data, calib_images=4)
    >>> len(repair_set), len(calib_set)
    (6, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from modify.errors import ModifyError

__all__ = ["Score", "calibration_split", "calibration_batch", "repair", "score", "reference_outputs"]


@dataclasses.dataclass(frozen=True)
class Score:
    """A candidate against the original on the calibration images."""

    kl: float  # mean KL(original || candidate) per image, in nats
    agreement: float  # share of images whose top-1 class is the original's


def calibration_split(data: Dataset, *, calib_images: int, seed: int = 0) -> tuple[Subset, Subset]:
    """(repair images, calibration images): ``calib_images`` of ``data`` drawn at random with
    ``seed`` for scoring, the rest for repairs.

    Raises:
        ModifyError: ``data`` holds too few images for that many held out and some to repair with.
    """
    n = len(data)  # type: ignore[arg-type]
    if calib_images < 1 or n < calib_images + 1:
        raise ModifyError(
            f"the data holds {n} images; scoring needs {calib_images} "
            "calibration images held out and at least one more "
            "to repair with. Pass a larger training set, or fewer calibration images (--calib-images)."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[calib_images:]), Subset(data, order[:calib_images])


def calibration_batch(data: Dataset) -> Tensor:
    """Every image of ``data`` stacked: (N, 3, H, W)."""
    return torch.stack([data[i][0] for i in range(len(data))])  # type: ignore[arg-type]


@torch.no_grad()
def reference_outputs(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``model``'s log-probabilities on ``images`` (N, classes), in eval mode."""
    was = model.training
    model.eval()
    try:
        return torch.cat(
            [F.log_softmax(model(images[i : i + batch_size]).float(), dim=1) for i in range(0, len(images), batch_size)]
        )
    finally:
        model.train(was)


def score(model: nn.Module, images: Tensor, reference: Tensor, batch_size: int = 256) -> Score:
    """KL(original || model) and top-1 agreement on ``images``, ``reference`` being the
    original's log-probabilities on them (`reference_outputs`)."""
    mine = reference_outputs(model, images, batch_size)  # (N, classes) log-probabilities
    kl = F.kl_div(mine, reference, log_target=True, reduction="batchmean").item()
    agreement = (mine.argmax(1) == reference.argmax(1)).float().mean().item()
    return Score(kl=max(0.0, kl), agreement=agreement)


def repair(
    result_or_model: Any,
    original: nn.Module,
    data: Dataset,
    *,
    distill_steps: int,
    images: int = 1024,
    bn_batches: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """The cheap repair of a changed model, in place: block-local distillation of its MoD and
    narrowed blocks (``distill_steps`` steps each, on ``images`` images of ``data``), then its
    BatchNorm statistics re-estimated on ``bn_batches`` batches of ``data``. Returns what the
    distillation reported (empty when nothing was distilled)."""
    from modify.conversion.init import replaced_blocks
    from modify.train.distill import distill_blocks
    from modify.train.evaluation import recalibrate_bn

    model = getattr(result_or_model, "model", result_or_model)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    details: dict[str, Any] = {}
    if distill_steps > 0 and replaced_blocks(result_or_model):
        report = distill_blocks(result_or_model, original, loader, images=images, steps=distill_steps, seed=seed)
        details = {"blocks": [dataclasses.asdict(b) for b in report.blocks], "seconds": report.seconds}
    recalibrate_bn(model, loader, bn_batches)
    model.eval()
    return details
