"""The one tracer of `modify`: torch.fx symbolic tracing with MoD blocks as leaves, plus shapes.

Every stage that needs a graph (discovery, rewriting, profiling) goes through `trace`, so the
leaf rules live in one place: torch.nn's own modules, `MoDBlock` (a converted model re-traces
with each MoD block as one ``call_module`` node) and whatever the user names as a leaf.

After tracing, `trace` runs `torch.fx.passes.shape_prop.ShapeProp` so every tensor node carries
``node.meta["tensor_meta"]`` (shape, dtype, ...). torch.fx itself records
``node.meta["nn_module_stack"]`` (an ordered ``{key: (qualified path, module class)}``, innermost
last; a module called a second time gets the key ``"path@1"``), which discovery reads to name
blocks. Nodes created directly in the root module's forward (and placeholders/outputs) carry no
stack.

Example:
    >>> import torchvision
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=64)
    >>> node = next(n for n in gm.graph.nodes if n.name == "layer1_0_conv1")
    >>> tuple(node.meta["tensor_meta"].shape)
    (1, 64, 16, 16)
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC2701 (FakeTensorMode has no public home in torch)
from torch.fx.passes.shape_prop import ShapeProp

from modify.errors import ModifyError, TraceError, first_line
from modify.layers import MoDBlock
from modify.module_state import kept_modes

__all__ = [
    "ModifyTracer",
    "trace",
    "trace_graph",
    "default_input",
    "inputs_for",
    "LeafSpec",
    "leaf_record",
    "leaf_from_record",
]

# A leaf is named by module class (matched with isinstance) or by qualified name ("layer1.0").
LeafSpec = type[nn.Module] | str

# Substrings of torch.fx's own error messages -> the construct, in the user's terms.
_CONSTRUCTS: tuple[tuple[str, str], ...] = (
    ("cannot be used as inputs to control flow", "control flow on a tensor value (if/while/bool() on a traced tensor)"),
    ("cannot be iterated", "iteration over a Proxy (a for loop or *-unpacking of a traced value)"),
    ("'len' is not supported", "len() of a traced value"),
    (
        "found element of type Proxy",
        "a traced value passed where a plain Python number is needed (e.g. torch.rand(x.shape[0]))",
    ),
    ("must be tuple of ints, but found", "a traced value passed where a plain Python number is needed"),
)


class ModifyTracer(fx.Tracer):
    """`torch.fx.Tracer` whose leaves are torch.nn modules, `MoDBlock`s and user-named modules.

    Args:
        leaf_modules: extra leaves, each a module class (matched with ``isinstance``) or a
            qualified module name (``"layer1.0"``). A leaf becomes one ``call_module`` node and
            its forward is not traced, which is how an untraceable module is worked around.

    Example:
        >>> import torchvision
        >>> tracer = ModifyTracer([torchvision.models.resnet.BasicBlock])
        >>> graph = tracer.trace(torchvision.models.resnet18(weights=None))
        >>> sum(n.op == "call_module" and n.target.startswith("layer1") for n in graph.nodes)
        2
    """

    def __init__(self, leaf_modules: Collection[LeafSpec] = (), *, into_mod_blocks: bool = False) -> None:
        super().__init__()
        types: list[type[nn.Module]] = [] if into_mod_blocks else [MoDBlock]  # deploy folds inside them
        names: set[str] = set()
        for leaf in leaf_modules:
            if isinstance(leaf, str):
                names.add(leaf)
            elif isinstance(leaf, type) and issubclass(leaf, nn.Module):
                types.append(leaf)
            else:
                raise TypeError(
                    f"leaf_modules holds {leaf!r}; expected nn.Module "
                    "subclasses or qualified module names like 'layer1.0'."
                )
        self.leaf_types: tuple[type[nn.Module], ...] = tuple(types)
        self.leaf_names: frozenset[str] = frozenset(names)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def innermost_module(self) -> tuple[str, str] | None:
        """(qualified path, class name) of the module whose forward is being traced, if any.

        torch.fx pushes an entry on ``module_stack`` when it enters a module and pops it only
        on a normal return, so after a failure the last entry is where tracing stopped.
        """
        if not self.module_stack:
            return None
        path, module_type = next(reversed(self.module_stack.values()))
        return path, getattr(module_type, "__name__", str(module_type))


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    leaf_modules: Collection[LeafSpec] = (),
    input_size: int = 224,
) -> fx.GraphModule:
    """Symbolically traces ``model`` and records each node's output shape on ``node.meta``.

    The model is traced in its current train/eval mode (``if self.training`` is frozen as it is
    now). Shape propagation runs without gradients, with every module temporarily in eval mode
    (batch-1 BatchNorm statistics and dropout masks are irrelevant to shapes), under a forked
    RNG, and every buffer is restored afterwards: the model the caller passed, its modes, its
    buffers and the global random state stay bit-identical.

    The returned GraphModule shares its leaf modules (and so their parameters and buffers) with
    ``model``, as every fx GraphModule does.

    Args:
        model: the network. A GraphModule (a converted model, say) keeps its graph: it is
            copied with its node metadata, and ``leaf_modules`` does not apply to it.
        example_inputs: a tensor or a sequence of tensors, one per forward argument. Default:
            one ``(1, 3, input_size, input_size)`` tensor of seeded noise on the model's device.
        leaf_modules: module classes or qualified names not to trace through (besides torch.nn
            modules and `MoDBlock`).
        input_size: spatial size of the default example input.

    Returns:
        The GraphModule; tensor nodes carry ``meta["tensor_meta"]`` and, inside submodules,
        ``meta["nn_module_stack"]``.

    Raises:
        TraceError: the model cannot be traced (the message names the innermost module being
            traced, the construct, and how to mark it a leaf), or the traced graph fails to run
            on the example inputs.
        ModifyError: a leaf name that names no module of ``model``.

    Example:
        >>> import torchvision
        >>> gm = trace(torchvision.models.mobilenet_v2(weights=None), input_size=64)
        >>> [n for n in gm.graph.nodes][-1].args[0].meta["tensor_meta"].shape
        torch.Size([1, 1000])
    """
    tracer = ModifyTracer(leaf_modules)
    if isinstance(model, fx.GraphModule):
        # Already a graph at its own granularity (a converted model, say). Re-tracing it would
        # run its generated forward in the root and lose each node's nn_module_stack (block
        # names); a copy of the graph keeps the node metadata.
        graph = copy.deepcopy(model.graph)
    else:
        _check_leaf_names(model, tracer.leaf_names)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # anything raised while running forward on Proxies is a trace failure
            raise _trace_error(tracer, model, e) from e
    gm = fx.GraphModule(model if isinstance(model, fx.GraphModule) else tracer.root, graph, type(model).__name__)
    if not isinstance(model, fx.GraphModule):
        _note_batchnorm_modules(gm, model)
    _propagate_shapes(gm, model, example_inputs, input_size)
    return gm


BATCHNORM_META = "modify_batchnorm"


def _note_batchnorm_modules(gm: fx.GraphModule, model: nn.Module) -> None:
    """Marks each ``F.batch_norm`` call that a traced-through BatchNorm subclass made (timm's
    BatchNormAct2d) with that module's settings: tracing froze its ``self.training`` branches
    (batch statistics or running ones, the momentum), and a cut block rebuilds it as a module
    that follows its mode again (`modify.conversion.surgery.cut`)."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not F.batch_norm:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path = next(reversed(stack.values()))[0]
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            node.meta[BATCHNORM_META] = {
                "momentum": module.momentum,
                "affine": module.affine,
                "track_running_stats": module.track_running_stats,
            }


