"""The derivation of a gradient in the notation of the notes, read off the backward graph.

In: a forward Graph, a scalar `of` and the names `wrt`. Out: text (plain, Markdown
or LaTeX) with one line per shared delta and per gradient: the formula in named
values, the identity numbers stamped on the nodes that form it, and a shape check.
It never hard-codes a model: every formula is printed from `graphc.grad`'s nodes.
The symbols and the layout of each format are in graphc/notation.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from graphc.autodiff.grad import grad
from graphc.core.errors import GraphcError
from graphc.core.ir import INT, Graph, Node, Value
from graphc.core.notation import FORMATS, IDENTITIES, LAYOUTS, LatexNotation, TextNotation  # noqa: F401  (graphc.autodiff.explain's API)

# precedence of printed expressions
ADD, MUL, MATMUL, POSTFIX, ATOM = 1, 2, 3, 5, 6
# ops never given a δ of their own even when shared: they print as short as a name
_LEAFY = {"const", "size", "onehot", "softmax", "log_softmax", "sign", "transpose", "reshape", "broadcast_to"}


# ---------------------------------------------------------------------------- the derivation
def _scalar(v: Value) -> bool:
    """One element (a scalar, or a (1,) / (1, 1) reshape of one): printed as a coefficient."""
    return all(d == 1 for d in v.shape)


def _unwrap(v: Value) -> Value:
    while v.node is not None and v.node.op.name in ("broadcast_to", "reshape") and _scalar(v.node.inputs[0]):
        v = v.node.inputs[0]
    return v


@dataclass
class Line:
    kind: str                  # "delta" or "grad"
    lhs: str                   # 'δ1 = ∂J/∂θ' or '∂J/∂W'
    formula: str
    identities: list[str]
    shape: str                 # '(N×Dh) = (N×Nc)(Nc×Dh) ∘ (N×Dh)'
    note: str = ""


@dataclass
class _Printed:
    text: str
    prec: int
    nodes: set = field(default_factory=set)


class _Derivation:
    """Prints the backward graph's formulas, one method per op (`_op_<name>`)."""

    def __init__(self, forward: Graph, bwd: Graph, of: str, wrt: list[str], notation: TextNotation):
        self.fwd, self.bwd, self.of, self.wrt, self.n = forward, bwd, of, wrt, notation
        self.forward_values = {v for v in bwd.values.values() if v.name in forward.values}
        self.logits = {n.inputs[0] for n in bwd.nodes if n.op.name == "cross_entropy"}
        self.used: set[str] = set()          # legend entries the formulas need
        self.deltas: dict[Value, int] = {}
        uses: dict[Value, int] = {}
        for node in bwd.nodes:
            for v in set(node.inputs):
                uses[v] = uses.get(v, 0) + 1
        for v in bwd.outputs.values():
            uses[v] = uses.get(v, 0) + 1
        for node in bwd.nodes:
            v = node.output
            if v not in self.forward_values and uses.get(v, 0) > 1 and node.op.name not in _LEAFY:
                self.deltas[v] = len(self.deltas) + 1
        self.adjoint_of: dict[Value, Value] = {}
        order = {v: i for i, v in enumerate(bwd.values.values())}
        for fv, d in getattr(bwd, "adjoints", {}).items():
            best = self.adjoint_of.get(d)
            if best is None or self._rank(fv, order) > self._rank(best, order):
                self.adjoint_of[d] = fv

    @staticmethod
    def _rank(v: Value, order) -> tuple:
        """Which forward value names a delta best: a spec-named node value, then the latest."""
        return (v.node is not None, "__" not in v.name, order.get(v, -1))

    # ---------------------------------------------------------------- dims and shapes
    def dim(self, d) -> str:
        if isinstance(d, str):
            return d
        names = [k for k, size in self.fwd.dims.items() if size == d]
        return names[0] if len(names) == 1 else str(d)

    def shape_of(self, v: Value) -> str:
        return self.n.shape([self.dim(d) for d in v.shape])

    def skeleton(self, v: Value, top: Value) -> str:
        """The shape check mirroring the formula: products and ∘ expanded, everything else a leaf."""
        node = v.node
        if v is top or not self._is_ref(v):
            if node is not None and v not in self.forward_values:
                name = node.op.name
                if name == "matmul":
                    a, b = node.inputs
                    return self.skeleton(a, top) + self.skeleton(b, top)
                if name == "mul" and not any(_scalar(x) or self._const(x) is not None for x in node.inputs):
                    return self.n.circ.join(self.skeleton(x, top) for x in node.inputs)
                over = self._sum_over(node)
                if over is not None:
                    return self.n.sum(over, self.skeleton(node.inputs[0], top))
        return self.shape_of(v)

    def shape_check(self, v: Value) -> str:
        whole, parts = self.shape_of(v), self.skeleton(v, v)
        return whole if parts == whole else f"{whole} = {parts}"

    # ---------------------------------------------------------------- printing
    def _is_ref(self, v: Value) -> bool:
        return v in self.deltas or v in self.forward_values or v.node is None

    def _const(self, v: Value) -> float | None:
        while v.node is not None and v.node.op.name in ("broadcast_to", "reshape"):
            v = v.node.inputs[0]
        if v.node is not None and v.node.op.name == "const":
            return v.node.attrs["value"]
        return None

    def name(self, v: Value) -> str:
        return self.n.ident(v.name)

    def formula(self, v: Value) -> _Printed:
        return self.expr(v, top=v)

    def expr(self, v: Value, top: Value | None = None) -> _Printed:
        n = self.n
        if v is not top and v in self.deltas:
            return _Printed(n.delta(self.deltas[v]), ATOM)
        node = v.node
        if node is None:                                   # an input or a param
            return _Printed(self.name(v), ATOM)
        if v in self.forward_values and "__" not in v.name and node.op.name not in ("softmax", "const"):
            return _Printed(self.name(v), ATOM)
        args = [self.expr(x) for x in node.inputs]
        method = getattr(self, f"_op_{node.op.name}", None)
        p = method(node, *args) if method else self._call(node.op.name, args)
        if v not in self.forward_values:
            p.nodes.add(node)
        for a in args:
            p.nodes |= a.nodes
        return p

    @staticmethod
    def wrap(p: _Printed, prec: int) -> str:
        return p.text if p.prec >= prec else f"({p.text})"

    def _call(self, name: str, args: list[_Printed]) -> _Printed:
        return _Printed(self.n.fn(name, ", ".join(a.text for a in args)), ATOM)

    # one method per op ------------------------------------------------
    def _op_matmul(self, node, a, b):
        return _Printed(f"{self.wrap(a, MATMUL)} {self.wrap(b, MATMUL)}", MATMUL)

    def _op_mul(self, node, a, b):
        x, y = node.inputs
        cx, cy = self._const(x), self._const(y)
        if cx == 1.0:
            return _Printed(b.text, b.prec)
        if cy == 1.0:
            return _Printed(a.text, a.prec)
        if _scalar(y) and not _scalar(x) or (cy is not None and cx is None):
            x, y, a, b = y, x, b, a                       # scalar first: c X
        if _scalar(x) and not _scalar(y) or self._const(x) is not None:
            s = _unwrap(x).node
            if s is not None and s.op.name == "div" and self._const(s.inputs[0]) == 1.0:
                q = self.expr(s.inputs[1])                 # X · (1/N) reads X/N
                return _Printed(self.n.div(self.wrap(b, MATMUL), self.wrap(q, POSTFIX)), MUL)
            return _Printed(f"{self.wrap(a, MATMUL)} {self.wrap(b, MATMUL)}", MATMUL)
        return _Printed(f"{self.wrap(a, MUL)}{self.n.circ}{self.wrap(b, MUL + 0.5)}", MUL)

    def _op_div(self, node, a, b):
        return _Printed(self.n.div(self.wrap(a, MATMUL), self.wrap(b, POSTFIX)), MUL)

    def _op_add(self, node, a, b):
        y = node.inputs[1]
        if y.node is not None and y.node.op.name == "neg" and y not in self.forward_values and y not in self.deltas:
            b = self.expr(y.node.inputs[0])                # a + (−b) reads a − b
            return _Printed(f"{self.wrap(a, ADD)}{self.n.minus}{self.wrap(b, ADD + 0.5)}", ADD)
        return _Printed(f"{self.wrap(a, ADD)} + {self.wrap(b, ADD)}", ADD)

    def _op_sub(self, node, a, b):
        return _Printed(f"{self.wrap(a, ADD)}{self.n.minus}{self.wrap(b, ADD + 0.5)}", ADD)

    def _op_neg(self, node, a):
        return _Printed(self.n.neg(self.wrap(a, MATMUL)), MUL)

    def _op_transpose(self, node, a):
        if node.inputs[0].rank < 2:
            return a
        return _Printed(self.n.T(self.wrap(a, POSTFIX)), POSTFIX)

    def _op_square(self, node, a):
        return _Printed(self.n.square(self.wrap(a, POSTFIX)), POSTFIX)

    def _op_const(self, node):
        return _Printed(self.n.number(node.attrs["value"]), ATOM)

    def _op_size(self, node, _x):
        x = node.inputs[0]
        dims = [self.dim(x.shape[a]) for a in node.attrs["axes"]]
        text = "·".join(dims) if dims else "1"
        return _Printed(self.n.ident(text) if len(dims) == 1 else text, ATOM if len(dims) <= 1 else MUL)

    def _op_onehot(self, node, y):
        self.used.add("onehot")
        return _Printed(y.text, ATOM)

    def _op_softmax(self, node, x):
        if node.inputs[0] in self.logits:
            self.used.add("softmax")
            return _Printed(self.n.yhat(), ATOM)
        return self._call("softmax", [x])

    def _op_log_softmax(self, node, x):
        if node.inputs[0] in self.logits:
            self.used.add("softmax")
            return _Printed(self.n.fn("log", self.n.yhat()), ATOM)
        return self._call("log_softmax", [x])

    def _op_relu(self, node, x):
        return self._call("relu", [x])

    def _op_sign(self, node, x):
        return self._call("sign", [x])

    def _op_broadcast_to(self, node, x):
        return x                       # a broadcast is implicit in the notes' notation

    def _op_reshape(self, node, x):
        src, shape = node.inputs[0].shape, tuple(node.attrs["shape"])
        if tuple(d for d in src if d != 1) == tuple(d for d in shape if d != 1):
            if len(src) == 1 and len(shape) == 2 and shape[0] == 1:
                return _Printed(self.n.T(self.wrap(x, POSTFIX)), POSTFIX)    # a row vector
            return x
        return self._call("reshape", [x])

    def _sum_over(self, node: Node) -> str | None:
        """'rows', 'cols' or '' (all) for sums the notes write with Σ; None for other nodes."""
        name = node.op.name
        x = node.inputs[0] if node.inputs else None
        if name == "sum_to":
            shape = tuple(node.attrs["shape"])
            if shape == () or all(d == 1 for d in shape):
                return ""
            if x.rank == 2 and shape in ((x.shape[1],), (1, x.shape[1])):
                return "rows"
            if x.rank == 2 and shape == (x.shape[0], 1):
                return "cols"
            return None
        if name == "sum":
            axis = node.attrs["axis"]
            if axis is None:
                return ""
            if x.rank == 2 and axis % 2 == 0:
                return "rows"
            if x.rank == 2:
                return "cols"
        return None

    def _op_sum_to(self, node, x):
        over = self._sum_over(node)
        if over is None:
            return self._call("sum_to", [x])
        return _Printed(self.n.sum(over, self.wrap(x, MATMUL)), MUL)

    def _op_sum(self, node, x):
        over = self._sum_over(node)
        if over is None:
            axis = node.attrs["axis"]
            label = "classes" if axis == -1 or axis == node.inputs[0].rank - 1 else f"axis {axis}"
            return _Printed(self.n.sum(label, self.wrap(x, MATMUL)), MUL)
        return _Printed(self.n.sum(over, self.wrap(x, MATMUL)), MUL)

    def _op_slice(self, node, x):
        lead = ":, " * (node.inputs[0].rank - 1)
        return _Printed(f"{self.wrap(x, POSTFIX)}[{lead}{node.attrs['start']}:{node.attrs['stop']}]", POSTFIX)

    def _op_concat(self, node, *xs):
        return _Printed("[" + ", ".join(x.text for x in xs) + "]", ATOM)

    def _op_embedding(self, node, table, ids):
        return _Printed(f"{self.wrap(table, POSTFIX)}[{ids.text}]", POSTFIX)

    def _op_embedding_grad(self, node, d, ids):
        return self._call("scatter_add", [d, ids])

    def _op_cross_entropy(self, node, theta, y):
        return self._call("CE", [y, theta])

    def _op_dot(self, node, a, b):
        return _Printed(f"{self.wrap(a, MATMUL)} · {self.wrap(b, MATMUL)}", MUL)

    # ---------------------------------------------------------------- lines
    def identities(self, p: _Printed) -> list[str]:
        found = set()
        for node in p.nodes:
            for part in (node.origin.identity or "").split(","):
                if part.strip():
                    found.add(part.strip())
        return sorted(found, key=lambda s: (len(s), s))

    def lines(self) -> list[Line]:
        n, of = self.n, self.n.ident(self.of)
        out = []
        for v, k in self.deltas.items():
            p = self.formula(v)
            lhs = n.delta(k)
            fv = self.adjoint_of.get(v)
            if fv is not None:
                if fv.node is None or "__" not in fv.name:
                    lhs += " = " + n.partial(of, self.expr(fv).text if fv.node is not None else self.name(fv), False)
                else:
                    lhs += " = " + n.partial(of, self.expr(fv).text, True)
            out.append(Line("delta", lhs, p.text, self.identities(p), self.shape_check(v)))
        grads = []
        index = {node.output: i for i, node in enumerate(self.bwd.nodes)}
        for j, w in enumerate(self.wrt):
            v = self.bwd.outputs[f"d_{w}"]
            grads.append((index.get(v, -1) if v not in self.deltas else index[v] + 0.5, j, w, v))
        for _, _, w, v in sorted(grads, key=lambda t: (t[0], t[1])):
            lhs = n.partial(of, n.ident(w), False)
            if v in self.deltas:
                p = _Printed(n.delta(self.deltas[v]), ATOM)
                ids = self._fallback_identities(w)
            else:
                p = self.formula(v)
                ids = self.identities(p) or self._fallback_identities(w)
            note = ""
            if self._const(v) == 0.0:
                ids, note = [], f"{self.of} does not depend on {w}"
            plain = note or v in self.deltas
            out.append(Line("grad", lhs, p.text, ids, self.shape_of(v) if plain else self.shape_check(v), note))
        return out

    def _fallback_identities(self, w: str) -> list[str]:
        """A gradient that is a delta as it stands (z = Wx + b: ∂J/∂b = δ): the forward op's own identity."""
        p = self.bwd.values[w]
        ids = {node.op.identity for node in self.bwd.nodes
               if p in node.inputs and node.output in self.forward_values and node.op.identity}
        return sorted(i for i in ids if "," not in i)


