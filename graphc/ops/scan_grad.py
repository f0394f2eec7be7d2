"""The VJP of scan: a reverse scan whose body is the forward body's own backward graph.

For a body (carry, x_t, params) -> (carry', y_t), graphc's autodiff differentiates the surrogate
Σ ⟨δ_carry', carry'⟩ + ⟨δ_y, y_t⟩ with respect to carry, x_t and the params: the result is one step of
backpropagation through time. The backward body

    inputs   δ_carry' (carried), the params' gradients so far (carried), the forward's saved values
             at t, x_t, δ_y at t, the params
    outputs  δ_carry (carried to step t-1), each param's sum plus its gradient at t, δ_x at t (stacked)

runs from t = T-1 down to 0. What it reads of the forward body is saved: a forward value read by a
backward node becomes an input, stacked time-major by the forward scan (part ("saved", name)), and
the forward nodes nothing else needs are dropped, so no step is computed twice.
"""
from __future__ import annotations

from graphc.core.errors import GraphcError
from graphc.core.ir import FLOAT, Graph, Origin, Value
from graphc.ops.scan_body import Body, bypass_input


def _live(g: Graph, roots, stop=frozenset()) -> set:
    """The nodes' outputs the roots depend on, not looking past the values in `stop`."""
    live = set(roots)
    for n in reversed(g.nodes):
        if n.output in live and n.output not in stop:
            live.update(n.inputs)
    return live


def backward_body(b, body: Body, ys_index: int | None) -> tuple[Body, list]:
    """The reverse scan's body for a forward body whose ys output `ys_index` (or none: a final carry)
    receives a gradient, and where each of its inputs comes from: ("adj", i) the i-th carry's
    adjoint, ("acc", c) the c-th const's gradient so far, ("saved", name), ("x", j), ("dy", j),
    ("const", c). Cached on the forward body."""
    if ys_index in body.derived:
        return body.derived[ys_index]
    fg = body.graph
    g, vmap = fg.copy(f"{fg.name}_backward")
    g.enclosing = fg.enclosing
    adjs = [bypass_input(g, f"{c}__adj", fg.inputs[c].type) for c in body.carry]
    terms = [g.apply("sum", g.apply("mul", a, g.outputs[nc])) for a, nc in zip(adjs, body.new_carry)]
    dy = None
    if ys_index is not None:
        y = g.outputs[body.ys[ys_index]]
        dy = bypass_input(g, f"{body.ys[ys_index].split('__')[0]}__dy", y.type)
        terms.append(g.apply("sum", g.apply("mul", dy, y)))
    total = terms[0]
    for t in terms[1:]:
        total = g.apply("add", total, t)
    wrt = [n for n in body.carry + body.xs + body.consts if g.inputs[n].dtype == FLOAT]
    gg = b.grad(g, total, wrt)
    grads = {n: gg.outputs[f"d_{n}"] for n in wrt}
    forward = set(fg.values)
    # the forward values that change from step to step (the rest, such as W.T, is loop-invariant:
    # recomputed where read, never saved)
    varying = {gg.inputs[n] for n in body.carry + body.xs}
    for n in gg.nodes:
        if any(v in varying for v in n.inputs):
            varying.add(n.output)
    roots = set(grads.values())
    live = _live(gg, roots)
    # a forward node's value read by a backward node (or itself a gradient) is saved by the forward scan
    saved = []
    for n in gg.nodes:
        if n.output in live and n.output.name not in forward:
            saved += [v for v in n.inputs if v.name in forward and v.node is not None and v in varying
                      and v not in saved]
    saved += [v for v in roots if v.name in forward and v.node is not None and v in varying and v not in saved]
    live = _live(gg, roots, stop=set(saved))
    # the backward body: its inputs in the order of the scan's roles, then its live nodes
    bg = Graph(f"{fg.name}_backward", fg.dims)
    bg.enclosing = fg.enclosing
    vm: dict[Value, Value] = {}
    carry, xs, consts, sources = [], [], [], []
    for i, c in enumerate(body.carry):
        vm[gg.inputs[adjs[i].name]] = bypass_input(bg, adjs[i].name, adjs[i].type)
        carry.append(adjs[i].name)
        sources.append(("adj", i))
    acc_of = {}
    for ci, c in enumerate(body.consts):
        if c in grads:
            acc = bypass_input(bg, f"{c}__grad", fg.inputs[c].type)
            acc_of[c] = acc
            carry.append(acc.name)
            sources.append(("acc", ci))
    x_axes = []
    for v in saved:
        vm[v] = bypass_input(bg, v.name, v.type)
        xs.append(v.name)
        x_axes.append(0)
        sources.append(("saved", v.name))
    for name in body.carry:          # the carry before step t, when read: saved by the forward too
        v = gg.inputs[name]
        if v in live:
            vm[v] = bypass_input(bg, name, v.type)
            xs.append(name)
            x_axes.append(0)
            sources.append(("saved", name))
    for j, name in enumerate(body.xs):
        v = gg.inputs[name]
        if v in live:
            vm[v] = bypass_input(bg, name, v.type)
            xs.append(name)
            x_axes.append(body.x_axes[j])
            sources.append(("x", j))
    if dy is not None:
        v = gg.inputs[dy.name]
        vm[v] = bypass_input(bg, dy.name, v.type)
        xs.append(dy.name)
        x_axes.append(body.y_axes[ys_index])
        sources.append(("dy", ys_index))
    for ci, name in enumerate(body.consts):
        v = gg.inputs[name]
        if v in live:
            vm[v] = bypass_input(bg, name, v.type)
            consts.append(name)
            sources.append(("const", ci))
    if not xs:      # a backward step that reads nothing per step still scans: over the first sequence
        v = gg.inputs[body.xs[0]]
        vm[v] = bypass_input(bg, body.xs[0], v.type)
        xs.append(body.xs[0])
        x_axes.append(body.x_axes[0])
        sources.append(("x", 0))
    for n in gg.nodes:
        if n.output in live and n.output not in vm:
            vm[n.output] = bg.add_node(n.op, tuple(vm[v] for v in n.inputs), dict(n.attrs), n.output.name,
                                       n.output.type, n.origin)
    outs = {}
    for i, c in enumerate(body.carry):
        outs[f"{c}__adj__next"] = vm[grads[c]] if c in grads else vm[gg.inputs[adjs[i].name]]
    for c, acc in acc_of.items():
        with bg.origin(Origin(f"d_{c}: the sum over the steps of its gradient at each", None, None, "3")):
            outs[f"{c}__grad__next"] = bg.apply("add", acc, vm[grads[c]], name=f"{c}__grad__sum")
    y_axes, d_xs = [], []
    for j, name in enumerate(body.xs):
        if name in grads:
            outs[f"d_{name}__step"] = vm[grads[name]]
            y_axes.append(body.x_axes[j])
            d_xs.append(j)
    bg.outputs = outs
    keys = list(outs)
    k = len(carry)
    back = Body(bg, tuple(carry), tuple(xs), tuple(consts), tuple(keys[:k]), tuple(keys[k:]), tuple(x_axes),
                tuple(y_axes), reverse=not body.reverse, label=f"{body.label}_backward",
                sums=tuple(a.name for a in acc_of.values()))
    body.derived[ys_index] = (back, sources, d_xs)
    return body.derived[ys_index]


