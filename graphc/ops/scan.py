"""scan: a sub-graph (the body) applied along the time axis with a carried state, as jax.lax.scan.

    carry = init;  for t in 0 .. T-1:  carry, y[t] = body(carry, x[t])

The body is a Graph of its own: its inputs are the carried state(s), the time slices x_t of the
sequences scanned over, and the outer values it reads (params: its consts); its outputs are the
next carried state(s) and the per-step values stacked along time. A scan has several results (the
last carried states, the stacked outputs and, for the backward pass, the per-step values saved by
the forward), and a node of the IR has one output: each result is a node of its own, `scan` with the
same inputs and body and its `part`, and the backend runs the parts of one scan as one loop over
time (backend/scan_loop.py), as softmax and cross_entropy of the same logits share one pass.

Its VJP is a reverse scan: the body's own backward graph (graphc's autodiff applied to the body)
run from t = T-1 down to 0, carrying ∂J/∂carry (the chain rule through time) and the parameters'
gradients summed over the steps (identity (3): a value used at every step gets the sum of what each
use sends back). What that backward body reads of the forward is saved by the forward, stacked
time-major ([T, ...]); what it can read from the scan's inputs (x_t, the params) is not saved.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from graphc.core.errors import DTypeError, GraphcError, ShapeError
from graphc.core.ir import FLOAT, Graph, Origin, TensorType, Value
from graphc.core.opdef import OpDef, register
from graphc.ops.scan_body import Body, stacked, unstacked
from graphc.ops.scan_grad import reverse_scan

@register
class Scan(OpDef):
    """One result of a scan (see the module): part ("final", i) is the i-th carried state after the
    last step, ("ys", j) the j-th per-step output stacked along its time axis, ("saved", name) the
    body value `name` at every step, stacked time-major [T, ...] (what the backward scan reads).

    Backward, identity (3) over time and the body's own identities at each step: the reverse scan
    carries δ_carry = ∂J/∂carry backwards and sums each param's per-step gradient over the steps."""

    name = "scan"
    arity = None
    attrs = {"body": None, "part": ("final", 0)}
    public = False          # the spec's [scan.NAME] tables and graphc.scan(...) make it
    identity = "3"

    def check_attrs(self, inputs, attrs):
        """The attributes; each input's dtype is the body's to say (ids may be scanned over), and the
        shape rule checks it against the body."""
        unknown = set(attrs) - set(self.attrs)
        if unknown or not isinstance(attrs.get("body"), Body):
            raise GraphcError(f"scan takes body= (a Body) and part=, got {sorted(attrs)}",
                              hint="build a scan with graphc.scan(f, init, xs) or a [scan.NAME] table")
        return {"body": attrs["body"], "part": tuple(attrs.get("part", ("final", 0)))}

    # ------------------------------------------------------------------ shapes, checked once
    def shape(self, *types: TensorType, body: Body, part) -> TensorType:
        names = body.input_names()
        if len(types) != len(names):
            raise ShapeError(f"the body takes {len(names)} inputs ({', '.join(names)}), got {len(types)}")
        g = body.graph
        T = self.length(types, body)
        for i, (name, t) in enumerate(zip(names, types)):
            want = g.inputs[name].type
            if name in body.xs:
                axis = body.x_axes[body.xs.index(name)]
                got = TensorType(unstacked(t.shape, axis), t.dtype)
                what = f"the slice along axis {axis} of argument {i + 1} (x_t {name!r} of the body)"
            else:
                got, what = t, (f"argument {i + 1}, the initial value of carried state {name!r}," if name in body.carry
                                else f"argument {i + 1} ({name!r} in the body)")
            if got != want:
                error = DTypeError if got.shape == want.shape else ShapeError
                raise error(f"{what} is {g.format_shape(got.shape)} {got.dtype}, but the body "
                            f"reads it as {g.format_shape(want.shape)} {want.dtype}")
        for name, out in zip(body.carry, body.new_carry):
            t_in, t_out = g.inputs[name].type, body.value(out).type
            if t_in.dtype != FLOAT:
                raise DTypeError(f"carried state {name!r} is {t_in.dtype}: a carried state is real",
                                 hint="ids are scanned over (xs), not carried")
            if t_in != t_out:
                raise ShapeError(f"carried state {name!r} changes shape: it enters the body as "
                                 f"{g.format_shape(t_in.shape)} {t_in.dtype} and leaves it as "
                                 f"{g.format_shape(t_out.shape)} {t_out.dtype} ({out})",
                                 hint="a carried state keeps its shape and dtype from step to step")
        kind, index = part
        if kind == "final":
            return g.inputs[body.carry[index]].type
        if kind == "ys":
            y = body.value(body.ys[index]).type
            return TensorType(stacked(y.shape, body.y_axes[index], T), y.dtype)
        if kind == "saved":
            v = body.value(index).type
            return TensorType((T,) + v.shape, v.dtype)
        raise ShapeError(f"unknown scan part {part!r}")

    @staticmethod
    def length(types, body: Body):
        """T: the size of every scanned sequence along its time axis (they must agree)."""
        k = len(body.inits)
        sizes = []
        for j, axis in enumerate(body.x_axes):
            t = types[k + j]
            if not 0 <= axis < t.rank:
                raise ShapeError(f"cannot scan over axis {axis} of sequence {body.xs[j]!r} of rank {t.rank}",
                                 hint=f"the time axis of a rank-{t.rank} sequence is from 0 to {t.rank - 1}")
            sizes.append(t.shape[axis])
        if not sizes:
            raise ShapeError("a scan needs at least one sequence to scan over (xs)")
        if len(set(sizes)) > 1:
            raise ShapeError(f"the scanned sequences disagree on their length T along the time axis: "
                             f"{', '.join(f'{n} has {s}' for n, s in zip(body.xs, sizes))}")
        return sizes[0]

    # ------------------------------------------------------------------ reference: the body in a loop
    def reference(self, *arrays, body: Body, part):
        results = run(body, arrays)
        kind, index = part
        if kind == "final":
            return results["final"][index]
        if kind == "ys":
            return np.stack(results["ys"][index], axis=body.y_axes[index])
        return np.stack(results["saved"][index], axis=0)

    # ------------------------------------------------------------------ backward: a reverse scan
    def vjp(self, b, node, d_out):
        """Identity (3) over time: the reverse scan (see the module)."""
        return reverse_scan(b, node, d_out)

    def index_bounds(self, node):
        """The body's int32 ids (an embedding of x_t) are checked on the sequence they are sliced from."""
        body, out = node.attrs["body"], []
        outer = dict(zip(body.input_names(), node.inputs))
        for n in body.graph.nodes:
            for v, bound in n.op.index_bounds(n):
                if v.name in outer:
                    out.append((outer[v.name], bound))
        return out

    def kernel(self, k, node):
        return k.scan(node)

    def notation(self, p, node, *args):
        return p.call(f"scan[{node.attrs['body'].label}]", args)



