"""Simplification: folding (passes/fold.py), common-subexpression and dead-code elimination.

In: a Graph. Out: the same graph object, constants folded and identities such as
x * 1 applied, identical nodes (same op, inputs and attributes) merged and dead
nodes removed. Outputs keep their names.
"""
from __future__ import annotations

from graphc.core.ir import Graph, Value
from graphc.passes.fold import fold


def dce(graph: Graph) -> Graph:
    """Drop nodes no output depends on."""
    live: set[Value] = set(graph.outputs.values())
    keep = []
    for n in reversed(graph.nodes):
        if n.output in live:
            keep.append(n)
            live.update(n.inputs)
        else:
            del graph.values[n.output.name]
    graph.nodes = keep[::-1]
    return graph


def _key(n, rep):
    attrs = tuple(sorted((k, repr(v)) for k, v in n.attrs.items()))
    return (n.op.name, tuple(id(rep.get(v, v)) for v in n.inputs), attrs)


def cse(graph: Graph) -> Graph:
    """Merge nodes that compute the same op of the same inputs; the first (forward) one stays."""
    seen: dict = {}
    rep: dict[Value, Value] = {}
    kept = []
    for n in graph.nodes:
        n.inputs = tuple(rep.get(v, v) for v in n.inputs)
        k = _key(n, rep)
        if k in seen:
            rep[n.output] = seen[k]
            del graph.values[n.output.name]
            continue
        seen[k] = n.output
        kept.append(n)
    graph.nodes = kept
    graph.outputs = {k: rep.get(v, v) for k, v in graph.outputs.items()}
    return graph


def simplify(graph: Graph) -> Graph:
    return dce(cse(fold(graph)))
