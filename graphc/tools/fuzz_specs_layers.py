"""The differential fuzzer's entries for the network layers (graphc/tools/fuzz_specs.py holds the
elementwise, matmul and reduction entries and the `specs()` strategy, and imports these after its
own): conv2d and conv1d with strides, paddings, dilations and groups, the pools, reshape, concat,
permute, pad and flatten, layer_norm, batch_norm (with its running statistics) and dropout, dot,
norm2, softmax and log_softmax over any axis, cross_entropy and mse, embedding, and the dense
pattern. Each is one function under `@entry("name")` (graphc/tools/fuzz_builder.py's registry).
"""
from __future__ import annotations

import math

from hypothesis import strategies as st

from graphc.tools.fuzz_builder import BATCH, MAX_FIXED, MAX_ROW, Builder, Val, _broadcast, entry, fixed, largest, run_time


# ---------------------------------------------------------------- convolutions and pooling (NCHW)
def _image(b: Builder, rank: int = 4, dense: bool = False) -> Val:
    """[N, C, H, W] (or [N, C, L]): a value whose channel and spatial dims are fixed."""
    return b.data(lambda u: all(fixed(d) for d in u.shape[1:]) and not (dense and u.sparse), ranks=(rank,))


def _window(b: Builder, sizes: tuple, pool: bool = False):
    """(kernel, stride, padding) per spatial dim of `sizes`, each kernel fitting its padded dim."""
    pad, stride = b.pick([0, 1]), b.pick([1, 2])
    kernel = []
    for n in sizes:
        fits = [k for k in (1, 2, 3, 5) if k <= n + 2 * pad and (not pool or 2 * pad <= k)]
        if not fits:
            return None
        kernel.append(b.pick(fits))
    return kernel, stride, pad


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


