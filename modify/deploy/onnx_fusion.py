"""The "folded" ONNX form of the fixed-slot fusion: the placement convolution folded into the
convolutions that read the block's output.

`modify.deploy.export.export_onnx` writes a fixed-slot fusion as ``out = x + Conv1x1(y, P)``
(P the 0/1 placement of the k channels of ``y`` among the C of ``x``). Where every reader of
``out`` is itself a convolution W (no groups), linearity gives

    Conv(out, W) = Conv(x, W) + Conv(y, W P)

and W P is W restricted to the slot's input channels (C_out, k, kh, kw): a thin convolution of
the k channels, added to the reader's own output, which ONNX Runtime fuses as the residual input
of the reader (its NCHWc Conv with Sum). The whole-width ``out`` is never written and the
placement convolution disappears; ``x`` stays in the blocked layout the convolution before it
produced. Fusions read by anything else (a pooling, an Add of a shortcut) keep the placement form.

Example:
    >>> import onnx
    >>> fold_placements(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])))
    0
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["fold_placements", "PLACEMENT_SUFFIX"]

# The name torch's ONNX exporter gives the placement buffers `modify.deploy.export.fusion_form` registers.
PLACEMENT_SUFFIX = "fusion.placement_weight"


def _placement_matrix(array: np.ndarray) -> np.ndarray | None:
    """P (C, k) if ``array`` (C, k, 1, 1) is a 0/1 placement (each column a single 1), else None."""
    if array.ndim != 4 or array.shape[2:] != (1, 1):
        return None
    p = array[:, :, 0, 0]
    if not np.isin(p, (0.0, 1.0)).all() or not (p.sum(axis=0) == 1).all() or (p.sum(axis=1) > 1).any():
        return None
    return p


def fold_placements(proto: Any) -> int:  # proto: onnx.ModelProto, changed in place
    """Folds every placement convolution whose fusion output only convolutions read (see the
    module docstring); returns how many were folded. Others are left as they are."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}
    dead: list[Any] = []
    gone: set[str] = set()  # tensors no node writes any more
    added: list[tuple[Any, list[Any]]] = []  # (reader, nodes to insert before it)
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Conv" or len(node.input) < 2 or not node.input[1].endswith(PLACEMENT_SUFFIX):
            continue
        weight = inits.get(node.input[1])
        p = _placement_matrix(numpy_helper.to_array(weight)) if weight is not None else None
        adds = readers[node.output[0]]
        if p is None or len(adds) != 1 or adds[0].op_type != "Add" or len(node.input) > 2:
            continue
        add = adds[0]
        x = add.input[0] if add.input[1] == node.output[0] else add.input[1]
        convs = readers[add.output[0]]
        if add.output[0] in outputs or not convs or not all(_foldable(c, add.output[0], inits) for c in convs):
            continue
        y = node.input[0]
        for i, conv in enumerate(convs):
            w = numpy_helper.to_array(inits[conv.input[1]])  # (C_out, C, kh, kw)
            thin = np.einsum("ochw,ck->okhw", w, p).astype(w.dtype)  # (C_out, k, kh, kw): W at the slot's channels
            thin_name = f"{conv.input[1]}.slot_{folded}_{i}"
            graph.initializer.append(numpy_helper.from_array(thin, thin_name))
            inits[thin_name] = graph.initializer[-1]
            wide, narrow = f"{conv.output[0]}.wide", f"{conv.output[0]}.slot"
            attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
            thin_conv = helper.make_node("Conv", [y, thin_name], [narrow], name=f"{conv.name}.slot", **attributes)
            total = helper.make_node("Add", [wide, narrow], [conv.output[0]], name=f"{conv.name}.fold")
            conv.input[0] = x
            conv.output[0] = wide
            added.append((conv, [thin_conv, total]))
        dead += [node, add]
        gone.update((node.output[0], add.output[0]))
        folded += 1
    if folded:
        order = list(graph.node)
        for conv, extra in added:  # after the reader: its output feeds the new Add
            at = order.index(conv) + 1
            order[at:at] = extra
        order = [n for n in order if not any(n is d for d in dead)]
        del graph.node[:]
        graph.node.extend(order)
        used = {name for n in graph.node for name in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        infos = [v for v in graph.value_info if v.name not in gone]
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return folded


def _foldable(conv: Any, data: str, inits: dict[str, Any]) -> bool:
    """A Conv whose data input (only) is ``data`` and whose weight is a constant, without groups."""
    from onnx import helper

    if (
        conv.op_type != "Conv"
        or len(conv.input) < 2
        or conv.input[0] != data
        or data in conv.input[1:]
        or conv.input[1] not in inits
    ):
        return False
    group = next((helper.get_attribute_value(a) for a in conv.attribute if a.name == "group"), 1)
    return group == 1