# --------------------------------------------------------------------------------- the reference
_LAST: list = []      # (body, arrays, results) of the last run: the parts of one scan share it


def run(body: Body, arrays) -> dict:
    """The body applied at every step in NumPy: final carries, ys and saved values by step."""
    if _LAST and _LAST[0] is body and len(_LAST[1]) == len(arrays) and all(a is b for a, b in zip(_LAST[1], arrays)):
        return _LAST[2]
    from graphc.core.reference import evaluate_values
    g, k, m = body.graph, len(body.inits), len(body.xs)
    given, xs, consts = dict(zip(body.inits, arrays[:k])), arrays[k:k + m], arrays[k + m:]
    real = next((a.dtype for a in arrays if a.dtype.kind == "f"), np.dtype(np.float64))
    carry = [given[c] if c in given else np.zeros(g.inputs[c].shape, real) for c in body.carry]   # sums start at 0
    T = xs[0].shape[body.x_axes[0]]
    if T == 0:
        raise ShapeError(f"scan {body.label}: the sequences are empty (T = 0 along axis {body.x_axes[0]})",
                         hint="a scan runs its body at least once: give sequences of length T >= 1")
    saved_names = [n for n in g.values]
    ys = [[None] * T for _ in body.ys]
    saved: dict[str, list] = {n: [None] * T for n in saved_names}
    for t in (range(T - 1, -1, -1) if body.reverse else range(T)):
        env = dict(zip(body.carry, carry))
        env.update({n: np.take(x, t, axis=a) for n, x, a in zip(body.xs, xs, body.x_axes)})
        env.update(zip(body.consts, consts))
        vals = evaluate_values(g, env, real)
        for n in saved_names:
            saved[n][t] = vals[n]
        for j, name in enumerate(body.ys):
            ys[j][t] = vals[g.outputs[name].name]
        carry = [vals[g.outputs[name].name] for name in body.new_carry]
    results = {"final": carry, "ys": ys, "saved": saved}
    _LAST[:] = [body, tuple(arrays), results]
    return results


