"""A reduced branch whose channels bring their own weights (``MoDConfig(weights="channel")``).

The paper's reduced block has one set of weights per slot: slot j of its first convolution reads
whatever channel the selector put in slot j that image. When the selection changes from image to
image, slot j meets channels its weights were not made for (on a converted ResNet-18 a per-image
selector's block update fell to a cosine of 0.35 with the original's where a fixed set kept 0.72;
README, "What the MoD arm is"). Here the layers that touch the block's C channels keep a row or
column for every one of them, and each image uses those of its own k channels:

    x_sel (N, k, H, W), indices (N, k)
      -> first conv, its input columns W[:, indices[n]] per image -> (N, d, H', W')
      -> the branch's inner layers, unchanged (width d)
      -> last conv, its output rows W[indices[n]] per image -> (N, k, H, W)
      -> last BatchNorm, its channels' statistics and affine per image

so the MoD block computes the original block restricted to the image's k channels, with their own
weights, at the reduced block's MACs (plus gathering k columns and rows of two weights per image).
A batch of N images runs as one grouped convolution of N groups. The parameters are those of the
first and last layers at full width (C columns, C rows), the inner layers at width d.

The last BatchNorm normalises with its running statistics in training too (`ChannelNorm2d`): a
batch statistic over a per-image channel slot mixes channels, and each channel keeps its own.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, fx, nn

from modify.errors import ModifyError

__all__ = ["ChannelConv2d", "ChannelNorm2d", "channel_weight_branch"]


class ChannelConv2d(nn.Conv2d):
    """A convolution over C channels on one side, run per image on k of them.

    ``side="in"``: its C input columns, each image reading its k channels (``x`` (N, k, H, W) ->
    (N, out, H', W')); ``side="out"``: its C output rows, each image writing its k channels
    (``x`` (N, in, H, W) -> (N, k, H', W')). Without ``indices`` it is the plain convolution over all C.

    Example:
        >>> import torch
        >>> conv = ChannelConv2d(4, 2, 1, bias=False, side="in")
        >>> x, idx = torch.randn(3, 2, 5, 5), torch.tensor([[0, 3], [1, 2], [3, 1]])
        >>> full = torch.zeros(3, 4, 5, 5).scatter(1, idx[:, :, None, None].expand(-1, -1, 5, 5), x)
        >>> torch.allclose(conv(x, idx), conv(full), atol=1e-6)
        True
    """

    def __init__(self, *args: object, side: str = "in", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if side not in ("in", "out"):
            raise ValueError(f"side={side!r} must be 'in' or 'out'.")
        if self.groups != 1:
            raise ValueError(f"a per-channel convolution needs groups=1, got groups={self.groups}.")
        self.side = side

    def forward(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        if indices is None:
            return super().forward(x)
        n, k = indices.shape
        picked = indices.reshape(-1)  # (N * k,): image n's channels at n * k ...
        if self.side == "in":
            w = self.weight.index_select(1, picked)  # (out, N * k, kh, kw)
            weight = w.view(w.shape[0], n, k, *w.shape[2:]).transpose(0, 1)  # (N, out, k, kh, kw)
            bias = None if self.bias is None else self.bias.repeat(n)  # (N * out,)
        else:
            weight = self.weight.index_select(0, picked).view(n, k, *self.weight.shape[1:])  # (N, k, in, kh, kw)
            bias = None if self.bias is None else self.bias.index_select(0, picked)  # (N * k,)
        out_per_image = weight.shape[1]
        y = F.conv2d(
            x.reshape(1, -1, x.shape[2], x.shape[3]),  # (1, N * C_in, H, W): image n is group n
            weight.reshape(-1, *weight.shape[2:]),  # (N * out, C_in, kh, kw)
            bias,
            self.stride,
            self.padding,
            self.dilation,
            n,
        )  # (1, N * out, H', W')
        return y.view(n, out_per_image, y.shape[2], y.shape[3])  # (N, out, H', W')

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, side={self.side}"


class ChannelNorm2d(nn.BatchNorm2d):
    """A BatchNorm over C channels applied per image to k of them, with each channel's running
    statistics, in training too (its affine parameters still learn); without ``indices`` the plain
    BatchNorm over all C.

    Its running statistics are never re-estimated (``fixed_statistics``:
    `modify.train.evaluation.recalibrate_bn` leaves them): a batch of per-image channel sets does
    not estimate a channel's statistics, and what the original block measured stays each channel's.

    Example:
        >>> import torch
        >>> norm = ChannelNorm2d(4).eval()
        >>> norm.running_mean.copy_(torch.arange(4.0))
        tensor([0., 1., 2., 3.])
        >>> [round(v, 3) for v in norm(torch.zeros(1, 2, 1, 1), torch.tensor([[3, 1]])).flatten().tolist()]
        [-3.0, -1.0]
    """

    fixed_statistics = True

    def forward(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        if indices is None:
            return super().forward(x)
        assert self.running_var is not None and self.running_mean is not None
        picked = indices.reshape(-1)  # (N * k,)
        n, k, h, w = x.shape

        def rows(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, picked)  # (N * k,)

        y = F.batch_norm(
            x.reshape(1, n * k, h, w),  # image n's channels as channels n * k ... of one image
            rows(self.running_mean),
            rows(self.running_var),
            rows(self.weight),
            rows(self.bias),
            training=False,
            eps=self.eps,
        )  # (1, N * k, H, W)
        return y.view(n, k, h, w)


def _module_node(gm: fx.GraphModule, node: fx.Node, kind: type[nn.Module]) -> nn.Module | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, kind) else None


def _widened_conv(conv: nn.Conv2d, channels: int, side: str) -> ChannelConv2d:
    ins, outs = (channels, conv.out_channels) if side == "in" else (conv.in_channels, channels)
    return ChannelConv2d(
        ins,
        outs,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        side=side,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def _widened_norm(norm: nn.BatchNorm2d, channels: int) -> ChannelNorm2d:
    return ChannelNorm2d(
        channels,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        device=None if norm.running_mean is None else norm.running_mean.device,
    )


def channel_weight_branch(branch: nn.Module, channels: int) -> fx.GraphModule:
    """A copy of the reduced ``branch`` ((N, k, H, W) -> (N, k, H, W)) whose first convolution reads,
    and whose last convolution (and the BatchNorm after it) writes, all ``channels`` C, called as
    ``branch(x_sel, indices)`` to use each image's k (the module docstring). The widened layers start
    fresh; `modify.conversion.init` copies the original block's weights into them.

    Raises:
        ModifyError: the branch does not start with an ungrouped convolution reading its input (and
            nothing else reading it) or does not end with a convolution, or a convolution then a
            BatchNorm.

    Example:
        >>> import torch
        >>> branch = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
        >>> wide = channel_weight_branch(branch, 8)
        >>> wide(torch.randn(5, 2, 4, 4), torch.tensor([[0, 7]] * 5)).shape
        torch.Size([5, 2, 4, 4])
    """
    gm = copy.deepcopy(branch) if isinstance(branch, fx.GraphModule) else fx.symbolic_trace(branch)
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    (output,) = [n for n in nodes if n.op == "output"]
    hint = "use weights: slot (the paper's reduced block) for this block."
    if len(placeholders) != 1:
        raise ModifyError(f"weights: channel needs a branch with one input, got {len(placeholders)}; {hint}")
    readers = list(placeholders[0].users)
    first = readers[0] if len(readers) == 1 else None
    first_conv = _module_node(gm, first, nn.Conv2d) if first is not None else None
    if first_conv is None or first_conv.groups != 1:  # type: ignore[union-attr]
        raise ModifyError(f"weights: channel needs a branch whose input only an ungrouped convolution reads; {hint}")
    last = output.args[0]
    if not isinstance(last, fx.Node):
        raise ModifyError(f"weights: channel needs a branch that returns one tensor; {hint}")
    norm_node, conv_node = None, last
    if _module_node(gm, last, nn.BatchNorm2d) is not None and isinstance(last.args[0], fx.Node):
        norm_node, conv_node = last, last.args[0]
    last_conv = _module_node(gm, conv_node, nn.Conv2d)
    if last_conv is None or last_conv.groups != 1 or conv_node is first:  # type: ignore[union-attr]
        raise ModifyError(
            f"weights: channel needs a branch that ends with an ungrouped convolution (and a BatchNorm); {hint}"
        )
    with gm.graph.inserting_after(placeholders[0]):
        indices = gm.graph.placeholder("indices")
    widened: list[tuple[fx.Node, nn.Module]] = [
        (first, _widened_conv(first_conv, channels, "in")),  # type: ignore[arg-type]
        (conv_node, _widened_conv(last_conv, channels, "out")),  # type: ignore[arg-type]
    ]
    if norm_node is not None:
        widened.append((norm_node, _widened_norm(gm.get_submodule(str(norm_node.target)), channels)))  # type: ignore[arg-type]
    for node, module in widened:
        parent, _, leaf = str(node.target).rpartition(".")
        gm.get_submodule(parent).register_module(leaf, module)  # get_submodule("") is gm itself
        node.args = (*node.args, indices)
    gm.graph.lint()
    gm.recompile()
    return gm
