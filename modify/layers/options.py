"""The closed choices of a MoD block, as string enums (the YAML holds strings, the code members).

The defaults are the project's reading of the paper (docs: ``cnn-mod.md``, decisions table);
the alternatives are kept for ablations and for the identity configuration that proves a
rewrite exact.
"""

from __future__ import annotations

import dataclasses
import enum

from modify.errors import ChoiceError

__all__ = [
    "StrChoice",
    "Init",
    "SelectionOrder",
    "Selection",
    "ScorerActivation",
    "ReducedWeights",
    "BlockForm",
    "FusionSlot",
    "MoDConfig",
]


class StrChoice(str, enum.Enum):
    """A string enum whose ``from_str`` names the valid values when given a wrong one."""

    @classmethod
    def from_str(cls, value: str | StrChoice) -> StrChoice:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise ChoiceError(f"Unknown value {value!r} for {cls.__name__}; expected one of {valid}.") from None

    def __str__(self) -> str:
        return self.value


class Init(StrChoice):
    """How a converted model's MoD blocks start: the one vocabulary of `modify.convert`,
    `modify.conversion.init.initialize` and the ``--init`` of ``modify convert`` and ``modify finetune``
    (`modify.conversion.init` describes each)."""

    SCRATCH = "scratch"  # fresh weights, as the paper trains its MoD blocks (the default)
    COPY = "copy"  # the original block's weights, its leading channels (exact when k = C)
    ZERO = "zero"  # fresh weights, the reduced branch's last layer at zero
    IMPORTANCE = "importance"  # the original block's most important channels; the selector prefers them


class SelectionOrder(StrChoice):
    """Order of the k selected channels, which fixes which slot of the reduced block each feeds."""

    SCORE = "score"  # torch.topk order, highest score first (default)
    INDEX = "index"  # ascending channel index


class Selection(StrChoice):
    """Whether each sample picks its own k channels."""

    DYNAMIC = "dynamic"  # the Channel Selector scores every channel per sample (the paper)
    STATIC = "static"  # the same k channels for every sample, score 1 (a control: what is the selector worth?)


class ScorerActivation(StrChoice):
    """The Channel Selector's hidden activation, between its two linear layers.

    The paper's scorer is squeeze-and-excitation's, with a ReLU. Its layers have no bias and a
    block's input is usually a ReLU output (every pooled channel >= 0), so a hidden unit that turns
    negative on one image is negative on nearly all; under a ReLU it then gets no gradient again, and
    training kills the units one by one until the selector picks one fixed set
    (`modify.conversion.selector_units`). The other two keep a gradient for negative inputs and add
    no parameters. They keep the selector alive, not per-image: on a converged ResNet-18
    (layer1.0, k = C/2) block distillation still sent 95% (LeakyReLU) and 82% (GELU) of the images
    down one channel set, and both ended at deleting the block, below static MoD (README).
    """

    RELU = "relu"  # the paper's (default)
    LEAKY_RELU = "leaky_relu"  # slope `LEAKY_SLOPE` below zero: a negative unit keeps a tenth of its gradient
    GELU = "gelu"  # smooth; its gradient fades below zero without vanishing near it


LEAKY_SLOPE = 0.1  # PyTorch's default 0.01 leaves a negative unit a hundredth of its gradient


class ReducedWeights(StrChoice):
    """Whose weights the reduced block applies to the k channels an image selects."""

    SLOT = "slot"  # one set per slot of the reduced block, whatever channel lands there (the paper; default)
    CHANNEL = "channel"  # each selected channel its own (`modify.layers.channel_weights`); branch form, original fusion


class BlockForm(StrChoice):
    """What the reduced block is."""

    WHOLE = "whole"  # the architecture's own block at width k, with its shortcut and activation
    BRANCH = "branch"  # only the residual branch; the fusion is the skip-add, then the post-add op


class FusionSlot(StrChoice):
    """Where the k processed channels are added back into the C-channel input."""

    FIRST = "first"  # channels 0..k-1 (Eq. 1-2 of the paper, default)
    LAST = "last"  # channels C-k..C-1 ("MoD-lk", Table 8)
    ORIGINAL = "original"  # the positions they were taken from (ablation "OP", Table 10)


@dataclasses.dataclass(frozen=True)
class MoDConfig:
    """How every MoD block of a model is built; one per model or per recipe.

    Example:
        >>> MoDConfig(fusion="last").fusion
        <FusionSlot.LAST: 'last'>
    """

    form: BlockForm = BlockForm.WHOLE  # whole block at width k, or only its residual branch
    fusion: FusionSlot = FusionSlot.FIRST  # where the processed channels are added back
    order: SelectionOrder = SelectionOrder.SCORE  # order of the selected channels
    scale: bool = True  # multiply the block output by the selection scores (the paper: always)
    reduction: int = 16  # the selector's bottleneck ratio r
    selection: Selection = Selection.DYNAMIC  # per-sample channels, or one fixed set (static MoD)
    activation: ScorerActivation = ScorerActivation.RELU  # the selector's hidden activation
    weights: ReducedWeights = ReducedWeights.SLOT  # per slot of the reduced block, or each channel its own

    def __post_init__(self) -> None:
        # Accept the YAML's strings; store the enum members.
        object.__setattr__(self, "form", BlockForm.from_str(self.form))
        object.__setattr__(self, "fusion", FusionSlot.from_str(self.fusion))
        object.__setattr__(self, "order", SelectionOrder.from_str(self.order))
        object.__setattr__(self, "selection", Selection.from_str(self.selection))
        object.__setattr__(self, "activation", ScorerActivation.from_str(self.activation))
        object.__setattr__(self, "weights", ReducedWeights.from_str(self.weights))
        if self.weights is ReducedWeights.CHANNEL and (
            self.form is not BlockForm.BRANCH or self.fusion is not FusionSlot.ORIGINAL
        ):
            raise ValueError(
                f"weights='channel' needs form='branch' and fusion='original' (got form={self.form.value!r}, "
                f"fusion={self.fusion.value!r}): each channel's update goes back to where it came from."
            )
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"reduction={self.reduction!r} must be a positive integer.")

    def as_dict(self) -> dict[str, object]:
        """Plain strings and numbers, for YAML and checkpoints (``selection`` only when static,
        ``activation`` only when not the ReLU and ``weights`` only when per channel, so recipes
        written before them read the same)."""
        out: dict[str, object] = {
            "form": self.form.value,
            "fusion": self.fusion.value,
            "order": self.order.value,
            "scale": self.scale,
            "reduction": self.reduction,
        }
        if self.selection is not Selection.DYNAMIC:
            out["selection"] = self.selection.value
        if self.activation is not ScorerActivation.RELU:
            out["activation"] = self.activation.value
        if self.weights is not ReducedWeights.SLOT:
            out["weights"] = self.weights.value
        return out
