"""Random valid specs for the differential fuzzer (graphc/tools/fuzz.py): DAGs of 3-20 ops over
every public op, as TOML text anyone can rerun.

The generator is a hypothesis strategy (`specs()`), so a failing spec shrinks to a minimal one.
It builds the graph line by line (graphc/tools/fuzz_builder.py's Builder). Each step draws an
entry of `ENTRIES`, the op table below: one entry per op, a function that draws the op's
operands (a value already in the graph, which makes values used more than once and params
shared, or a new input or param of a fitting shape), its attributes, and keeps them in the op's
valid domain. The last step reduces the values nothing reads yet into a scalar loss and outputs,
so every node is live.

This module holds the elementwise, matmul and reduction entries and `specs()`; the network
layers' entries (convolutions, pooling, layout, normalisation, losses, embedding, dense) are
graphc/tools/fuzz_specs_layers.py's, the sequence ops' graphc/tools/fuzz_specs_seq.py's. Adding
an op is one function under `@entry("name")` in the module of its kind;
`tests/test_fuzz_random.py` fails while a public op of graphc.ops.REGISTRY has no entry.
"""
from __future__ import annotations

import math

from hypothesis import strategies as st

from graphc.tools.fuzz_builder import (ADDENDS, BATCH, DIMS, ENTRIES, MAX_FIXED, MAX_NODES, MAX_ROW, MIN_NODES,  # noqa: F401
                                       RUN_TIME, SCALES, SEQ, Builder, Entry, Spec, Val, _broadcast, _compatible,
                                       covered_ops, entry, fixed, largest, run_time)


# ====================================================================== the op table
# Elementwise unary ops: (spec form, operand domain, magnitude, lower bound, sparse).
def _unary(op: str, form: str, domain: str = "any", mag=lambda m: m, low=lambda v: 0.0, sparse=None):
    def draw(b: Builder):
        v = b.data()
        ops = 1
        if domain == "positive":
            text, lo, extra = b.positive(v)
            ops += extra
            v_for = Val(v.name, v.shape, mag=v.mag, low=lo)
        elif domain == "bounded":
            text, m = b.bounded(v)
            v_for = Val(v.name, v.shape, mag=m, low=0.0)
        else:
            text, v_for = v.name, v
        b.line(form.format(text), v.shape, [v], mag=mag(v_for.mag), low=low(v_for),
               sparse=v.sparse if sparse is None else sparse, ops=ops)
    entry(op)(draw)


_unary("relu", "relu({})", mag=lambda m: m, sparse=True)
_unary("sigmoid", "sigmoid({})", mag=lambda m: 0.5,
       low=lambda v: 1 / (1 + math.exp(min(4 * v.mag, 700))), sparse=False)
_unary("tanh", "tanh({})", mag=lambda m: min(m, 1.0))
_unary("exp", "exp({})", "bounded", mag=lambda m: math.exp(m), low=lambda v: math.exp(-4 * v.mag), sparse=False)
_unary("log", "log({})", "positive", mag=lambda m: 1 + abs(math.log(max(m, 1e-3))), sparse=False)
_unary("sqrt", "sqrt({})", "positive", mag=lambda m: math.sqrt(m), low=lambda v: math.sqrt(v.low))
_unary("neg", "-{}")
_unary("sign", "sign({})", mag=lambda m: 1.0, sparse=True)
_unary("leaky_relu", "leaky_relu({}, negative_slope=0.1)", mag=lambda m: m)
_unary("elu", "elu({})", mag=lambda m: m + 1)
_unary("softplus", "softplus({})", mag=lambda m: m + 1, sparse=False)
_unary("gelu", "gelu({})", mag=lambda m: m)
_unary("silu", "silu({})", mag=lambda m: m)
_unary("erf", "erf({})", mag=lambda m: min(m, 1.0))


@entry("gelu_tanh", ops=("gelu",))
def gelu_tanh(b: Builder):
    v = b.data()
    b.line(f"gelu({v.name}, approximate='tanh')", v.shape, [v], mag=v.mag, sparse=False)


