"""Shrinking a cut block: one pass over the copy at width k, each layer rebuilt for the input it
actually receives (`shrink`), the check that it maps (N, k, H, W) to itself (`check_shape`), and
both for one discovered block (`reduced_parts`).

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks, locate
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> g = locate(gm, find_blocks(gm)[1])
    >>> branch, _, _ = reduced_parts(gm, g, channels=64, k=4, height=8, width=8, init="copy")
    >>> branch.conv1.in_channels, branch.conv2.out_channels
    (4, 4)
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from modify.conversion.graph import SiteGraph, shape_of, split_sizes
from modify.conversion.surgery.cut import cut, set_attribute
from modify.conversion.surgery.literals import (
    SplitError,
    is_reshape,
    plan_splits,
    rescale_shape,
    rescale_slice,
    rescale_split,
)
from modify.conversion.surgery.rules import (
    FUNCTIONAL_SHRINKERS,
    LayerInput,
    Widths,
    channel_state,
    leading_slice,
    shrinker_for,
)
from modify.errors import SurgeryError, first_line
from modify.layers.options import Init
from modify.module_state import kept_modes

__all__ = ["shrink", "check_shape", "reduced_parts"]


_BROADCASTING = frozenset(
    {
        operator.mul,
        operator.add,
        operator.sub,
        operator.truediv,
        operator.iadd,
        operator.imul,
        torch.mul,
        torch.add,
        torch.sub,
        torch.div,
        torch.addcmul,
        torch.where,
        torch.maximum,
        torch.minimum,
    }
)
_BROADCASTING_METHODS = frozenset({"mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "addcmul", "expand_as"})


class _Pending:
    """A get_attr tensor not yet sliced: its first consumer decides its reduced shape."""

    def __init__(self, node: fx.Node, tensor: torch.Tensor) -> None:
        self.node = node
        self.tensor = tensor


class _ShrinkPass(fx.Interpreter):
    """Runs a cut block once at width k, as torch.fx's `Interpreter` runs a graph (and as its
    `ShapeProp` does, node by node), rebuilding each layer for the input it actually receives:
    modules by their `SHRINKERS` rule before they run, functional layers by their
    `FUNCTIONAL_SHRINKERS` rule, channel counts written into the code (splits, slices, reshape
    sizes) for the width that arrives, and parameters read through ``get_attr`` cut by their
    first reader."""

    def __init__(
        self, sub: fx.GraphModule, widths: Widths, init: Init, conv_outputs: dict[str, int] | None = None
    ) -> None:
        # Every value stays in `env` to the end: a parameter is cut when its first reader runs.
        super().__init__(sub, garbage_collect_values=False)
        self.extra_traceback = False  # a layer's own error is the reason the conversion report shows
        self.static = False  # no input shape to go by: every layer rebuilt by the widths alone, nothing run
        self.sub = sub
        self.widths = widths
        self.init = init
        self.conv_outputs = conv_outputs or {}  # conv target -> output width (`literals.plan_splits`)
        self.done: set[str] = set()
        self.channel_sizes = {widths.channels}
        self.parameter_chain: set[str] = set()  # calls computed from parameters alone (their dim 0 is no batch)
        for node in sub.graph.nodes:
            shape = shape_of(node)
            if shape is not None and len(shape) >= 3:
                self.channel_sizes.add(shape[1])
            inputs = node.all_input_nodes
            if (
                node.op in ("call_function", "call_method")
                and inputs
                and all(i.op == "get_attr" or i.name in self.parameter_chain for i in inputs)
            ):
                self.parameter_chain.add(node.name)

    # -- get_attr tensors ------------------------------------------------------------------

    def _store(self, pending: _Pending, value: torch.Tensor) -> torch.Tensor:
        old = pending.tensor
        value = nn.Parameter(value, old.requires_grad) if isinstance(old, nn.Parameter) else value
        set_attribute(self.sub, pending.node.target, value)
        self.done.add(pending.node.target)
        self.env[pending.node] = value
        return value

    def _slice_by_broadcast(self, pending: _Pending, others: list[tuple[fx.Node, torch.Tensor]]) -> torch.Tensor:
        """``pending`` sliced so it broadcasts against the reduced operand as it did against the original."""
        t = pending.tensor
        target = list(t.shape)
        node, value = max(others, key=lambda item: item[1].dim())
        before = shape_of(node)
        if before is None:
            return self._slice_by_widths(pending)
        for i in range(1, t.dim() + 1):
            if i <= len(before) and i <= value.dim() and t.shape[-i] == before[-i] and t.shape[-i] > 1:
                target[-i] = int(value.shape[-i])
        return self._store(pending, leading_slice(t.data, tuple(target)))

    def _slice_by_widths(self, pending: _Pending) -> torch.Tensor:
        t = pending.tensor
        sizes = tuple(self.widths(d) if d > 1 and d in self.channel_sizes else d for d in t.shape)
        return self._store(pending, leading_slice(t.data, sizes))

    def _resolve(self, value: Any, others: list[tuple[fx.Node, torch.Tensor]] | None = None) -> Any:
        if isinstance(value, _Pending):
            if value.node in self.env and not isinstance(self.env[value.node], _Pending):
                return self.env[value.node]
            return self._slice_by_broadcast(value, others) if others else self._slice_by_widths(value)
        return value

    # -- the pass, node by node ----------------------------------------------------------------

    def placeholder(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = super().placeholder(target, args, kwargs)
        self.static = x is None  # a graph that never went through shape propagation
        return x

    def run_node(self, node: fx.Node) -> Any:
        if node.op == "get_attr":  # a parameter is cut when its first reader decides its shape
            value = self.fetch_attr(str(node.target))
            return value if node.target in self.done else _Pending(node, value)
        if node.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(node)  # placeholder: the (1, k, H, W) input; output
        fetched_args, fetched_kwargs = self.fetch_args_kwargs_from_env(node)
        args, kwargs = list(fetched_args), dict(fetched_kwargs)
        if self.static:
            self._static(node, args, kwargs)
            return None
        if node.op == "call_module":
            args = [self._resolve(a) for a in args]
            kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
            self._rebuild_module(node, tuple(args), kwargs)
        else:
            self._rescale_split(node, args, kwargs)
            self._rescale_literals(node, args)
            if not self._functional(node, args, kwargs):
                tensors = [(n, self.env[n]) for n in node.all_input_nodes if isinstance(self.env.get(n), torch.Tensor)]
                broadcast = node.target in _BROADCASTING or (
                    node.op == "call_method" and node.target in _BROADCASTING_METHODS
                )
                args = [self._resolve(a, tensors if broadcast else None) for a in args]
                kwargs = {k: self._resolve(v, tensors if broadcast else None) for k, v in kwargs.items()}
        return getattr(self, node.op)(node.target, tuple(args), kwargs)

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The rebuilt module, run in eval mode (its modes put back after): the pass needs shapes, not statistics."""
        module = self.fetch_attr(target)
        with kept_modes(module):
            return module.eval()(*args, **kwargs)

    def _rebuild_module(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
        """The module ``node`` calls, rebuilt by its rule for the input it receives (once, however
        often it is called)."""
        target = str(node.target)
        module = self.sub.get_submodule(target)
        if target in self.done:
            return module  # a module called twice (torchvision's ResNets reuse their ReLU)
        self.done.add(target)
        shrinker = shrinker_for(module)
        first = next((a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)), None)
        value = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        seen = LayerInput(shape_of(first), tuple(value.shape) if value is not None else None)
        if shrinker is not None:
            widths = self.widths
            if target in self.conv_outputs:  # a width decided elsewhere: concatenated parts, a narrowed layer
                produced = getattr(module, "out_channels", None) or module.out_features
                widths = widths.with_fixed({produced: self.conv_outputs[target]})
            module = shrinker(module, widths, self.init, seen)
            set_attribute(self.sub, target, module)
        else:
            state = channel_state(module)
            unchanged = self.widths.k == self.widths.channels and seen.after == seen.before
            if state and not unchanged:  # at k = C (the identity configuration) a copy is exact
                raise SurgeryError(
                    f"no rule shrinks a {type(module).__name__} ({target}), which holds channel-sized "
                    f"state ({', '.join(state[:3])}); register one with modify.conversion.surgery.register_shrinker"
                )
        return module

    def _functional(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Rewrites constants and parameters of a functional layer for its reduced input (its
        `FUNCTIONAL_SHRINKERS` rule); False for a call no rule covers."""
        rule = FUNCTIONAL_SHRINKERS.get(node.target)  # type: ignore[arg-type]
        if rule is None:
            return False
        call = _Call(self, node, rule.arguments, args, kwargs)
        x = self._resolve(call.values[rule.arguments[0]])
        if not isinstance(x, torch.Tensor):
            return False
        call.input, call.channels = x, int(x.shape[1]) if x.dim() > 1 else int(x.shape[-1])
        rule.rebuild(call)
        for name, value in list(call.values.items()):
            if isinstance(value, _Pending):  # any other parameter it reads
                call.put(name, self._resolve(value))
        return True

    def _rescale_split(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> None:
        """A channel split's sizes, rescaled to the width that actually arrives (graph and run);
        only sizes written as numbers in the graph (computed ones already fit)."""
        if not args or split_sizes(node) is None:
            return
        x = self._resolve(args[0])
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            return
        try:
            sizes = rescale_split(node, int(x.shape[1]))
        except SplitError as e:
            raise SurgeryError(f"the block {e}") from e
        if sizes is None:
            return
        if len(node.args) > 1:
            node.update_arg(1, sizes)
            args[1] = sizes
        else:
            key = "split_size_or_sections" if "split_size_or_sections" in node.kwargs else "split_size"
            node.update_kwarg(key, sizes)
            kwargs[key] = sizes

    def _rescale_literals(self, node: fx.Node, args: list[Any]) -> None:
        """Channel slices and reshape sizes written as numbers in the graph, for the width that
        arrives. Values the graph computes (``x.shape[1] // 2``) already fit and stay as they are."""
        slicing = node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2
        if not args or not (slicing or is_reshape(node)):
            return
        x = self._resolve(args[0])
        if not isinstance(x, torch.Tensor):
            return
        if slicing:
            index = rescale_slice(node, node.args[1], int(x.shape[1]), self.widths) if x.dim() >= 3 else None
            if index is not None:
                node.update_arg(1, index)
                args[1] = index
            return
        packed = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
        written = list(node.args[1]) if packed else list(node.args[1:])  # ints, or nodes the graph computes
        source = node.args[0]
        parameter = isinstance(source, fx.Node) and (source.op == "get_attr" or source.name in self.parameter_chain)
        new = rescale_shape(node, written, tuple(x.shape), batch_first=not parameter)
        if new is None:
            return
        running = list(args[1]) if packed else args[1:]
        values = [n if isinstance(w, int) else r for w, n, r in zip(written, new, running, strict=True)]
        if packed:
            node.update_arg(1, type(node.args[1])(new))
            args[1] = type(args[1])(values)
        else:
            for i, (w, n) in enumerate(zip(written, new, strict=True), start=1):
                if isinstance(w, int):
                    node.update_arg(i, n)
            args[1:] = values

    def _static(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Shrinking without shapes (a graph that never went through shape propagation)."""
        if node.op == "call_module":
            self._rebuild_module(node, (), {})
        for value in (*args, *kwargs.values()):
            if isinstance(value, _Pending):
                self._resolve(value)


class _Call:
    """One functional call as its rule sees it (`modify.conversion.surgery.rules.FunctionalCall`)."""

    input: torch.Tensor
    channels: int

    def __init__(
        self, owner: _ShrinkPass, node: fx.Node, names: tuple[str, ...], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self.owner, self.node, self.names, self.args, self.kwargs = owner, node, names, args, kwargs
        self.widths = owner.widths
        # As the call was written (name -> value or _Pending): positional arguments fill the first names.
        self.values = {**dict(zip(names, args, strict=False)), **kwargs}

    def value(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name, default)
        return value.tensor if isinstance(value, _Pending) else value

    def parameter(self, name: str) -> torch.Tensor | None:
        value = self.values.get(name)
        return value.tensor if isinstance(value, _Pending) else None

    def put(self, name: str, value: Any) -> None:
        # The run gets the new value; the graph too, unless it is a tensor (its get_attr now
        # reads the cut one) or the graph computes it (a node stays a node).
        position = self.names.index(name)
        in_args = position < len(self.args)
        original = self.node.args[position] if in_args else self.node.kwargs.get(name)
        if in_args:
            self.args[position] = value
        else:
            self.kwargs[name] = value
        if isinstance(value, torch.Tensor) or isinstance(original, fx.Node):
            return
        if in_args:
            self.node.update_arg(position, value)
        else:
            self.node.update_kwarg(name, value)

    def cut(self, name: str, sizes: tuple[int, ...]) -> None:
        value = self.values.get(name)
        if isinstance(value, _Pending):
            self.put(name, self.owner._store(value, leading_slice(value.tensor.data, sizes)))


def _device_dtype(sub: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*sub.parameters(), *sub.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def shrink(
    sub: fx.GraphModule, widths: Widths, init: Init | str = Init.SCRATCH, *, outputs: dict[str, int] | None = None
) -> fx.GraphModule:
    """Rewrites every layer of ``sub`` (a block cut with `cut`) to the reduced widths, in place.

    When the input carries a shape (``tensor_meta``, as `cut` copies it from a traced graph),
    ``sub`` is run once on a (1, k, H, W) input and each layer is rebuilt for the input it
    actually receives; otherwise every channel count is scaled by ``widths`` alone. ``outputs``
    fixes the output width of some layers (module target -> width) whatever ``widths`` says
    (`modify.conversion.surgery.narrow` cuts a block's inner widths this way).

    Raises:
        SurgeryError: a layer that holds channel-sized state and has no shrinker, a layer that
            would degenerate at width k, or a block that does not run at width k; the message
            names the layer.
    """
    init = Init.from_str(init)
    placeholder = next(n for n in sub.graph.nodes if n.op == "placeholder")
    before = shape_of(placeholder)
    x = None
    if before is not None and len(before) >= 2:
        device, dtype = _device_dtype(sub)
        generator = torch.Generator().manual_seed(0)
        shape = (1, widths(before[1]), *before[2:])
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)  # (1, k, H, W)
    plan = plan_splits(sub, widths, widths.channels)
    widths = widths.with_fixed(plan.totals)
    try:
        with torch.no_grad():
            _ShrinkPass(sub, widths, init, {**plan.conv_outputs, **(outputs or {})}).run(x)
    except SurgeryError:
        raise
    except Exception as e:  # a layer that does not fit the reduced widths
        if "more than 1 value per channel" in str(e):  # NF-ResNet's weight standardisation of a 1-input filter
            raise SurgeryError(
                f"at width {widths.k} a normalization in the block would see a single value per channel "
                f"({first_line(e, limit=200, typed=True)}); give it a larger k"
            ) from e
        raise SurgeryError(f"the block does not run at width {widths.k}: {first_line(e, limit=200, typed=True)}") from e
    sub.recompile()
    return sub


def check_shape(sub: nn.Module, k: int, height: int, width: int) -> None:
    """Checks that ``sub`` maps (N, k, H, W) to (N, k, H, W) with finite values, in eval mode
    (batch 1) and in train mode (batch 2; its buffers, such as running statistics, are restored
    after): a hard-coded width, a training-only path that does not fit, or a degenerate layer
    shows up here. Modes, buffers and the global random state are left as they were.

    Raises:
        SurgeryError: it fails to run, returns another shape, or returns non-finite values.
    """
    device, dtype = _device_dtype(sub)
    expected = (k, height, width)
    generator = torch.Generator().manual_seed(0)
    saved = [(b, b.detach().clone()) for b in sub.buffers()]
    for training, batch in ((False, 1), (True, 2)):
        x = torch.randn(batch, k, height, width, generator=generator, dtype=dtype).to(device)  # (N, k, H, W)
        try:
            cuda = [device.index or 0] if device.type == "cuda" else []
            with kept_modes(sub), torch.no_grad(), torch.random.fork_rng(devices=cuda):
                out = sub.train(training)(x)
        except Exception as e:  # any failure means the block did not shrink cleanly
            mode = "train" if training else "eval"
            raise SurgeryError(
                f"the block does not run at width {k} in {mode} mode: {first_line(e, limit=200, typed=True)}"
            ) from e
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, *expected):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SurgeryError(f"the block at width {k} returns shape {shape}, not {(batch, *expected)}")
        if not torch.isfinite(out).all():
            raise SurgeryError(f"the block at width {k} returns non-finite values")


def reduced_parts(
    gm: fx.GraphModule, graph: SiteGraph, *, channels: int, k: int, height: int, width: int, init: Init | str
) -> tuple[fx.GraphModule, fx.GraphModule | None, fx.GraphModule | None]:
    """(branch at width k, post-add ops at width k, post-add ops at full width) of one block of
    ``channels`` channels at ``height`` x ``width``.

    Raises:
        SurgeryError: the block cannot be rebuilt at width k; nothing of it is kept.
    """
    widths = Widths(channels, k)
    try:
        branch = shrink(cut(gm, graph.fork, graph.branch, graph.branch_operand), widths, init)
        check_shape(branch, k, height, width)
        post_full = post_k = None
        if graph.post:
            post_full = cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd")
            post_k = shrink(cut(gm, graph.add, graph.post, graph.post[-1], name="PostAdd"), widths, init)
            check_shape(post_k, k, height, width)
    except SurgeryError:
        raise
    except Exception as e:  # never let one odd block abort the whole conversion
        raise SurgeryError(f"the block could not be cut out and shrunk: {first_line(e, limit=200, typed=True)}") from e
    return branch, post_k, post_full
