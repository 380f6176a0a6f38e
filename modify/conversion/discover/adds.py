"""One residual add of a traced graph: whether it is a block's residual Conv add, and if so its
fork, residual branch, shortcut, the element-wise ops on the sum and the nodes that read the
block's output (`FoundAdd`, holding a `SiteGraph`). `AddAnalysis` keeps the facts every add of
one graph shares (node order, the data-derived nodes); `residual_adds` runs it over a graph and
drops the long-range adds. `modify.conversion.discover.sites` names, stages and checks them.

Example:
    >>> import torchvision
    >>> from modify.conversion.tracing import trace
    >>> gm = trace(torchvision.models.resnet18(weights=None), input_size=32)
    >>> add = next(n for n in gm.graph.nodes if n.name == "add_1")
    >>> found = AddAnalysis(gm).analyse(add)
    >>> found.graph.fork.name, [n.name for n in found.graph.post]
    ('layer1_0_relu_1', ['layer1_1_relu_1'])
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable

from torch import fx

from modify.conversion.graph import (
    SiteGraph,
    add_form,
    data_nodes,
    has_conv,
    is_elementwise,
    is_weight_op,
    module_stack,
    shape_of,
)

__all__ = ["AddAnalysis", "FoundAdd", "residual_adds"]


@dataclasses.dataclass(frozen=True)
class FoundAdd:
    """Everything learned about one residual Conv add before stages and names are assigned."""

    graph: SiteGraph
    alpha: float
    ancestors: frozenset[fx.Node]  # data ancestors of both operands (fork and pre-fork included)


class AddAnalysis:
    """Per-graph facts shared by every add: node order and the data-derived set."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.data = data_nodes(gm.graph)

    def ancestors(self, node: fx.Node, *, data_only: bool = True) -> set[fx.Node]:
        seen = {node}
        todo = deque([node])
        while todo:
            for i in todo.popleft().all_input_nodes:
                if (i in self.data or not data_only) and i not in seen:
                    seen.add(i)
                    todo.append(i)
        return seen

    def descendants(self, node: fx.Node, limit: int, *, data_only: bool = True) -> set[fx.Node]:
        seen = {node}
        todo = deque([node])
        while todo:
            for u in todo.popleft().users:
                if (u in self.data or not data_only) and u not in seen and self.order[u] <= limit:
                    seen.add(u)
                    todo.append(u)
        return seen

    def parameter_only(self, node: fx.Node) -> bool:
        """A call computed from parameters and constants alone (no input reaches it)."""
        if node.op not in ("call_function", "call_method") or node in self.data:
            return False
        return all(i.op == "get_attr" or self.parameter_only(i) for i in node.all_input_nodes)

    def parameter_chains(self, nodes: Iterable[fx.Node]) -> set[fx.Node]:
        """The parameter-only calls that ``nodes`` read, directly or through each other."""
        chains: set[fx.Node] = set()
        todo = deque(i for n in nodes for i in n.all_input_nodes)
        while todo:
            i = todo.popleft()
            if i not in chains and self.parameter_only(i):
                chains.add(i)
                todo.extend(i.all_input_nodes)
        return chains

    def checks(self, nodes: Iterable[fx.Node], limit: int) -> set[fx.Node]:
        """The non-tensor calls before ``limit`` that read ``nodes`` and feed only each other
        (shape assertions): closed clusters that end in calls nothing reads."""
        cluster: set[fx.Node] = set()
        todo = deque(u for n in nodes for u in n.users)
        while todo:
            u = todo.popleft()
            if u in cluster or u in self.data or u.op not in ("call_function", "call_method") or self.order[u] > limit:
                continue
            cluster.add(u)
            todo.extend(u.users)
        closed = {u for u in cluster if all(v in cluster for v in u.users)}
        while True:  # drop nodes some of whose readers were dropped
            kept = {u for u in closed if all(v in closed for v in u.users)}
            if kept == closed:
                return closed
            closed = kept

    def candidate(self, node: fx.Node) -> tuple[fx.Node, fx.Node, float, bool] | None:
        """(first operand, second operand, alpha, in place) if ``node`` is a two-tensor add."""
        inplace = add_form(node)
        if inplace is None:
            return None
        if len(node.args) < 2:
            return None
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            return None
        if a not in self.data or b not in self.data:
            return None  # a bias / position embedding / metadata operand
        shape_a, shape_b = shape_of(a), shape_of(b)
        if shape_a is None or shape_a != shape_b:
            return None  # broadcasting adds are not residuals
        alpha_arg = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
        alpha = float(alpha_arg) if isinstance(alpha_arg, (int, float)) else math.nan
        return a, b, alpha, inplace

    def analyse(self, node: fx.Node) -> FoundAdd | None:
        """The SiteGraph of ``node`` if it is a residual add with a conv on its branch."""
        cand = self.candidate(node)
        if cand is None:
            return None
        a, b, alpha, inplace = cand
        anc_a, anc_b = self.ancestors(a), self.ancestors(b)
        common = anc_a & anc_b
        if not common:
            return None  # two independent inputs: not a skip connection
        fork = max(common, key=self.order.__getitem__)
        if shape_of(fork) is None:
            # The operands are parts of one split (Res2Net's `sp = sp + spx[i]`): an add inside
            # a branch, not a block's residual add.
            return None
        desc = self.descendants(fork, self.order[node])
        by_order = self.order.__getitem__
        path_a = sorted((anc_a & desc) - {fork}, key=by_order)
        path_b = sorted((anc_b & desc) - {fork}, key=by_order)
        weights_a = sum(is_weight_op(self.gm, n) for n in path_a)
        weights_b = sum(is_weight_op(self.gm, n) for n in path_b)
        # The residual branch carries more weight ops; on a tie the longer path, then operand 0.
        if (weights_b, len(path_b)) > (weights_a, len(path_a)):
            branch, skip = path_b, path_a
        else:
            branch, skip = path_a, path_b
        if not any(has_conv(self.gm, n) for n in branch):
            return None
        # The metadata ops a path reads off the fork (`b, c, _, _ = x.size()` in an SE block,
        # feeding a view) belong to it too: a rewrite that cuts the branch out needs them.
        # A metadata node both paths read is listed once, on the branch.
        reach = self.descendants(fork, self.order[node], data_only=False)
        operand, other = (branch[-1], skip[-1] if skip else fork)
        branch = sorted((self.ancestors(operand, data_only=False) & reach) - {fork}, key=by_order)
        # Parameters the branch transforms in its forward (ConvNeXt's `self.gamma.reshape(1, -1, 1,
        # 1)`) are nodes of their own that read no input: they belong to the branch and shrink with it.
        branch = sorted({*branch, *self.parameter_chains(branch)}, key=by_order)
        # Checks on the branch's values (`torch._assert(x.ndim == 4)` in timm's norm layers) read
        # its tensors but feed nothing: they go where the branch goes.
        branch = sorted({*branch, *self.checks(branch, self.order[node])}, key=by_order)
        if skip:
            skip = sorted((self.ancestors(other, data_only=False) & reach) - {fork} - set(branch), key=by_order)
        post, users = self._post(node, a if inplace else None)
        graph = SiteGraph(
            fork=fork,
            add=node,
            branch=tuple(branch),
            skip=tuple(skip),
            post=tuple(post),
            output=post[-1] if post else node,
            users=tuple(users),
            inplace=inplace,
            mutated=a if inplace else None,
        )
        return FoundAdd(graph=graph, alpha=alpha, ancestors=frozenset(anc_a | anc_b))

    def _readers(self, value: fx.Node, add: fx.Node, mutated: fx.Node | None) -> list[fx.Node]:
        """Nodes that read the tensor ``value`` holds; for an in-place add also the later readers
        of the mutated operand, which see the sum."""
        readers = list(value.users)
        if value is add and mutated is not None:
            readers += [u for u in mutated.users if self.order[u] > self.order[add] and u not in readers]
        return sorted(readers, key=self.order.__getitem__)

    def _post(self, add: fx.Node, mutated: fx.Node | None) -> tuple[list[fx.Node], list[fx.Node]]:
        """Element-wise ops right after the add in the add's own forward (same module scope)."""
        scope = [key for key, _, _ in module_stack(add)]
        post: list[fx.Node] = []
        value = add
        readers = self._readers(add, add, mutated)
        while len(readers) == 1:
            user = readers[0]
            operand = mutated if (value is add and mutated is not None and add not in user.all_input_nodes) else value
            inputs = [i for i in user.all_input_nodes if i in self.data]
            keys = [key for key, _, _ in module_stack(user)]
            same_scope = keys == scope or (user.op == "call_module" and keys[:-1] == scope)
            if inputs != [operand] or not same_scope or not is_elementwise(self.gm, user):
                break
            post.append(user)
            value = user
            readers = self._readers(user, add, mutated)
        return post, readers


def residual_adds(gm: fx.GraphModule, analysis: AddAnalysis | None = None) -> list[FoundAdd]:
    """Every block-level residual Conv add in graph order (long-range adds dropped)."""
    analysis = analysis or AddAnalysis(gm)
    conv_adds: set[fx.Node] = set()  # accepted and long-range: both make an outer add long-range
    found: list[FoundAdd] = []
    for node in gm.graph.nodes:
        item = analysis.analyse(node)
        if item is None:
            continue
        spans = set(item.graph.branch) | set(item.graph.skip)
        long_range = bool(spans & conv_adds)
        conv_adds.add(node)
        if item.graph.mutated is not None:
            # An add_ node has no users, so no later path runs through it; the mutated operand
            # it writes the sum into stands for it.
            conv_adds.add(item.graph.mutated)
        if not long_range:
            found.append(item)
    return found