@entry("where")
def where(b: Builder):
    """where(relu(c), a, o): the mask relu of a new N(0, 1) input c (zero about half the time),
    shaped to broadcast with a (the same, a suffix, axes of 1, a scalar); o a value, a param or a
    constant, shaped likewise."""
    a = b.data()
    mask = b.new_input(_partner_shape(b, a))
    shape = _partner_shape(b, a)
    if not _compatible(shape, mask.shape):      # two partners of a that widen the same axis of 1 differently
        shape = mask.shape
    if not shape and b.rarely(2):
        other = Val(b.pick(ADDENDS), (), mag=1.0)
        operands = [mask, a]
    else:
        def make():
            return b.new_input(shape) if run_time(shape) else b.param(shape)
        other = b.operand(lambda v: v.shape == shape and v is not a, make)
        operands = [mask, a, other]
    out = _broadcast(_broadcast(mask.shape, a.shape), other.shape)
    text = other.name if not other.name.startswith("-") else f"({other.name})"
    b.line(f"where(relu({mask.name}), {a.name}, {text})", out, operands, mag=max(a.mag, other.mag),
           low=min(a.low, other.low), sparse=True, ops=2)


@entry("square")
def square(b: Builder):
    v = b.data()
    text = f"square({v.name})" if not b.rarely(3) else f"{v.name} ** 2"
    b.line(text, v.shape, [v], mag=v.mag ** 2, low=v.low ** 2, sparse=v.sparse)


