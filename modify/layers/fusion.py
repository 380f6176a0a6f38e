"""The fusion of CNN MoD (Eq. 1-2): add the k processed channels into a fixed slot of the input.

Eq. (1): out[:, :k] = y + x[:, :k];  Eq. (2): out[:, k:] = x[:, k:].
The paper's default slot is the first k channels; the last k ("MoD-lk") is as good, and adding
back to the channels' original positions is the much worse ablation "OP". Every variant keeps
the input's shape, so the graph stays static.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modify.layers.options import FusionSlot

__all__ = ["Fusion", "expand_index", "FIXED_SLOT_FORMS"]

# How the fixed-slot fusion may be written for an exporter (`Fusion.fixed_slot`); the numbers are
# the same, the operators differ:
FIXED_SLOT_FORMS = (
    "placement",  # x + conv1x1(y, P): a Conv with a residual input (ONNX Conv + Add)
    "concat",  # slices of x, one added to y, concatenated (Slice, Add, Concat): the eager form
    "slice-scatter",  # the slot's slice of x plus y written back into x (ONNX ScatterND)
    "scatter-add",  # y scattered with add into x at constant indices (ONNX ScatterElements, reduction add)
    "pad",  # x + y zero-padded along the channels to C (ONNX Pad + Add)
)


def expand_index(indices: Tensor, like: Tensor) -> Tensor:
    """Channel indices (N, k) broadcast over the spatial axes of ``like`` (N, C, H, W) -> (N, k, H, W)."""
    return indices[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])


class Fusion(nn.Module):
    """Adds ``y`` (N, k, H, W) into ``x`` (N, C, H, W) at a fixed slot; returns (N, C, H, W).

    The result is a new tensor: ``x`` is left untouched, so autograd and any other reader of
    the block input stay correct. With ``inplace=True`` (set by `modify.conversion.inplace.enable_inplace_fusion`
    where the block is the input's only reader) and gradients off, the k channels are added into
    ``x`` itself, which saves a copy of the whole tensor.

    For graph compilers that keep activations in a blocked layout (ONNX Runtime's NCHWc), the
    fixed slots can also be written as ``x + conv1x1(y, P)`` with P the constant (C, k) matrix
    that places channel i of ``y`` at slot channel i (`placement`): the same numbers (each output
    is ``x + 1 * y_i`` or ``x + 0``), but a convolution with a residual input, which such
    compilers fuse, where slicing and concatenating along channels forces layout changes.
    `modify.deploy.export.export_onnx` exports this form by default; `FIXED_SLOT_FORMS` lists
    the others an exporter may choose (`fixed_slot`), each the same numbers as operators of
    another kind. An exporter sets ``export_form`` for the duration of an export
    (`modify.deploy.export.fusion_form`); it is None otherwise.

    With ``scores`` (N, k) the block output is first multiplied by them (the paper's scaling); in
    the in-place case that multiplication is in place on ``y`` too, so fusing costs no new tensor.

    Example:
        >>> fuse = Fusion(channels=4, k=2)
        >>> x, y = torch.zeros(1, 4, 1, 1), torch.ones(1, 2, 1, 1)
        >>> fuse(x, y, torch.tensor([[3, 1]])).flatten().tolist()
        [1.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, channels: int, k: int, slot: FusionSlot | str = FusionSlot.FIRST) -> None:
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"k={k} must lie in 1..{channels} (the channel count).")
        self.channels = channels
        self.k = k
        self.slot = FusionSlot.from_str(slot)
        self.inplace = False
        self.export_form: str | None = None  # one of FIXED_SLOT_FORMS while an exporter traces the model

    def placement(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
        """The (C, k, 1, 1) 0/1 weight that puts the k channels into the slot; fixed slots only."""
        if self.slot is FusionSlot.ORIGINAL:
            raise ValueError("the 'original' slot depends on the selected channels: it has no fixed placement.")
        start = 0 if self.slot is FusionSlot.FIRST else self.channels - self.k
        weight = torch.zeros(self.channels, self.k, 1, 1, dtype=dtype, device=device)
        weight[start : start + self.k, :, 0, 0] = torch.eye(self.k, dtype=dtype, device=device)
        return weight  # (C, k, 1, 1)

    def forward(self, x: Tensor, y: Tensor, indices: Tensor, scores: Tensor | None = None) -> Tensor:
        """``x`` with ``y`` (times ``scores`` (N, k), per sample and channel, if given) added at the slot."""
        form = self.export_form  # set while exporting
        if form is None and self.inplace and not torch.is_grad_enabled():
            if scores is not None:
                y = y.mul_(scores.view(-1, self.k, 1, 1))  # (N, k, H, W): y is the reduced block's own output
            return self._fuse_into(x, y, indices)
        if scores is not None:
            y = y * scores.view(-1, self.k, 1, 1)  # (N, k, H, W): the selector's gradient path
        if form is not None:
            return self.fixed_slot(x, y, form)
        k = self.k
        if self.slot is FusionSlot.FIRST:
            return torch.cat([x[:, :k] + y, x[:, k:]], dim=1)  # (N, C, H, W)
        if self.slot is FusionSlot.LAST:
            c_keep = self.channels - k
            return torch.cat([x[:, :c_keep], x[:, c_keep:] + y], dim=1)  # (N, C, H, W)
        return x.scatter_add(1, expand_index(indices, y), y)  # (N, C, H, W), original positions

    def fixed_slot(self, x: Tensor, y: Tensor, form: str) -> Tensor:
        """``x`` (N, C, H, W) with ``y`` (N, k, H, W) added at the fixed slot, written as ``form``
        (one of `FIXED_SLOT_FORMS`); out of place. The ``placement`` form uses the buffer
        ``placement_weight`` where an exporter registered one (a constant of the exported graph).

        Example:
            >>> fuse = Fusion(channels=4, k=2, slot="last")
            >>> x, y = torch.zeros(1, 4, 1, 1), torch.ones(1, 2, 1, 1)
            >>> [fuse.fixed_slot(x, y, f).flatten().tolist() for f in FIXED_SLOT_FORMS] == [[0.0, 0.0, 1.0, 1.0]] * 5
            True
        """
        if self.slot is FusionSlot.ORIGINAL:
            raise ValueError("the 'original' slot depends on the selected channels: it has no fixed-slot form.")
        k, start = self.k, 0 if self.slot is FusionSlot.FIRST else self.channels - self.k
        end = start + k
        if form == "placement":
            weight = getattr(self, "placement_weight", None)
            weight = weight if weight is not None else self.placement(x.dtype, x.device)  # (C, k, 1, 1)
            return x + nn.functional.conv2d(y, weight)  # (N, C, H, W)
        if form == "concat":
            parts = [x[:, :start], x[:, start:end] + y, x[:, end:]]  # (N, start | k | C - end, H, W)
            return torch.cat([p for p in parts if p.shape[1] > 0], dim=1)  # (N, C, H, W)
        if form == "slice-scatter":
            return torch.slice_scatter(x, x[:, start:end] + y, dim=1, start=start, end=end)  # (N, C, H, W)
        if form == "scatter-add":
            slot = torch.arange(start, end, device=x.device).view(1, k, 1, 1).expand_as(y)  # (N, k, H, W)
            return x.scatter_add(1, slot, y)  # (N, C, H, W)
        if form == "pad":
            return x + nn.functional.pad(y, (0, 0, 0, 0, start, self.channels - end))  # (N, C, H, W)
        raise ValueError(f"form {form!r} is not one of {', '.join(FIXED_SLOT_FORMS)}.")

    def _fuse_into(self, x: Tensor, y: Tensor, indices: Tensor) -> Tensor:
        # One in-place add on a view of the slot (``x[:, :k] += y`` would also copy the slot onto itself).
        if self.slot is FusionSlot.FIRST:
            x.narrow(1, 0, self.k).add_(y)  # (N, k, H, W) view of x
        elif self.slot is FusionSlot.LAST:
            x.narrow(1, self.channels - self.k, self.k).add_(y)
        else:
            x.scatter_add_(1, expand_index(indices, y), y)
        return x

    def extra_repr(self) -> str:
        extra = ", inplace" if self.inplace else ""
        return f"channels={self.channels}, k={self.k}, slot={self.slot.value}{extra}"
