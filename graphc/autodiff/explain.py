"""The derivation of a gradient in the notation of the notes, read off the backward graph.

In: a forward Graph, a scalar `of` and the names `wrt`. Out: text (plain, Markdown
or LaTeX) with one line per shared delta and per gradient: the formula in named
values, the identity numbers stamped on the nodes that form it, and a shape check.
It never hard-codes a model: every formula is printed from `graphc.grad`'s nodes.
This module walks the graph, picks the deltas and lays out the lines; how each op is
written is the op's own (`notation`, `skeleton`, `explain_notes` and the flags `leafy`,
`shown_by_name`, `see_through` in graphc/core/opdef.py and graphc/ops/), and the symbols
and the layout of each format are in graphc/core/notation.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from graphc.autodiff.grad import grad
from graphc.core.errors import GraphcError
from graphc.core.ir import Graph, Value
from graphc.core.notation import (  # noqa: F401  (graphc.autodiff.explain's API)
    ADD, ATOM, FORMATS, IDENTITIES, LAYOUTS, MATMUL, MUL, POSTFIX, LatexNotation, Printed, TextNotation, wrap,
)


# ---------------------------------------------------------------------------- the derivation
@dataclass
class Line:
    kind: str                  # "delta" or "grad"
    lhs: str                   # 'δ1 = ∂J/∂θ' or '∂J/∂W'
    formula: str
    identities: list[str]
    shape: str                 # '(N×Dh) = (N×Nc)(Nc×Dh) ∘ (N×Dh)'
    note: str = ""


class Derivation:
    """Prints the backward graph's formulas: each node by its op's `notation(p, node, *args)`,
    with this object as `p`. What an op may ask of it: `sym` (the notation's symbols), `expr`,
    `call`, the builders `product`, `quotient`, `difference`, `transposed`, `summed`, the
    questions `constant`, `scalar`, `coefficient`, `is_ref`, `dim`, `skeleton`, and `used`
    (what a note must explain), `logits` (the values whose softmax prints as ŷ) and `of`."""

    def __init__(self, forward: Graph, bwd: Graph, of: str, wrt: list[str], notation: TextNotation):
        self.fwd, self.bwd, self.of, self.wrt, self.sym = forward, bwd, of, wrt, notation
        self.forward_values = {v for v in bwd.values.values() if v.name in forward.values}
        self.logits = {lg for n in bwd.nodes if (lg := n.op.logits(n)) is not None}
        self.used: set[str] = set()          # what the formulas printed that a note explains
        self.deltas: dict[Value, int] = {}
        uses: dict[Value, int] = {}
        for node in bwd.nodes:
            for v in set(node.inputs):
                uses[v] = uses.get(v, 0) + 1
        for v in bwd.outputs.values():
            uses[v] = uses.get(v, 0) + 1
        for node in bwd.nodes:
            v = node.output
            if v not in self.forward_values and uses.get(v, 0) > 1 and not node.op.leafy:
                self.deltas[v] = len(self.deltas) + 1
        self.adjoint_of: dict[Value, Value] = {}
        order = {v: i for i, v in enumerate(bwd.values.values())}
        for fv, d in bwd.adjoints.items():
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
        return self.sym.shape([self.dim(d) for d in v.shape])

    def skeleton(self, v: Value, top: Value) -> str:
        """The shape check mirroring the formula: what an op's `skeleton` expands (products, ∘,
        sums), everything else a leaf."""
        node = v.node
        if v is top or not self.is_ref(v):
            if node is not None and v not in self.forward_values:
                parts = node.op.skeleton(self, node, top)
                if parts is not None:
                    return parts
        return self.shape_of(v)

    def shape_check(self, v: Value) -> str:
        whole, parts = self.shape_of(v), self.skeleton(v, v)
        return whole if parts == whole else f"{whole} = {parts}"

    # ---------------------------------------------------------------- questions ops ask
    def is_ref(self, v: Value) -> bool:
        """v prints as a name or a δ, not as the expression computing it."""
        return v in self.deltas or v in self.forward_values or v.node is None

    def constant(self, v: Value) -> float | None:
        """The number v is, seen through the ops that keep a constant one (a broadcast or reshape
        of it); None when it is no constant."""
        while v.node is not None and v.node.op.see_through:
            v = v.node.inputs[0]
        return v.node.op.constant(v.node) if v.node is not None else None

    @staticmethod
    def scalar(v: Value) -> bool:
        """One element (a scalar, or a (1,) / (1, 1) reshape of one): printed as a coefficient."""
        return all(d == 1 for d in v.shape)

    def coefficient(self, v: Value) -> Value:
        """The scalar under a broadcast or reshape of one, which a formula writes as a coefficient."""
        while v.node is not None and v.node.op.see_through and self.scalar(v.node.inputs[0]):
            v = v.node.inputs[0]
        return v

    # ---------------------------------------------------------------- printing
    def name(self, v: Value) -> str:
        return self.sym.ident(v.name)

    def formula(self, v: Value) -> Printed:
        return self.expr(v, top=v)

    def expr(self, v: Value, top: Value | None = None) -> Printed:
        sym = self.sym
        if v is not top and v in self.deltas:
            return Printed(sym.delta(self.deltas[v]), ATOM)
        node = v.node
        if node is None:                                   # an input or a param
            return Printed(self.name(v), ATOM)
        if v in self.forward_values and "__" not in v.name and node.op.shown_by_name:
            return Printed(self.name(v), ATOM)
        args = [self.expr(x) for x in node.inputs]
        p = node.op.notation(self, node, *args)
        if v not in self.forward_values:
            p.nodes.add(node)
        for a in args:
            p.nodes |= a.nodes
        return p

    wrap = staticmethod(wrap)

    def call(self, name: str, args: Sequence[Printed]) -> Printed:
        """name(a, b): a function as the notes write it (sgn, σ, CE, ...)."""
        return Printed(self.sym.fn(name, ", ".join(a.text for a in args)), ATOM)

    # the notes' forms, for ops' `notation` ------------------------------
    def product(self, a: Printed, b: Printed) -> Printed:
        """a b, a matrix product or a coefficient times a matrix."""
        return Printed(f"{wrap(a, MATMUL)} {wrap(b, MATMUL)}", MATMUL)

    def quotient(self, a: Printed, b: Printed) -> Printed:
        return Printed(self.sym.div(wrap(a, MATMUL), wrap(b, POSTFIX)), MUL)

    def difference(self, a: Printed, b: Printed) -> Printed:
        return Printed(f"{wrap(a, ADD)}{self.sym.minus}{wrap(b, ADD + 0.5)}", ADD)

    def transposed(self, a: Printed) -> Printed:
        return Printed(self.sym.T(wrap(a, POSTFIX)), POSTFIX)

    def summed(self, over: str, a: Printed) -> Printed:
        """Σ_over a ('rows', 'cols', '' for every element, or a label such as 'classes')."""
        return Printed(self.sym.sum(over, wrap(a, MATMUL)), MUL)

    # ---------------------------------------------------------------- lines
    def identities(self, p: Printed) -> list[str]:
        found = set()
        for node in p.nodes:
            for part in (node.origin.identity or "").split(","):
                if part.strip():
                    found.add(part.strip())
        return sorted(found, key=lambda s: (len(s), s))

    def lines(self) -> list[Line]:
        n, of = self.sym, self.sym.ident(self.of)
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
                p = Printed(n.delta(self.deltas[v]), ATOM)
                ids = self._fallback_identities(w)
            else:
                p = self.formula(v)
                ids = self.identities(p) or self._fallback_identities(w)
            note = ""
            if self.constant(v) == 0.0:
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
    d = Derivation(graph, bwd, of_name, wrt, notation)
    lines = d.lines()
    notes = _notes(bwd, d)
    used = sorted({i for line in lines for i in line.identities}, key=lambda s: (len(s), s))
    render = LAYOUTS[format]
    return render(graph, of_name, wrt, lines, notes, used)


def _notes(bwd: Graph, d: Derivation) -> list[str]:
    """The notes under the title: each op's (`explain_notes`, over its nodes, ops in the order
    the backward graph first uses them), then the one on deltas."""
    by_op: dict = {}
    for n in bwd.nodes:
        by_op.setdefault(n.op, []).append(n)
    notes = [note for op, nodes in by_op.items() for note in op.explain_notes(d, nodes)]
    if d.deltas:
        notes.append("δk: a delta computed once and shared by every formula below it")
    return notes
