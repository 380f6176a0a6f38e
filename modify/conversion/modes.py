"""Which converted blocks branch on ``self.training``: torch.fx freezes such a branch to the mode
the model was traced in, and the conversion says so instead of freezing it silently.

torch.fx records one path through ``if self.training:``; a reduced block cut from that graph
runs that path in both modes. The calls whose ``training`` flag tracing freezes most often are
rebuilt as modules that follow the block's mode again (`modify.conversion.surgery.cut`: dropout, stochastic
depth, the batch norm of a traced-through BatchNorm subclass such as timm's BatchNormAct2d), so
`frozen_branches` traces the model in the other mode too and reports the blocks whose other
operations differ between the two graphs.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> from modify.conversion.discover import find_blocks
    >>> model = torchvision.models.resnet18(weights=None).eval()
    >>> frozen_branches(model, [s.name for s in find_blocks(trace(model, input_size=64))])
    []
"""

from __future__ import annotations

import functools
import inspect
from collections import defaultdict
from collections.abc import Collection, Iterable

import torch.nn.functional as F
from torch import fx, nn

from modify.conversion.tracing import LeafSpec, trace_graph
from modify.module_state import kept_modes

__all__ = ["frozen_branches", "mode_note"]

# Calls `modify.conversion.surgery.cut` rebuilds as modules that follow the block's mode.
_FOLLOWS_MODE = frozenset(
    {
        F.batch_norm,
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
    }
)


def _follows_mode(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _FOLLOWS_MODE:
        return True
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "stochastic_depth"


def _signature(graph: fx.Graph) -> dict[str, list[tuple[str, str]]]:
    """Per module path: the operations on values recorded in it, in order (parameter updates such as
    ``num_batches_tracked.add_(1)``, which read no value, and mode-following calls left out)."""
    ops: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or _follows_mode(node):
            continue
        if all(i.op == "get_attr" for i in node.all_input_nodes):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        paths = [path for path, _ in stack.values()] or [""]
        for path in paths:
            ops[path].append((node.op, str(node.target)))
    return ops


def _trace(model: nn.Module, training: bool, leaf_modules: Collection[LeafSpec]) -> fx.Graph:
    with kept_modes(model):
        return trace_graph(model.train(training), leaf_modules=leaf_modules)


@functools.cache
def _reads_training(cls: type[nn.Module]) -> bool:
    """Whether ``cls.forward`` mentions ``training`` (torch.nn's own modules are leaves: never traced)."""
    if cls.__module__.startswith("torch.nn.") or cls.forward is nn.Module.forward:
        return False
    try:
        return "training" in inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source (built in, generated): assume it might
        return True


def frozen_branches(model: nn.Module, blocks: Iterable[str], leaf_modules: Collection[LeafSpec] = ()) -> list[str]:
    """The names among ``blocks`` whose traced code differs between train and eval mode.

    A block name is a module path, or ``"<module>:<add node>"`` for an inline block (compared by
    its module). A model that does not trace in the other mode reports nothing; one whose
    modules' ``forward`` never mention ``training`` is not traced again.
    """
    blocks = list(blocks)
    if not blocks or not any(_reads_training(type(m)) for m in model.modules()):
        return []
    try:
        train, evaluation = (
            _signature(_trace(model, True, leaf_modules)),
            _signature(_trace(model, False, leaf_modules)),
        )
    except Exception:  # it traced in its own mode; the other one is not ours to judge
        return []
    names = []
    for name in blocks:
        path = name.partition(":")[0]
        if train.get(path, []) != evaluation.get(path, []):
            names.append(name)
    return names


def mode_note(names: list[str], training: bool) -> str | None:
    """The sentence a conversion report shows for `frozen_branches`' answer."""
    if not names:
        return None
    mode = "train" if training else "eval"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"{shown}: the block's forward branches on self.training; it was traced in {mode} mode, so the "
        f"converted block runs its {mode}-mode code in both modes (convert in the mode you will use it in)"
    )
