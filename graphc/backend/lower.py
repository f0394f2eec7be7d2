"""Lowering: composite ops (mean, dot, norm2, mse) become the kernel ops they are made of.

In: a Graph. Out: a new Graph without composite ops, values keeping their
names and origins. Runs just before codegen; the IR printer and `explain`
keep seeing the composites.
"""
from __future__ import annotations

from graphc.core.ir import Graph
from graphc.ops import OpDef


def lower(graph: Graph) -> Graph:
    from graphc.autodiff.modes import replay

    def composite(b, node):
        return node.op.lower(b, node) if type(node.op).lower is not OpDef.lower else None
    g = replay(graph, composite)
    # a lowering may build another composite (mse -> mean): lower again until none is left
    return lower(g) if any(type(n.op).lower is not OpDef.lower for n in g.nodes) else g
