"""Constant folding and algebraic simplification.

In: a Graph. Out: the same graph object, where elementwise ops of constants are
constants and the identities below are applied; outputs keep their names. It
never changes a value a user can observe except the sign of a zero (x + 0).

    transpose(transpose(x)) -> x        transpose(v) -> v for a vector (NumPy's .T)
    x * 1, 1 * x, x / 1     -> x        x + 0, 0 + x, x - 0 -> x
    neg(neg(x))             -> x        op(constants)       -> a constant

A rule applies only when it keeps the value's shape (x * 1 with a 1 of a larger
shape broadcasts, and stays). x * 0 is not folded: it is NaN when x is.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Value
from graphc.ops import REGISTRY

# scalar ops safe to evaluate at compile time (the reference of each is NumPy on 0-d arrays)
FOLDABLE = frozenset({"add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
                      "square"})
IDENTITY_RIGHT = {"mul": 1.0, "div": 1.0, "add": 0.0, "sub": 0.0}   # x op c -> x
IDENTITY_LEFT = {"mul": 1.0, "add": 0.0}                            # c op x -> x


def _const(v: Value) -> float | None:
    n = v.node
    return n.attrs["value"] if n is not None and n.op.name == "const" else None


def _rewrite(node) -> Value | float | None:
    """What node's output equals: an existing value, a Python float (a new constant), or None."""
    op, ins = node.op.name, node.inputs
    out = node.output
    consts = [_const(v) for v in ins]
    if ins and op in FOLDABLE and all(c is not None for c in consts):
        with np.errstate(all="ignore"):
            value = float(REGISTRY[op].reference(*(np.array(c) for c in consts), **node.attrs))
        return value
    if op == "transpose":
        x = ins[0]
        if x.rank < 2:
            return x
        if x.node is not None and x.node.op.name == "transpose":
            return x.node.inputs[0]
    if op == "neg" and ins[0].node is not None and ins[0].node.op.name == "neg":
        return ins[0].node.inputs[0]
    if len(ins) == 2:
        x, y = ins
        if op in IDENTITY_RIGHT and consts[1] == IDENTITY_RIGHT[op] and x.shape == out.shape:
            return x
        if op in IDENTITY_LEFT and consts[0] == IDENTITY_LEFT[op] and y.shape == out.shape:
            return y
    return None


def fold(graph: Graph) -> Graph:
    """Apply the rules above in one forward sweep (each rule sees the already simplified inputs)."""
    const_op = REGISTRY["const"]
    rep: dict[Value, Value] = {}
    outputs = set(graph.outputs.values())
    kept = []
    for n in graph.nodes:
        n.inputs = tuple(rep.get(v, v) for v in n.inputs)
        new = _rewrite(n)
        if isinstance(new, float):
            if not np.isfinite(new):
                kept.append(n)       # leave log(0) and friends to run (and be seen) as written
                continue
            n.op, n.inputs, n.attrs = const_op, (), {"value": new}
            kept.append(n)
        elif new is not None and not (n.output in outputs and new.node is None):
            # (an output that would become an input or a param keeps its node: C writes outputs)
            rep[n.output] = new
            del graph.values[n.output.name]
        else:
            kept.append(n)
    graph.nodes = kept
    graph.outputs = {k: rep.get(v, v) for k, v in graph.outputs.items()}
    return graph
