"""Lowering: composite ops (mean, dot, norm2, mse) become the kernel ops they are made of.

In: a Graph. Out: a new Graph without composite ops, values keeping their
names and origins. Runs just before codegen; the IR printer and `explain`
keep seeing the composites.
"""
from __future__ import annotations

from graphc.core.ir import Graph, Origin, Value
from graphc.ops import OpDef
from graphc.passes.simplify import simplify


def lower(graph: Graph) -> Graph:
    from graphc.autodiff.grad import Builder
    g = Graph(graph.name, graph.dims)
    g.grad_spec, g.param_init, g.source_file = graph.grad_spec, dict(graph.param_init), graph.source_file
    vmap: dict[Value, Value] = {}
    for table, new in ((graph.inputs, g.input), (graph.params, g.param)):
        for k, v in table.items():
            vmap[v] = new(k, v.shape, v.dtype)
    b = Builder(g)
    for n in graph.nodes:
        ins = tuple(vmap[v] for v in n.inputs)
        low = None
        if type(n.op).lower is not OpDef.lower:   # the op defines a lowering
            shadow = type(n)(n.op, ins, n.attrs, n.output, n.origin)
            with g.origin(Origin(n.origin.text, n.origin.location, n.origin.forward, n.origin.identity)), \
                    g.naming(n.output.name):
                low = n.op.lower(b, shadow)
        if low is None:
            vmap[n.output] = g.add_node(n.op, ins, dict(n.attrs), n.output.name, n.output.type, n.origin)
        else:
            if n.output.name not in g.values and low.node is not None and low.name.startswith(n.output.name + "__"):
                g.rename(low, n.output.name)
            vmap[n.output] = low
    g.outputs = {k: vmap[v] for k, v in graph.outputs.items()}
    g = simplify(g)
    # a lowering may build another composite (mse -> mean): lower again until none is left
    return lower(g) if any(type(n.op).lower is not OpDef.lower for n in g.nodes) else g