def leaf_record(spec: LeafSpec) -> str:
    """A leaf as a checkpoint stores it: a qualified module name as it is, a class by its import
    path ``"package.module:Class"`` (`leaf_from_record` reads it back).

    Example:
        >>> leaf_record(nn.Conv2d), leaf_record("layer1.0")
        ('torch.nn.modules.conv:Conv2d', 'layer1.0')
    """
    if isinstance(spec, str):
        return spec
    return f"{spec.__module__}:{spec.__qualname__}"


def leaf_from_record(record: str) -> LeafSpec:
    """The leaf a `leaf_record` string names; a class is imported again.

    Raises:
        ModifyError: the class cannot be imported (defined inside a function, or its module is gone).
    """
    if ":" not in record:
        return record
    import importlib

    module_name, _, qualname = record.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as e:
        raise ModifyError(
            f"the leaf module class {record!r} cannot be imported ({type(e).__name__}); define it at the top level "
            "of an importable module (a class made inside a function "
            "cannot be found again), or name the leaf by its path."
        ) from None
    if not (isinstance(value, type) and issubclass(value, nn.Module)):
        raise ModifyError(f"the leaf {record!r} is not an nn.Module class.")
    return value


def _check_leaf_names(model: nn.Module, names: frozenset[str]) -> None:
    if not names:
        return
    known = {name for name, _ in model.named_modules()}
    unknown = sorted(names - known)
    if unknown:
        raise ModifyError(
            f"leaf {unknown[0]!r} names no module of {type(model).__name__}; expected a qualified "
            "module name as in model.named_modules() (e.g. 'layer1.0')."
        )


def _describe_construct(e: BaseException) -> str:
    text = str(e)
    for needle, construct in _CONSTRUCTS:
        if needle in text:
            return construct
    first = first_line(e)
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(e).__name__}: {first}" if text.strip() else first


