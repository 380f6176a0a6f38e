"""Residual Conv-Blocks in a traced graph -> `BlockSite` records.

Detection follows the fx catalog's rule (docs: fx-catalog.md, "Cleanest detection rule"):

1. Candidates are residual adds: ``operator.add`` / ``operator.iadd`` / ``torch.add`` /
   ``Tensor.add`` / ``Tensor.add_`` with two operands that are fx Nodes, both *data-derived*
   (reachable from a placeholder through data edges; ``size()``, ``.shape``, ``*_like`` and
   ``get_attr`` are not data), of equal shape. This drops bias and position-embedding adds.
2. The fork (block input) is the latest common data ancestor of both operands; the residual
   branch and the shortcut are the nodes between the fork and each operand. The path with more
   weight ops (conv / linear) is the branch.
3. The add is a residual Conv-Block if its branch holds at least one convolution (this drops
   transformer blocks), and it is not long-range: an add whose branch or shortcut contains
   another residual Conv add spans several blocks (FPN top-down merges) and is not returned.
4. The block is the innermost ``nn_module_stack`` entry of the add node.

In-place adds: ``out.add_(identity)`` gives an fx node with no users; the tensor it produced is
the mutated first operand ``out``, which later nodes read. `locate` treats the add node as the
block output (`SiteGraph.output`) and lists the later readers of the mutated operand as the
block's consumers (`SiteGraph.users`); a rewrite must redirect those readers, not the add's
(nonexistent) users.

The package, in the order a graph goes through it: `adds` (one residual add: fork, branch,
shortcut, post ops) and `sites` (the `BlockSite` records: names, stages, indices, reasons).
"""

from __future__ import annotations

from modify.conversion.discover.sites import (
    FOUND_BLOCKS as FOUND_BLOCKS,
    BlockSite as BlockSite,
    SiteGraph as SiteGraph,
    SkipKind as SkipKind,
    find_blocks as find_blocks,
    locate as locate,
)

__all__ = ["BlockSite", "SkipKind", "SiteGraph", "find_blocks", "locate", "FOUND_BLOCKS"]