def reverse_scan(b, node, d_out) -> list:
    """The gradients of a scan node's inputs (initial carries, sequences, consts) from δ of its part."""
    body, (kind, index) = node.attrs["body"], node.attrs["part"]
    if body.sums:
        raise GraphcError(f"scan {body.label}: a backward scan is not differentiated again (no second order "
                          "through time)")
    if kind == "saved":
        raise GraphcError("scan: a saved per-step value has no gradient of its own (it feeds the backward scan)")
    back, sources, d_xs = backward_body(b, body, index if kind == "ys" else None)
    k, m = len(body.carry), len(body.xs)
    inits, seqs, consts = node.inputs[:k], node.inputs[k:k + m], node.inputs[k + m:]
    args = []
    with b.because(node, "3"):
        for role, i in sources:
            if role == "adj":
                args.append(d_out if kind == "final" and i == index else b.zeros(inits[i].shape))
            elif role == "acc":
                continue                # a running sum from 0: no initial value (Body.sums)
            elif role == "saved":
                args.append(b.apply("scan", *node.inputs, body=body, part=("saved", i)))
            elif role == "x":
                args.append(seqs[i])
            elif role == "dy":
                args.append(d_out)
            else:
                args.append(consts[i])
        parts = {}
        for p, (role, i) in enumerate(sources[:len(back.carry)]):
            parts[(role, i)] = b.apply("scan", *args, body=back, part=("final", p))
        for p, j in enumerate(d_xs):
            parts[("x", j)] = b.apply("scan", *args, body=back, part=("ys", p))
    out = [parts.get(("adj", i)) for i in range(k)]
    out += [parts.get(("x", j)) for j in range(m)]
    out += [parts.get(("acc", c)) for c in range(len(consts))]
    return out
