"""Stage 3: reverse-mode differentiation by the identities of the notes.

In: a forward Graph, a scalar `of` and the names to differentiate `wrt`.
Out: a new Graph holding the forward nodes, the backward nodes (built from
ordinary ops through each op's VJP) and outputs `d_<name>` in the shape of
<name>. It never evaluates anything and never builds a Jacobian matrix.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

from graphc.core.errors import GradientError, GraphcError
from graphc.core.ir import FLOAT, Graph, Origin, Value
from graphc.ops.linear import swaps_last_two
from graphc.passes.fold import rewrite
from graphc.passes.simplify import simplify


class Builder:
    """What a VJP rule builds with: graph ops, simplified as they are built by the rules of
    passes/fold.py (no `* 1`, no `(Aᵀ)ᵀ`, no `−−x`), so backward graphs read as the notes write
    them, plus one rewrite of its own: δᵀ x rather than (xᵀ δ)ᵀ."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.created: set[Value] = set()

    @contextlib.contextmanager
    def because(self, node, identity: str | None):
        """Stamp the nodes built inside with the forward node they differentiate and the identity."""
        o = node.origin
        with self.graph.origin(Origin(o.text, o.location, node, identity)):
            yield

    def apply(self, opname: str, *inputs, **attrs) -> Value:
        """opname(inputs), or the existing value it equals by fold's rules. Constants are not
        folded here: the fold pass that grad runs at the end does it."""
        if opname == "permute" and swaps_last_two(attrs.get("axes", ())):
            swapped = self._swapped_product(inputs[0])
            if swapped is not None:
                return swapped
        same = rewrite(opname, inputs, attrs, constants=False)
        if same is not None:
            return same
        v = self.graph.apply(opname, *inputs, **attrs)
        self.created.add(v)
        return v

    def const(self, value: float) -> Value:
        return self.apply("const", value=float(value))

    def mul(self, a, b):
        return self.apply("mul", a, b)

    def div(self, a, b):
        return self.apply("div", a, b)

    def add(self, a, b):
        return self.apply("add", a, b)

    def sub(self, a, b):
        return self.apply("sub", a, b)

    def neg(self, a):
        return self.apply("neg", a)

    def matmul(self, a, b):
        return self.apply("matmul", a, b)

    def transpose(self, a):
        n = a.node
        if n is not None and n.op.name == "matmul" and a in self.created and all(v.rank == 2 for v in n.inputs):
            # (P Q)ᵀ = Qᵀ Pᵀ: reads dJ/dW = δᵀ x directly (identity 5) instead of (xᵀ δ)ᵀ
            x, w = n.inputs
            with self.graph.origin(Origin(n.origin.text, n.origin.location, n.origin.forward,
                                          "5" if n.origin.identity == "6" else n.origin.identity)):
                return self.matmul(self.transpose(w), self.transpose(x))
        if n is not None and n.op.name == "patch_matmul" and a in self.created and n.attrs["mode"] == "tn" \
                and n.attrs["groups"] == 1 and len(n.inputs) == 2:
            # (Σ_rows xᵀ δ)ᵀ = Σ_rows δᵀ x: the weight gradient of rows of x (rank 3-4) times Wᵀ,
            # identity (5), in W's shape without a transposed copy
            x, d = n.inputs
            with self.graph.origin(Origin(n.origin.text, n.origin.location, n.origin.forward,
                                          "5" if n.origin.identity == "6" else n.origin.identity)):
                return self.apply("patch_matmul", d, x, mode="tn")
        return self.apply("transpose", a)

    def _swapped_product(self, a: Value) -> Value | None:
        """(P Q)ᵀ = Qᵀ Pᵀ per batch element, for a batched product this builder made: a gradient
        such as dJ/dk = δᵀ q (identity (5)) read directly instead of (qᵀ δ) permuted."""
        n = a.node
        if n is None or n.op.name != "matmul" or a not in self.created or a.rank < 3 \
                or any(v.rank < 2 for v in n.inputs):
            return None
        p, q = n.inputs
        with self.graph.origin(Origin(n.origin.text, n.origin.location, n.origin.forward,
                                      "5" if n.origin.identity == "6" else n.origin.identity)):
            return self.matmul(self.swap(q), self.swap(p))

    def swap(self, v: Value) -> Value:
        """v with its last two axes swapped (a matrix's ᵀ)."""
        if v.node is not None and v.node.op.name == "permute" and swaps_last_two(v.node.attrs["axes"]):
            return v.node.inputs[0]
        if v.rank <= 2:
            return self.transpose(v)
        return self.apply("permute", v, axes=tuple(range(v.rank - 2)) + (v.rank - 1, v.rank - 2))

    def outer(self, a, b):
        """a bᵀ for vectors, as (m×1)(1×n)."""
        col = self.apply("reshape", a, shape=a.shape + (1,))
        row = self.apply("reshape", b, shape=(1,) + b.shape)
        return self.matmul(col, row)

    def grad(self, graph: Graph, of: Value, wrt: Sequence[str]) -> Graph:
        """The backward graph of another graph: a scan's VJP differentiates its body (ops/scan_grad.py)."""
        return grad(graph, of, wrt)

    def zeros(self, shape) -> Value:
        return self.apply("broadcast_to", self.const(0.0), shape=tuple(shape))