def _partner_shape(b: Builder, a: Val) -> tuple:
    """The shape of the other operand of an elementwise binary op on a: the same, a suffix (a bias),
    some axes of 1 (a row or a column), a scalar, or one broadcasting a in turn (a's axes of 1
    given dims: an outer sum)."""
    modes = ["same", "suffix", "ones", "scalar"]
    if 1 in a.shape:
        modes.append("outer")
    mode = b.pick(modes) if a.rank else "same"
    if mode == "same":
        return a.shape
    if mode == "suffix":
        return a.shape[b.index(a.rank) + 1:] if a.rank > 1 else ()
    if mode == "scalar":
        return ()
    if mode == "ones":
        keep = [b.draw(st.booleans()) for _ in a.shape]
        if all(keep):
            keep[b.index(a.rank)] = False
        return tuple(d if k else 1 for d, k in zip(a.shape, keep))
    row = a.row
    return tuple(b.dim(max(1, (MAX_ROW if a.batched else MAX_FIXED) // row)) if d == 1 else d for d in a.shape)


def _binary(op: str, symbol: str):
    def draw(b: Builder):
        a = b.data()
        shape = _partner_shape(b, a)
        const = not shape and b.rarely(2)
        if const:
            c = Val(b.pick(SCALES if op in ("mul", "div") else ADDENDS), (), mag=1.0)
            c.low = float(c.name) if float(c.name) > 0 else 0.0
        else:
            def make():
                if run_time(shape) or (not b.batched and shape and b.rarely(2)):
                    return b.new_input(shape, "p" if op == "div" and b.rarely(2) else "x")
                return b.param(shape)
            c = b.operand(lambda v: v.shape == shape, make)
        left, right = (c, a) if (b.rarely(3) and op != "div") or (op == "div" and b.rarely(4)) else (a, c)
        out = _broadcast(left.shape, right.shape)
        ops = 1
        rtext = right.name
        if op == "div":
            rtext, rlow, extra = b.positive(right)
            ops += extra
        if op in ("add", "sub"):
            mag = max(left.mag, right.mag)
            low = left.low + right.low if op == "add" and left.low and right.low else 0.0
            sparse = (left.sparse and right.sparse) or (op == "sub" and left is right)   # v - v: all zeros (no norm2 of it)
        elif op == "mul":
            mag, low, sparse = left.mag * right.mag, left.low * right.low, left.sparse or right.sparse
        else:
            mag, low, sparse = left.mag / rlow, 0.0, left.sparse
        ltext = left.name if not left.name.startswith("-") else f"({left.name})"
        if rtext.startswith("-"):
            rtext = f"({rtext})"
        b.line(f"{ltext} {symbol} {rtext}", out, [a] if const else [left, right], mag=mag, low=low,
               sparse=sparse, ops=ops)
    entry(op)(draw)


_binary("add", "+")
_binary("sub", "-")
_binary("mul", "*")
_binary("div", "/")


MATMUL_FORMS = ["a @ W.T", "a @ W", "W @ a", "a.T @ b", "a @ v", "v @ W", "u @ v", "a @ b.T"]


@entry("matmul", ops=("matmul", "transpose"), weight=4)
def matmul(b: Builder):
    """NumPy's 1-D and 2-D forms, with .T on either side: x Wᵀ, x W, W x (the notes' column form),
    aᵀ b (a contraction over the batch), matrix-vector, vector-matrix, vector-vector, a bᵀ."""
    form = b.pick(MATMUL_FORMS)
    if form in ("a @ W.T", "a @ W"):
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        room = (MAX_ROW if a.batched else MAX_FIXED)
        m = b.dim(max(1, min(room, MAX_FIXED // k)))
        if form == "a @ W.T":
            w = b.param((m, k))
            b.line(f"{a.name} @ {w.name}.T", (a.shape[0], m), [a, w], mag=a.mag * w.mag * math.sqrt(k), ops=2)
        else:
            w = b.param((k, m))
            b.line(f"{a.name} @ {w.name}", (a.shape[0], m), [a, w], mag=a.mag * w.mag * math.sqrt(k))
    elif form == "W @ a":
        a = b.operand(lambda v: v.rank in (1, 2) and fixed(v.shape[0]),
                      lambda: b.new_input(b.shape(1, batch=False)))
        k = a.shape[0]
        m = b.dim(max(1, min(MAX_FIXED // k, (MAX_ROW if a.batched else MAX_FIXED) // max(1, a.row // k))))
        w = b.param((m, k))
        b.line(f"{w.name} @ {a.name}", (m,) + a.shape[1:], [w, a], mag=a.mag * w.mag * math.sqrt(k))
    elif form == "a.T @ b":
        a = b.data(ranks=(2,))
        r = a.shape[0]
        room = MAX_FIXED // max(1, largest(a.shape[1]))
        c = b.operand(lambda v: v.rank == 2 and v.shape[0] == r and (fixed(v.shape[1]) or fixed(a.shape[1])),
                      lambda: b.new_input((r, b.dim(max(1, room)))) if not fixed(r) else b.param((r, b.dim(max(1, room)))))
        out = (a.shape[1], c.shape[1])
        if math.prod(largest(d) for d in out) > 4 * MAX_FIXED:
            return
        k = largest(r)
        b.line(f"{a.name}.T @ {c.name}", out, [a, c], mag=a.mag * c.mag * math.sqrt(k), ops=2)
    elif form == "a @ v":
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        v = b.operand(lambda u: u.shape == (k,), lambda: b.param((k,)))
        b.line(f"{a.name} @ {v.name}", (a.shape[0],), [a, v], mag=a.mag * v.mag * math.sqrt(k))
    elif form == "v @ W":
        v = b.operand(lambda u: u.rank == 1 and u.last_fixed, lambda: b.new_input(b.shape(1, batch=False)))
        k = v.shape[0]
        m = b.dim(max(1, MAX_FIXED // k))
        w = b.param((k, m))
        b.line(f"{v.name} @ {w.name}", (m,), [v, w], mag=v.mag * w.mag * math.sqrt(k))
    elif form == "u @ v":
        u = b.operand(lambda x: x.rank == 1 and x.last_fixed, lambda: b.new_input(b.shape(1, batch=False)))
        v = b.operand(lambda x: x.shape == u.shape, lambda: b.param(u.shape))
        b.line(f"{u.name} @ {v.name}", (), [u, v], mag=u.mag * v.mag * math.sqrt(u.shape[0]))
    else:
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        c = b.operand(lambda v: v.rank == 2 and v.shape[-1] == k, lambda: b.param((b.dim(max(1, MAX_FIXED // k)), k)))
        out = (a.shape[0], c.shape[0])
        if math.prod(largest(d) for d in out) > 8 * MAX_FIXED:
            return
        b.line(f"{a.name} @ {c.name}.T", out, [a, c], mag=a.mag * c.mag * math.sqrt(k), ops=2)


@entry("transpose")
def transpose(b: Builder):
    v = b.data(ranks=(2, 1))
    b.line(f"{v.name}.T", tuple(reversed(v.shape)), [v], mag=v.mag, low=v.low, sparse=v.sparse)


def _reduce(op: str):
    def draw(b: Builder):
        v = b.data(ranks=(2, 1, 3))
        axis = b.pick([None, *range(v.rank), *range(-v.rank, 0)])
        keep = b.rarely(3)
        args = [v.name] + ([f"axis={axis}"] if axis is not None else []) + (["keepdims=True"] if keep else [])
        if axis is None:
            shape, count = ((1,) * v.rank if keep else ()), math.prod(largest(d) for d in v.shape)
        else:
            ax = axis % v.rank
            count = largest(v.shape[ax])
            shape = v.shape[:ax] + ((1,) if keep else ()) + v.shape[ax + 1:]
        mag = v.mag * math.sqrt(count) if op == "sum" else v.mag
        b.line(f"{op}({', '.join(args)})", shape, [v], mag=mag, low=v.low, sparse=v.sparse)
    entry(op)(draw)


_reduce("sum")
_reduce("mean")


@entry("max")
def max_(b: Builder):
    """Over all elements, one axis or a pair of axes, of a value without ties: no exact zeros, no
    entries equal by construction (max's vjp gives each tied entry the whole gradient: an embedding's
    two rows of one id made d_w twice the derivative)."""
    v = b.data(lambda u: not u.sparse and not u.ties, ranks=(2, 3, 4, 1))
    axis = b.pick([None, *range(v.rank)] + ([(1, v.rank - 1)] if v.rank >= 3 else []))
    keep = b.rarely(3)
    axes = range(v.rank) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    shape = tuple(1 if a in axes else d for a, d in enumerate(v.shape) if keep or a not in axes)
    args = [v.name] + ([f"axis={axis}"] if axis is not None else []) + (["keepdims=True"] if keep else [])
    b.line(f"max({', '.join(args)})", shape, [v], mag=v.mag, low=v.low)


# The entries of the network layers (convolutions, pooling, layout, normalisation, losses, embedding,
# dense) are graphc/tools/fuzz_specs_layers.py's, and the sequence ops' fuzz_specs_seq.py's: imported
# here, in this order, they register after the entries above (the table's order is what a seed draws).
import graphc.tools.fuzz_specs_layers  # noqa: E402,F401
import graphc.tools.fuzz_specs_seq  # noqa: E402,F401  (the sequence ops' entries register themselves)

ENTRY_NAMES = [e.name for e in ENTRIES]
FIRST = "add"           # the entry a failing spec shrinks toward


@st.composite
def specs(draw, min_nodes: int = MIN_NODES, max_nodes: int = MAX_NODES, entries: tuple[str, ...] | None = None,
          sequence: bool | None = None) -> Spec:
    """A random valid spec: min_nodes to max_nodes ops drawn from ENTRIES (or those of them named
    in `entries`), then the loss and the outputs; the parsed graph, which counts its constants and
    the positivity wrappers too, has 3 to about 30 nodes (median 12-16). sequence: new values of
    rank 3 and more are often [N, T, ...], T a second run-time dim (None: in one spec in 3)."""
    table = sorted((e for e in ENTRIES if entries is None or e.name in entries), key=lambda e: e.name != FIRST)
    table = [e for e in table for _ in range(e.weight)]      # hypothesis shrinks toward table[0]
    if sequence is None:
        sequence = draw(st.integers(0, 2)) == 2
    b = Builder(draw, sequence)
    target = draw(st.integers(min_nodes, max_nodes))
    for _ in range(4 * max_nodes):
        if b.count >= target and b.lines:         # (the loss may only name a scalar line again)
            break
        e = draw(st.sampled_from(table))
        b.entries.append(e.name)
        e.draw(b)
    b.finish()
    text = b.text()
    return Spec(text, b.entries, b.count, b.params_only,
                tuple(d for d in RUN_TIME if d != BATCH and f'{d} = "{RUN_TIME[d][0]}"' in text))


__all__ = ["BATCH", "SEQ", "DIMS", "ENTRIES", "Entry", "Spec", "covered_ops", "entry", "specs"]