# ---------------------------------------------------------------------------- rendering
def explain(graph: Graph, of: str | Value, wrt: Sequence[str], format: str = "text") -> str:
    """The derivation of ∂of/∂w for each w in `wrt` as the notes write it: format "text", "markdown" or "latex"."""
    if format not in FORMATS:
        raise GraphcError(f"explain: unknown format {format!r}", hint=f"use one of {', '.join(FORMATS)}")
    if isinstance(wrt, str):
        wrt = [wrt]
    wrt = [w.name if isinstance(w, Value) else w for w in wrt]
    of_name = of if isinstance(of, str) else of.name
    bwd = grad(graph, of, wrt)
    notation = LatexNotation() if format == "latex" else TextNotation()
    d = _Derivation(graph, bwd, of_name, wrt, notation)
    lines = d.lines()
    notes = _notes(graph, bwd, d, of_name)
    used = sorted({i for line in lines for i in line.identities}, key=lambda s: (len(s), s))
    render = LAYOUTS[format]
    return render(graph, of_name, wrt, lines, notes, used)


def _notes(graph: Graph, bwd: Graph, d: _Derivation, of: str) -> list[str]:
    notes = []
    if "softmax" in d.used:
        logits = ", ".join(sorted(v.name for v in d.logits))
        notes.append(f"ŷ = softmax({TextNotation().ident(logits)}), the predicted probabilities")
    if "onehot" in d.used:
        labels = sorted({n.inputs[1].name for n in bwd.nodes if n.op.name == "cross_entropy"})
        notes.append(f"{', '.join(labels)} in a formula stands for the one-hot rows of the int32 labels")
    if any(n.op.name == "cross_entropy" and n.inputs[1].dtype != INT for n in bwd.nodes):
        notes.append("Σ_classes y = 1 for one-hot or probability targets, so δ = ŷ − y as in the notes")
    means = [n for n in bwd.nodes if n.op.name == "cross_entropy" and n.inputs[0].rank > 1]
    if means:
        rows = d.dim(means[0].inputs[0].shape[0])
        theta = TextNotation().ident(means[0].inputs[0].name)
        notes.append(f"{of} is the mean of the cross-entropy over the {rows} rows of the batch, so δ = ∂{of}/∂{theta} "
                     f"carries a factor 1/{rows} (the notes' ŷ − y is for one example)")
    if d.deltas:
        notes.append("δk: a delta computed once and shared by every formula below it")
    return notes