# --------------------------------------------------------------------------------- the builders
def structure(x, what: str, names: str) -> tuple[list[tuple[str | None, Value]], Any]:
    """The Values of a Value, a tuple/list or a dict of them, and how to rebuild that form."""
    if isinstance(x, Value):
        return [(None, x)], lambda vs: vs[0]
    if isinstance(x, (tuple, list)) and all(isinstance(v, Value) for v in x):
        return [(None, v) for v in x], lambda vs: type(x)(vs)
    if isinstance(x, dict) and all(isinstance(v, Value) for v in x.values()):
        return list(x.items()), lambda vs: dict(zip(x, vs))
    raise GraphcError(f"scan: {what} must be a graph Value, or a tuple or dict of them, got {type(x).__name__}",
                      hint=f"e.g. {names}")


def new_body(outer: Graph, label: str) -> Graph:
    body = Graph(f"{outer.name}_{label}", outer.dims)
    body.enclosing = outer
    return body


def finish(body_graph: Graph, carry: list[str], xs: list[str], new_carry: list[Value], ys: list[Value],
           axis: int, label: str, y_names: list[str] | None = None) -> Body:
    """The Body record of a body graph whose carries and slices are declared and whose lines are built."""
    g = body_graph
    consts = [v.name for v in g.captures.values()]
    outs = {}
    for name, v in zip(carry, new_carry):
        outs[f"{name}__next"] = g.lift(v)
    for j, v in enumerate(ys):
        outs[(y_names[j] if y_names else f"y{j}") + "__step"] = g.lift(v)
    g.outputs = outs
    keys = list(outs)
    return Body(g, tuple(carry), tuple(xs), tuple(consts), tuple(keys[:len(carry)]), tuple(keys[len(carry):]),
                tuple(axis for _ in xs), tuple(axis for _ in ys), label=label)


def scan(f, init, xs, axis: int = 1, name: str = "scan"):
    """jax.lax.scan in the graph: `carry, ys = graphc.scan(f, init, xs, axis=1)`, f(carry, x) returning
    (new_carry, y); init and xs (and so carry and x) are Values, tuples or dicts of them, y a Value, a
    tuple or dict of them, or None. x is xs[:, t] (axis 1: batch-first [N, T, ...]); ys stack y along
    the same axis; carry is the state after the last step. f may read the outer graph's params."""
    inits, rebuild_carry = structure(init, "init", "graphc.scan(f, h0, x)")
    seqs, rebuild_x = structure(xs, "xs", "graphc.scan(f, h0, x)")
    outer = inits[0][1].graph if inits else seqs[0][1].graph
    g = new_body(outer, name)
    taken = set()

    def declare(key, v, default, shape):
        base = key or default
        nm = base if base not in taken else f"{base}_{len(taken)}"
        taken.add(nm)
        return g.input(nm, shape, v.dtype)

    carry_in = [declare(k, v, "h", v.shape) for k, v in inits]
    for _, v in seqs:
        if not -v.rank <= axis < v.rank:
            raise ShapeError(f"scan: cannot scan over axis {axis} of {v.name}, of rank {v.rank}",
                             hint=f"the time axis of {v.name} is from {-v.rank} to {v.rank - 1}")
    ax = axis % seqs[0][1].rank if seqs else axis
    x_in = [declare(k, v, "x", unstacked(v.shape, axis % v.rank)) for k, v in seqs]
    out = f(rebuild_carry(carry_in), rebuild_x(x_in))
    if not isinstance(out, tuple) or len(out) != 2:
        raise GraphcError("scan: the body function must return (new_carry, y)", hint="y may be None")
    new, y = out
    new_vals, _ = structure(new, "the new carry", "return h_new, h_new")
    if len(new_vals) != len(inits):
        raise GraphcError(f"scan: the body returns {len(new_vals)} carried values for {len(inits)} in init")
    y_vals, rebuild_y = ([], None) if y is None else structure(y, "y", "return h_new, h_new")
    body = finish(g, [v.name for v in carry_in], [v.name for v in x_in], [v for _, v in new_vals],
                  [v for _, v in y_vals], ax, name, [k or f"y{j}" for j, (k, _) in enumerate(y_vals)])
    inputs = [v for _, v in inits] + [v for _, v in seqs] + list(g.captures)
    with outer.origin(Origin(f"scan {name}")):
        finals = [outer.apply("scan", *inputs, body=body, part=("final", i)) for i in range(len(inits))]
        stacks = [outer.apply("scan", *inputs, body=body, part=("ys", j)) for j in range(len(y_vals))]
    return rebuild_carry(finals), (None if y is None else rebuild_y(stacks))


__all__ = ["Body", "Scan", "finish", "new_body", "run", "scan", "structure", "unstacked"]