def _lookup(g: Graph, name: str, what: str) -> Value:
    """g[name], but an unknown name is a GradientError (with g's did-you-mean hint)."""
    try:
        return g[name]
    except GraphcError as e:
        raise GradientError(f"grad: {what} {name!r} is not a value or output of graph {g.name!r}",
                            hint=e.hint) from None


def _resolve_of(g: Graph, of: str | Value) -> Value:
    v = _lookup(g, of, "of") if isinstance(of, str) else g.values.get(of.name)
    if v is None:
        raise GradientError(f"grad: {of!r} is not in graph {g.name!r}")
    if v.shape != ():
        raise GradientError(f"grad: 'of' must be a scalar loss, but {v.name} has shape {g.format_shape(v.shape)}",
                            hint="reduce it first, e.g. sum(...) or mean(...)")
    return v


def _resolve_wrt(g: Graph, wrt: Sequence[str]) -> list[Value]:
    if isinstance(wrt, str):
        wrt = [wrt]
    out = []
    for name in wrt:
        name = name.name if isinstance(name, Value) else name
        if name not in g.inputs and name not in g.params:
            v = _lookup(g, name, "wrt")  # raises with a suggestion when unknown
            raise GradientError(f"grad: wrt must name inputs or params; {name!r} is a computed value ({v.node.op.name})")
        v = g.values[name]
        if name in g.states:
            raise GradientError(f"grad: {name!r} is model state (updated by train_step, e.g. a running "
                                f"statistic), not a trained param", hint=f"the trainable params are {', '.join(g.trainable())}")
        if v.dtype != FLOAT:
            raise GradientError(f"grad: {name!r} is {v.dtype} (labels or ids) and has no gradient")
        out.append(v)
    if len(set(out)) != len(out):
        raise GradientError("grad: wrt names a value twice")
    return out


def _relevant(g: Graph, of: Value, wrt: list[Value]) -> set[Value]:
    """Values on some path from a wrt value to `of`: only these get adjoints."""
    reach = set(wrt)
    for n in g.nodes:
        if any(v in reach for v in n.inputs):
            reach.add(n.output)
    need = {of}
    for n in reversed(g.nodes):
        if n.output in need:
            need.update(n.inputs)
    return reach & need


def grad(graph: Graph, of: str | Value, wrt: Sequence[str]) -> Graph:
    """The forward graph plus its backward graph; outputs `d_<w>` for each w in `wrt`, and
    `adjoints` mapping each forward value whose adjoint survives simplification to it."""
    g, vmap = graph.copy()
    # `of` is resolved in the graph given: a copy has no aliases (a spec's `J = "v1"`)
    target, params = vmap[_resolve_of(graph, of)], _resolve_wrt(g, wrt)
    relevant = _relevant(g, target, params)
    b = Builder(g)
    forward_nodes = list(g.nodes)
    adjoint: dict[Value, Value] = {}

    def accumulate(v: Value, d: Value) -> None:
        """v feeds several nodes: its gradient is the sum of what each sends back (the chain rule
        over every path), stamped as such and named after v's gradient."""
        if v not in adjoint:
            adjoint[v] = d
            return
        with g.origin(Origin(f"d_{v.name} = the sum over the uses of {v.name}")), g.naming(f"d_{v.name}"):
            adjoint[v] = b.add(adjoint[v], d)

    with g.naming(f"d_{target.name}"):
        adjoint[target] = b.const(1.0)
    for node in reversed(forward_nodes):
        y = node.output
        if y not in adjoint or y not in relevant:
            continue
        d = _name_adjoint(g, b, y, adjoint[y])
        with g.naming(f"d_{y.name}"):
            grads = node.op.vjp(b, node, d)
        for v, dv in zip(node.inputs, grads):
            if dv is not None and v in relevant:
                accumulate(v, dv)
    for p in params:
        if p in adjoint:
            d = _name_adjoint(g, b, p, adjoint[p])
        else:  # `of` does not depend on p: its gradient is zero
            with g.naming(f"d_{p.name}"):
                d = b.zeros(p.shape)
        g.outputs[f"d_{p.name}"] = d
    simplify(g)
    # Which forward value each surviving adjoint differentiates: `explain` reads this to say
    # "δ2 = ∂J/∂z" (the backward nodes' origins name the forward node, not the operand). A new
    # dict, not an update: adjoints the copy carried from `graph` (a backward graph differentiated
    # again) are of another `of`.
    g.adjoints = {v: d for v, d in adjoint.items() if g.values.get(v.name) is v and g.values.get(d.name) is d}
    return g


def _name_adjoint(g: Graph, b: Builder, y: Value, d: Value) -> Value:
    """Give the finished adjoint of y the name d_y, unless it already carries an adjoint's name."""
    name = f"d_{y.name}"
    if d in b.created and not (d.name.startswith("d_") and "__" not in d.name) and name not in g.values:
        g.rename(d, name)
    return d
