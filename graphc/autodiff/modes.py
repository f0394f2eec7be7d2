"""Training and inference: the two modes of a graph, and the state a train step updates.

A graph is written as it trains: batch_norm normalizes by the batch's statistics, dropout
drops. NAME_predict runs it in inference: each op with an inference form (OpDef.inference:
batch_norm by its running statistics, dropout as the identity) replaced by it. A train step
updates the model state (Graph.states) by the ops' `state_updates`.

`replay` is the rewrite both this module and backend/lower.py make: a new graph, node by
node, where an op may give its node's value as other ops.
"""
from __future__ import annotations

from typing import Callable

from graphc.core.errors import GraphcError
from graphc.core.ir import Graph, Node, Origin, Value
from graphc.core.opdef import OpDef
from graphc.passes.simplify import simplify


def replay(graph: Graph, rewrite: Callable[[object, Node], Value | None], name: str | None = None) -> Graph:
    """A new graph with graph's inputs, params, state and outputs, each node copied, or replaced
    by rewrite(b, node) (node's inputs already the new graph's; b an autodiff Builder) when that
    returns a value; simplified. Values keep their names and origins."""
    from graphc.autodiff.grad import Builder
    g = Graph(name or graph.name, graph.dims)
    g.grad_spec, g.param_init, g.source_file = graph.grad_spec, dict(graph.param_init), graph.source_file
    vmap: dict[Value, Value] = {}
    for table, new in ((graph.inputs, g.inputs), (graph.params, g.params)):
        for k, v in table.items():     # as declared (a scan body's inputs have names graphc chose)
            vmap[v] = new[k] = g.values[k] = Value(g, k, v.type, None, v.kind)
    g.states = {k: g.params[k] for k in graph.states}
    b = Builder(g)
    for n in graph.nodes:
        ins = tuple(vmap[v] for v in n.inputs)
        shadow = type(n)(n.op, ins, n.attrs, n.output, n.origin)
        with g.origin(Origin(n.origin.text, n.origin.location, n.origin.forward, n.origin.identity)), \
                g.naming(n.output.name):
            new = rewrite(b, shadow)
        if new is None:
            vmap[n.output] = g.add_node(n.op, ins, dict(n.attrs), n.output.name, n.output.type, n.origin)
        else:
            if n.output.name not in g.values and new.node is not None and new.name.startswith(n.output.name + "__"):
                g.rename(new, n.output.name)
            vmap[n.output] = new
    g.outputs = {k: vmap[v] for k, v in graph.outputs.items()}
    return simplify(g)


def has_modes(graph: Graph) -> bool:
    """Whether some op of graph computes otherwise in inference (batch_norm, dropout)."""
    return any(type(n.op).inference is not OpDef.inference for n in graph.nodes)


def inference_graph(graph: Graph) -> Graph:
    """graph as NAME_predict computes it: batch_norm by its running statistics, dropout the
    identity (graph itself when no op differs)."""
    if not has_modes(graph):
        return graph
    return replay(graph, lambda b, n: n.op.inference(b, n))


def state_updates(g: Graph) -> dict[str, Value]:
    """{state name: its new value} after one train step, built in g from its nodes' ops
    (`state_updates`); a state two nodes would update differently is an error."""
    from graphc.autodiff.grad import Builder
    b, out, by = Builder(g), {}, {}
    for n in list(g.nodes):
        if type(n.op).state_updates is OpDef.state_updates:
            continue
        with g.origin(Origin(f"state update of {n.output.name}: {n.op.name}'s running values", n.origin.location)):
            for i, v in n.op.state_updates(b, n).items():
                name = n.inputs[i].name
                if name in out:
                    if n.op is by[name].op and n.op.shared_state:
                        continue                   # every dropout advances the one step count alike
                    raise GraphcError(f"state {name!r} is updated by two ops, {by[name].output.name} and {n.output.name}",
                                      hint="give each batch_norm its own running_mean and running_var")
                out[name], by[name] = v, n
    return out