@entry("conv2d")
def conv2d(b: Builder):
    x = _image(b)
    n, c, h, w = x.shape
    win = _window(b, (h, w))
    if win is None:
        return
    (kh, kw), stride, pad = win
    groups = b.pick(sorted({g for g in (1, 2, c) if c % g == 0}))
    cout = groups * b.pick([1, 2, 4])
    oh, ow = _out(h, kh, stride, pad), _out(w, kw, stride, pad)
    if cout * oh * ow > MAX_ROW or cout > 64:
        return
    k = b.param((cout, c // groups, kh, kw))
    bias = b.param((cout,)) if not b.rarely(3) else None
    args = [x.name, k.name] + ([bias.name] if bias else [])
    args += [f"stride={stride}"] * (stride != 1) + [f"padding={pad}"] * (pad != 0) + [f"groups={groups}"] * (groups != 1)
    b.line(f"conv2d({', '.join(args)})", (n, cout, oh, ow), [x, k] + ([bias] if bias else []),
           mag=x.mag * k.mag * math.sqrt(c // groups * kh * kw) + (0.5 if bias else 0.0))


@entry("conv1d")
def conv1d(b: Builder):
    x = _image(b, rank=3)
    n, c, length = x.shape
    win = _window(b, (length,))
    if win is None:
        return
    (k,), stride, pad = win
    cout = b.pick([1, 2, 4])
    lo = _out(length, k, stride, pad)
    if cout * lo > MAX_ROW:
        return
    w = b.param((cout, c, k))
    b.line(f"conv1d({x.name}, {w.name}, stride={stride}, padding={pad})", (n, cout, lo), [x, w],
           mag=x.mag * w.mag * math.sqrt(c * k))


def _pool_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooled size: rounded up with ceil_mode, the last window starting inside the input
    or its left padding."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def _pool(op: str):
    def draw(b: Builder):
        """The window of _window, and now and then torch's other keywords: ceil_mode, max's
        dilation, avg's count_include_pad=False and divisor_override."""
        x = _image(b, dense=op == "max_pool2d")       # a max over exact zeros would tie
        n, c, h, w = x.shape
        win = _window(b, (h, w), pool=True)
        if win is None:
            return
        (kh, kw), stride, pad = win
        keys, ceil, dil = [], b.rarely(3), 1
        if ceil:
            keys.append("ceil_mode=True")
        # (the dilated window fits inside the input itself: with padding, a window over a narrow input
        # could have every tap in the padding, a max of nothing, -inf, in torch too)
        if op == "max_pool2d" and b.rarely(4) and all(2 * (k - 1) + 1 <= m for k, m in ((kh, h), (kw, w))):
            dil = 2
            keys.append("dilation=2")
        if op == "avg_pool2d" and b.rarely(3):
            keys.append("count_include_pad=False")
        if op == "avg_pool2d" and b.rarely(5):
            keys.append(f"divisor_override={b.pick([2, 3])}")
        b.line(f"{op}({', '.join([x.name, f'({kh}, {kw})', f'stride={stride}', f'padding={pad}'] + keys)})",
               (n, c, _pool_out(h, kh, stride, pad, dil, ceil), _pool_out(w, kw, stride, pad, dil, ceil)), [x],
               mag=x.mag, low=x.low if op == "max_pool2d" or (pad == 0 and not ceil and not keys) else 0.0,
               sparse=x.sparse and op != "max_pool2d")
    entry(op)(draw)


_pool("max_pool2d")
_pool("avg_pool2d")


@entry("adaptive_avg_pool2d")
def adaptive_avg_pool2d(b: Builder):
    x = _image(b)
    b.line(f"adaptive_avg_pool2d({x.name}, 1)", x.shape[:2] + (1, 1), [x], mag=x.mag, low=x.low, sparse=x.sparse)


def _leading(shape: tuple) -> int:
    """How many run-time dims lead the shape."""
    k = 0
    while k < len(shape) and not fixed(shape[k]):
        k += 1
    return k


def _factor(n: int) -> list[tuple[int, ...]]:
    """Ways to write n as one or two factors (and with an axis of 1)."""
    out = [(n,), (n, 1), (1, n)]
    out += [(a, n // a) for a in range(2, n) if n % a == 0 and a * a <= n]
    return out


@entry("reshape")
def reshape(b: Builder):
    """Keeps the run-time dims where they are (leading) and regroups the fixed dims after them
    (or, without a run-time dim, all of them)."""
    v = b.data(lambda u: all(fixed(d) for d in u.shape[_leading(u.shape):]), ranks=(2, 3, 1))
    lead = v.shape[:_leading(v.shape)]
    if run_time(v.shape[len(lead):]):
        return
    tail = _factor(v.row)
    new = lead + tail[b.index(len(tail))]
    if len(new) > max(3, len(lead) + 2):
        return
    text = ", ".join(str(d) for d in new)
    b.line(f"reshape({v.name}, shape=({text}{',' if len(new) == 1 else ''}))", new, [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("concat")
def concat(b: Builder):
    """Along the last axis, 2 or 3 operands sharing the other dims (the same value twice, too)."""
    v = b.data(ranks=(2, 1, 3), last_fixed=True)
    lead = v.shape[:-1]
    parts, width = [v], v.shape[-1]
    room = (MAX_ROW if v.batched else MAX_FIXED) // max(1, v.row // v.shape[-1])
    for _ in range(1 + b.rarely(3)):
        def make():
            d = b.dim(max(1, room - width))
            return b.new_input(lead + (d,)) if run_time(lead) else b.param(lead + (d,))
        u = b.operand(lambda x: x.shape[:-1] == lead and x.last_fixed and x.rank == v.rank, make)
        parts.append(u)
        width += u.shape[-1]
    if width > room:
        return
    b.line(f"concat({', '.join(p.name for p in parts)})", lead + (width,), parts,
           mag=max(p.mag for p in parts), low=min(p.low for p in parts), sparse=any(p.sparse for p in parts),
           ties=len({p.name for p in parts}) < len(parts))


@entry("permute")
def permute(b: Builder):
    """Any order of the axes of a rank-2 or rank-3 value (the batch dim may move)."""
    v = b.data(ranks=(3, 2))
    order = list(range(v.rank))
    for i in range(v.rank - 1, 0, -1):                  # a drawn permutation, shrinking to the identity
        j = b.index(i + 1)
        order[i], order[j] = order[j], order[i]
    b.line(f"permute({v.name}, {tuple(order)})", tuple(v.shape[a] for a in order), [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("pad")
def pad(b: Builder):
    """The last axis (and rarely the one before) padded by 0 to 2 on each side, with 0 or a value."""
    v = b.data(lambda u: u.rank >= 1 and fixed(u.shape[-1]) and (u.rank < 2 or fixed(u.shape[-2])),
               ranks=(2, 3, 4, 1))
    if v.rank == 0 or not fixed(v.shape[-1]):          # a new input [N]: nothing to pad
        return
    two = v.rank >= 2 and fixed(v.shape[-2]) and b.rarely(3)
    pads = [b.index(3), b.index(3)] + ([b.index(3), b.index(3)] if two else [])
    value = b.pick([0.0, 1.0, -0.5])
    shape = list(v.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] += pads[2 * i] + pads[2 * i + 1]
    b.line(f"pad({v.name}, {tuple(pads)}, value={value})", tuple(shape), [v],
           mag=max(v.mag, abs(value)), low=min(v.low, value) if value > 0 else 0.0, sparse=v.sparse or value == 0)


@entry("layer_norm")
def layer_norm(b: Builder):
    """Over the last axis (a fixed one), with the affine weight (and mostly the bias): without it
    sum(layer_norm(v)) is identically 0, and finite differences of a zero gradient are noise."""
    v = b.data(lambda u: u.rank >= 1 and fixed(u.shape[-1]) and u.shape[-1] > 1, ranks=(2, 3, 1))
    if v.rank == 0 or not fixed(v.shape[-1]) or v.shape[-1] == 1:
        return
    d = v.shape[-1]
    affine = [b.param((d,))] + ([b.param((d,))] if not b.rarely(3) else [])
    args = ", ".join([v.name, f"({d},)"] + [a.name for a in affine])
    b.line(f"layer_norm({args})", v.shape, [v] + affine, mag=2.0)


@entry("batch_norm")
def batch_norm(b: Builder):
    """Over the channels (axis 1, fixed) of a batched value of rank 2-4, with its own running
    statistics and mostly the affine weight (without it and the bias, sum(batch_norm(v)) is
    identically 0); eps 0.01 or more keeps finite differences well conditioned at small counts."""
    def ok(u: Val) -> bool:
        return 2 <= u.rank <= 4 and u.shape[0] == BATCH and all(fixed(d) for d in u.shape[1:]) and u.shape[1] > 1
    v = b.data(ok, ranks=(2, 3, 4))
    if not ok(v):
        return
    c = v.shape[1]
    args = [v.name, b.state((c,)).name, b.state((c,)).name]
    affine = [b.param((c,))] + ([b.param((c,))] if not b.rarely(3) else [])
    args += [a.name for a in affine]
    eps, momentum = b.pick([0.01, 0.1, 1.0]), b.pick([0.1, 0.5])
    b.line(f"batch_norm({', '.join(args)}, momentum={momentum}, eps={eps})", v.shape, [v] + affine, mag=2.0)


@entry("dropout")
def dropout(b: Builder):
    """Dropout of any value: masks keyed by the model's step count (the train steps advance it)."""
    v = b.data(lambda u: True, ranks=(2, 1, 3))
    p = b.pick([0.1, 0.5])
    b.line(f"dropout({v.name}, {p})", v.shape, [v], mag=v.mag / (1 - p), sparse=True)


@entry("flatten")
def flatten(b: Builder):
    """The axes after the batch dim (or all of a value without one) merged into one."""
    v = b.data(lambda u: all(fixed(d) for d in u.shape[1:]), ranks=(3, 2))
    if not all(fixed(d) for d in v.shape[1:]):
        return
    start = 1 if not fixed(v.shape[0]) else b.index(v.rank)
    size = math.prod(v.shape[start:])
    b.line(f"flatten({v.name}, start_dim={start})", v.shape[:start] + (size,), [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("dot")
def dot(b: Builder):
    a = b.data(ranks=(2, 1, 3), last_fixed=True)
    d = a.shape[-1]
    shape = b.pick([a.shape, (d,)])
    c = b.operand(lambda u: u.shape == shape, (lambda: b.param(shape)) if not run_time(shape)
                  else (lambda: b.new_input(shape)))
    b.line(f"dot({a.name}, {c.name})", _broadcast(a.shape, c.shape)[:-1], [a, c],
           mag=a.mag * c.mag * math.sqrt(d), sparse=a.sparse or c.sparse)


@entry("norm2")
def norm2(b: Builder):
    """Over the last axis, of a value with no all-zero row (never a relu's: its gradient x/‖x‖)."""
    v = b.data(lambda u: not u.sparse, ranks=(2, 1), last_fixed=True)
    b.line(f"norm2({v.name})", v.shape[:-1], [v], mag=v.mag * math.sqrt(v.shape[-1]))


def _softmax(op: str):
    def draw(b: Builder):
        """Over the last axis, or now and then any axis (axis=, negative too: the batch, T)."""
        v = b.data(ranks=(2, 1, 3, 4))
        axis = -1
        if v.rank >= 2 and b.rarely(3):
            axis = b.index(v.rank) - (v.rank if b.draw_bool() else 0)
        d = largest(v.shape[axis]) if v.rank else 1
        text = f"{op}({v.name}" + (f", axis={axis})" if axis != -1 else ")")
        if op == "softmax":
            low = math.exp(-8 * v.mag) / d if v.mag < 50 else 0.0
            b.line(text, v.shape, [v], mag=1.0 / math.sqrt(d), low=low)
        else:
            b.line(text, v.shape, [v], mag=math.log(d) + 4 * v.mag)
    entry(op)(draw)


_softmax("softmax")
_softmax("log_softmax")


@entry("cross_entropy")
def cross_entropy(b: Builder):
    """With int32 labels (shape of the logits without their class axis, shared with other
    losses or ids) or real targets shaped like the logits (target rows, or any value: then the
    gradient flows into them too)."""
    v = b.data(ranks=(2, 3, 1), last_fixed=True)
    if b.draw(st.booleans()):
        y = b.ids(v.shape[:-1])
        b.line(f"cross_entropy({v.name}, {y.name})", (), [v, y], mag=1 + v.mag)
    else:
        t = b.operand(lambda u: u.shape == v.shape and u is not v, lambda: b.new_input(v.shape, "t"), fresh=2)
        b.line(f"cross_entropy({v.name}, {t.name})", (), [v, t], mag=(1 + v.mag) * max(1.0, t.mag))


@entry("mse")
def mse(b: Builder):
    v = b.data()
    t = b.operand(lambda u: u.shape == v.shape and u is not v,
                  (lambda: b.new_input(v.shape)) if v.batched or b.rarely(2) else (lambda: b.param(v.shape)))
    b.line(f"mse({v.name}, {t.name})", (), [v, t], mag=(v.mag + t.mag) ** 2)


@entry("embedding")
def embedding(b: Builder):
    """A row of a table param per id: ids [N], [N, L], [L] or a scalar; the table may be a
    weight matrix used elsewhere too."""
    table = b.operand(lambda u: u.kind == "param" and u.rank == 2 and u.last_fixed,
                      lambda: b.param((b.dim(), b.dim(MAX_ROW // 8))))
    ids_rank = b.pick([1, 2, 0] if b.batched else [1, 0])
    shape = b.shape(ids_rank, last=None)
    if math.prod(d for d in shape if fixed(d)) * table.shape[1] > (MAX_ROW if run_time(shape) else MAX_FIXED):
        shape = shape[:1]
    y = b.ids(shape)
    b.line(f"embedding({table.name}, {y.name})", shape + (table.shape[1],), [table, y], mag=table.mag, ties=True)


@entry("dense", ops=("matmul", "transpose", "add", "relu", "tanh", "sigmoid"), weight=2)
def dense(b: Builder):
    """A pattern rather than an op: act(a @ W.T + b), the GEMM epilogue's bias and activation."""
    a = b.data(ranks=(2,), last_fixed=True)
    k = a.shape[-1]
    m = b.dim(max(1, min(MAX_ROW if a.batched else MAX_FIXED, MAX_FIXED // k)))
    w, bias = b.param((m, k)), b.param((m,))
    act = b.pick(["relu", "", "tanh", "sigmoid"])
    inner = f"{a.name} @ {w.name}.T + {bias.name}"
    b.line(f"{act}({inner})" if act else inner, (a.shape[0], m), [a, w, bias],
           mag=a.mag + 0.5 if act != "sigmoid" else 0.5, sparse=act == "relu", ops=3 + bool(act))