def trace_graph(
    model: nn.Module, *, leaf_modules: Collection[LeafSpec] = (), into_mod_blocks: bool = False
) -> fx.Graph:
    """The fx graph of ``model`` without shapes (`trace` adds them); a failure is a `TraceError`
    naming the module. ``into_mod_blocks`` traces the reduced blocks too (BatchNorm folding).

    Example:
        >>> import modify
        >>> graph = trace_graph(modify.get_model("resnet18_mod"), into_mod_blocks=True)
        >>> any(str(n.target).startswith("layer1.1.block") for n in graph.nodes if n.op == "call_module")
        True
    """
    tracer = ModifyTracer(leaf_modules, into_mod_blocks=into_mod_blocks)
    try:
        return tracer.trace(model)
    except Exception as e:
        raise _trace_error(tracer, model, e) from e


def _trace_error(tracer: ModifyTracer, model: nn.Module, e: BaseException) -> TraceError:
    construct = _describe_construct(e)
    where = tracer.innermost_module()
    if where is None or where[0] == "":
        cls = type(model).__name__ if where is None else where[1]
        err = TraceError(
            f"Cannot trace the model's own forward ({cls}): {construct}. The root cannot be a leaf: "
            "move that code into a submodule and mark it a leaf (leaf_modules= in the API, --leaf NAME in the CLI)."
        )
        err.module = ""  # type: ignore[attr-defined]
    else:
        path, cls = where
        err = TraceError(
            f"Cannot trace module '{path}' ({cls}): {construct}. Mark it a leaf to keep it as one opaque "
            f"call: leaf_modules=['{path}'] in the API, --leaf {path} in the CLI."
        )
        err.module = path  # type: ignore[attr-defined]
    err.construct = construct  # type: ignore[attr-defined]
    return err


def default_input(model: nn.Module, input_size: int) -> torch.Tensor:
    """One (1, 3, S, S) image of seeded noise in the model's dtype and on its device."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # A private generator: the caller's global random stream is not consumed.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, input_size, input_size, generator=generator, dtype=dtype)  # (1, 3, S, S)
    return x.to(device)


def inputs_for(
    model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None, input_size: int
) -> tuple[torch.Tensor, ...]:
    """The positional inputs a surgery runs ``model`` on: the user's example inputs as a tuple, or
    one `default_input` image of ``input_size`` when there are none.

    Example:
        >>> from torch import nn
        >>> [tuple(x.shape) for x in inputs_for(nn.Conv2d(3, 8, 3), None, 32)]
        [(1, 3, 32, 32)]
    """
    if example_inputs is None:
        return (default_input(model, input_size),)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


@contextlib.contextmanager
def _untouched(gm: fx.GraphModule) -> Iterator[None]:
    """Runs the body with all modules in eval mode; restores modes, buffers and the RNG after."""
    # Observers, BatchNorm in frozen train-mode code paths, ...: anything that writes a buffer
    # in forward is undone, so the shared modules stay bit-identical.
    saved = [(b, b.detach().clone()) for b in gm.buffers()]
    tensors = [*gm.parameters(), *gm.buffers()]
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    try:
        with kept_modes(gm), torch.random.fork_rng(devices=cuda), torch.no_grad():
            gm.eval()
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _propagate_shapes(
    gm: fx.GraphModule,
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None,
    input_size: int,
) -> None:
    inputs = inputs_for(model, example_inputs, input_size)
    with _untouched(gm), _quiet():
        # Fake tensors carry shapes without computing anything: ResNet50 at 224x224 propagates in
        # ~0.15 s instead of a full forward pass. Ops without a fake implementation fall back
        # to a real run, which also gives the clearer error when the graph cannot run at all.
        try:
            with torch.no_grad():
                _ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
            return
        except Exception:
            pass
        prop = _ShapeProp(gm)
        try:
            with torch.no_grad():
                prop.propagate(*inputs)
        except Exception as e:
            raise _shape_error(prop, e) from e


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's ShapeProp prints a traceback (and the fake-tensor logger a page) before it raises;
    the error `_shape_error` makes of it is the one line a user needs."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


class _ShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running, so a failure can name it."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _shape_error(prop: _ShapeProp, e: BaseException) -> TraceError:
    node = prop.current
    cause = e.__cause__ if e.__cause__ is not None else e
    first = first_line(cause, limit=160, typed=True)
    where = ""
    if node is not None:
        stack = node.meta.get("nn_module_stack") or {}
        path = next(reversed(stack.values()))[0] if stack else ""
        where = f" at node '{node.name}'" + (f" in module '{path}'" if path else "")
    return TraceError(
        f"The traced graph failed to run on the example inputs{where}: {first}. "
        "Check example_inputs / input_size, or mark the module a "
        "leaf (leaf_modules= in the API, --leaf NAME in the CLI)."
    )
