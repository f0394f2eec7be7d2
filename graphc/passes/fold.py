"""Constant folding and algebraic simplification.

In: a Graph. Out: the same graph object, where elementwise ops of constants are
constants and the identities below are applied; outputs keep their names. It
never changes a value a user can observe except the sign of a zero (x + 0).

    transpose(transpose(x)) -> x        transpose(v) -> v for a vector (NumPy's .T)
    x * 1, 1 * x, x / 1     -> x        x + 0, 0 + x, x - 0 -> x
    neg(neg(x))             -> x        op(constants)       -> a constant

A rule applies only when it keeps the value's shape (x * 1 with a 1 of a larger
shape broadcasts, and stays). x * 0 is not folded: it is NaN when x is.
`rewrite` is the rule table: the autodiff Builder asks it too, as it builds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from graphc.core.errors import GraphcError
from graphc.core.ir import Graph, Shape, TensorType, Value
from graphc.ops import REGISTRY

# scalar ops safe to evaluate at compile time (the reference of each is NumPy on 0-d arrays)
FOLDABLE = frozenset({"add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
                      "square"})
IDENTITY_RIGHT = {"mul": 1.0, "div": 1.0, "add": 0.0, "sub": 0.0}   # x op c -> x
IDENTITY_LEFT = {"mul": 1.0, "add": 0.0}                            # c op x -> x


def _const(v: Value | float) -> float | None:
    """The number v is: a Python number, or the value of a const node; None for anything else."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    n = v.node
    return n.attrs["value"] if n is not None and n.op.name == "const" else None


def _result_shape(op: str, inputs: Sequence[Value | float], attrs: dict) -> Shape | None:
    """The shape op's rule gives op(inputs); None when the rule refuses them (apply will say why)."""
    try:
        types = [v.type if isinstance(v, Value) else TensorType(()) for v in inputs]
        return REGISTRY[op].shape(*types, **attrs).shape
    except GraphcError:
        return None


def rewrite(op: str, inputs: Sequence[Value | float], attrs: dict, shape: Shape | None = None,
            constants: bool = True) -> Value | float | None:
    """What op(inputs) equals by the rules above: an existing value, a Python float (a new
    constant), or None. Inputs may be Python numbers (the autodiff Builder's `b.mul(d, 2.0)`).
    shape: of the result, when known (the op's shape rule gives it otherwise). constants=False
    skips folding constants into a new one (the Builder leaves that to this pass) and lets the
    identities keep a constant operand."""
    consts = [_const(v) for v in inputs]
    if constants and inputs and op in FOLDABLE and all(c is not None for c in consts):
        with np.errstate(all="ignore"):
            value = float(REGISTRY[op].reference(*(np.array(c) for c in consts), **attrs))
        return value
    if op == "transpose":
        x = inputs[0]
        if x.rank < 2:
            return x
        if x.node is not None and x.node.op.name == "transpose":
            return x.node.inputs[0]
    if op == "neg" and isinstance(inputs[0], Value) and inputs[0].node is not None \
            and inputs[0].node.op.name == "neg":
        return inputs[0].node.inputs[0]
    if len(inputs) == 2:
        for side, table in ((0, IDENTITY_RIGHT), (1, IDENTITY_LEFT)):
            kept = inputs[side]
            if op in table and consts[1 - side] == table[op] and isinstance(kept, Value):
                if shape is None:
                    shape = _result_shape(op, inputs, attrs)
                if kept.shape == shape:
                    return kept
    return None


def fold(graph: Graph) -> Graph:
    """Apply the rules above in one forward sweep (each rule sees the already simplified inputs)."""
    const_op = REGISTRY["const"]
    rep: dict[Value, Value] = {}
    outputs = set(graph.outputs.values())
    kept = []
    for n in graph.nodes:
        n.inputs = tuple(rep.get(v, v) for v in n.inputs)
        new = rewrite(n.op.name, n.inputs, n.attrs, n.output.shape)
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
