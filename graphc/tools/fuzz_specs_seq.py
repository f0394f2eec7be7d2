"""The differential fuzzer's entries for the sequence ops (graphc/tools/fuzz_specs.py holds the
rest of the op table and imports these): matmul of rank 3-4 operands with broadcast batch axes,
scaled_dot_product_attention, a table sliced by a run-time dim (`wpe[:T]`) or by numbers, and
the scan construct (an RNN or GRU-like cell over [N, L, d]). softmax and log_softmax over any
axis and cross_entropy over [N, T, V] are fuzz_specs.py's entries (they draw rank 3 and `axis=`).

Dims of T's kind cross the attention kernel's blocks (32 query rows, 64 keys: Tk is T or a dim
of DIMS up to 129) and the GEMM's tiles (the rows of a batched product are N·T·M).
"""
from __future__ import annotations

import math

from graphc.tools.fuzz_builder import (BATCH, MAX_FIXED, MAX_ROW, MAX_SEQ_ROW, SEQ, Builder, Val, entry, fixed, largest, row_room,
                                       run_time)


def _other(b: Builder, shape: tuple, domain: str = "x") -> Val:
    """A new operand of this shape: an input when it has a run-time dim, else mostly a param."""
    return b.new_input(shape, domain) if run_time(shape) or b.rarely(4) else b.param(shape)


@entry("matmul_batched", ops=("matmul", "transpose", "permute"), weight=2)
def matmul_batched(b: Builder):
    """a [..., M, K] of rank 3-4 times: a matrix W [K, P] or W.T (one product of all the rows),
    an operand [..., K, P] whose batch axes are a's or 1 (broadcast), or a's own last two axes
    swapped (a Gram matrix a aᵀ, [..., M, M]: M may be T, a T x T result)."""
    a = b.data(lambda u: u.rank in (3, 4) and fixed(u.shape[-1]), ranks=(3, 4))
    if a.rank not in (3, 4) or not fixed(a.shape[-1]):
        return
    lead, m, k = a.shape[:-2], a.shape[-2], a.shape[-1]
    swap = tuple(range(a.rank - 2)) + (a.rank - 1, a.rank - 2)
    form = b.pick(["W", "W.T", "batched", "gram", "gram.T"] + ["gram"] * (m == SEQ))    # T x T scores
    room = row_room(a.shape) // max(1, math.prod(d for d in a.shape[:-1] if fixed(d)))
    if form in ("W", "W.T", "batched"):
        p = b.dim(max(1, min(room, 257)))
        if form == "W":
            w = b.param((k, p))
            b.line(f"{a.name} @ {w.name}", lead + (m, p), [a, w], mag=a.mag * w.mag * math.sqrt(k))
        elif form == "W.T":
            w = b.param((p, k))
            b.line(f"{a.name} @ {w.name}.T", lead + (m, p), [a, w], mag=a.mag * w.mag * math.sqrt(k), ops=2)
        else:
            keep = [not b.rarely(3) for _ in lead]
            shape = tuple(d if kept else 1 for d, kept in zip(lead, keep)) + (k, p)
            c = b.operand(lambda u: u.shape == shape and u is not a, lambda: _other(b, shape))
            out = tuple(d for d in lead) + (m, p)
            b.line(f"{a.name} @ {c.name}", out, [a, c], mag=a.mag * c.mag * math.sqrt(k))
        return
    if largest(m) * largest(m) > row_room(a.shape) * 16:
        return
    order = ", ".join(map(str, swap))
    if form == "gram":                  # a aᵀ: [..., M, M], a contraction over K
        b.line(f"{a.name} @ permute({a.name}, ({order}))", lead + (m, m), [a, a],
               mag=a.mag * a.mag * math.sqrt(k), ops=2)
    else:                               # aᵀ a: [..., K, K], a contraction over M (T, the sequence, too)
        b.line(f"permute({a.name}, ({order})) @ {a.name}", lead + (k, k), [a, a],
               mag=a.mag * a.mag * math.sqrt(largest(m)), ops=2)


@entry("scaled_dot_product_attention", ops=("scaled_dot_product_attention",), weight=2)
def attention(b: Builder):
    """q [B, (H,) Tq, D], k [.., Tk, D], v [.., Tk, Dv]: the batch and head axes equal (N or
    fixed), D and Dv fixed, Tq and Tk each T or a dim (Tq != Tk too, across the kernel's 32-row
    and 64-key blocks), causal or not, scale 1/√D or given. q of magnitude at most 2 (a softmax
    saturated to one key has gradients of rounding noise)."""
    q = b.data(lambda u: u.rank in (3, 4) and fixed(u.shape[-1]) and u.shape[-1] <= 129, ranks=(3, 4))
    if q.rank not in (3, 4) or not fixed(q.shape[-1]) or q.shape[-1] > 129:
        return
    lead, tq, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    others = [t for t in (1, 7, 31, 33, 64, 65, 127, 129) if t != tq]
    if b.sequence and BATCH in lead and tq != SEQ:
        others += [SEQ] * 4             # keys of the run-time length for fixed queries: as likely as a fixed count
    tk = tq if not b.rarely(3) else b.pick(others)
    per = math.prod(d for d in lead if fixed(d))
    room = 4 * MAX_ROW if run_time(lead) else MAX_FIXED
    if per * largest(tk) * d > room or per * largest(tq) * d > room:
        return
    dv = b.pick([n for n in (1, 3, 8, 16, 17, 33, 64) if per * largest(tk) * n <= room] or [1])
    k = b.operand(lambda u: u.shape == lead + (tk, d) and u is not q, lambda: _other(b, lead + (tk, d)))
    v = b.operand(lambda u: u.shape == lead + (tk, dv), lambda: _other(b, lead + (tk, dv)))
    qtext, qmag = b.bounded(q)
    ktext, kmag = b.bounded(k)
    keys = []
    if b.draw_bool():
        keys.append("is_causal=True")
    scale = b.pick([None, None, 0.5, 0.125])
    if scale is not None:
        keys.append(f"scale={scale}")
    b.line(f"scaled_dot_product_attention({', '.join([qtext, ktext, v.name] + keys)})", lead + (tq, dv), [q, k, v],
           mag=v.mag, sparse=v.sparse)

@entry("attention_heads", ops=("scaled_dot_product_attention", "reshape", "permute", "slice", "matmul", "transpose",
                               "add"), weight=2)
def attention_heads(b: Builder):
    """Multi-head self-attention as examples/char_gpt.toml writes it: one projection
    a = x Wᵀ + b of x [B, L, E] (or [L, E]) to 3·H·D columns; q, k and v sliced from it and split
    into heads by reshape and permute ([B, H, L, D], or [H, L, D]); attention causal or not; the
    heads merged back by permute and reshape ([B, L, H·D]). B and L are N, T or fixed (a
    time-major [T, N, E] too: then the attention runs over the batch's rows)."""
    x = b.data(lambda u: u.rank in (2, 3) and fixed(u.shape[-1]), ranks=(3, 2))
    if x.rank not in (2, 3) or not fixed(x.shape[-1]):
        return
    lead, e = x.shape[:-1], x.shape[-1]
    per = math.prod(d for d in lead if fixed(d))
    room = row_room(x.shape) // per
    sizes = [(h, d) for h in (1, 2, 3, 4, 8) for d in (1, 2, 3, 7, 8, 16, 17, 33) if 3 * h * d <= room]
    if not sizes:
        return
    h, d = sizes[b.index(len(sizes))]
    hd = 3 * h * d // 3
    w, bias = b.param((3 * hd, e)), b.param((3 * hd,))
    a = b.line(f"{x.name} @ {w.name}.T + {bias.name}", lead + (3 * hd,), [x, w, bias], mag=x.mag * w.mag * math.sqrt(e) + 0.5,
               ops=3)
    scale = "" if a.mag <= 2 else f" * {10.0 ** -math.ceil(math.log10(a.mag / 2)):g}"    # q, k: a softmax not saturated
    order = (0, 2, 1, 3) if x.rank == 3 else (1, 0, 2)
    dims = ", ".join(str(n) for n in lead)
    heads = tuple(lead[i] if i < len(lead) else (h, d)[i - len(lead)] for i in range(len(lead) + 2))
    heads = tuple(heads[i] for i in order)                    # [B, H, L, D] or [H, L, D]
    qkv = []
    for i in range(3):
        cols = ", ".join([":"] * len(lead) + [f"{i * hd}:{(i + 1) * hd}"])
        s = scale if i < 2 else ""
        qkv.append(b.line(f"permute(reshape({a.name}[{cols}]{s}, ({dims}, {h}, {d})), {order})", heads, [a],
                          mag=min(a.mag, 2.0) if i < 2 else a.mag, ops=3 + bool(s)))
    keys = ["is_causal=True"] * b.draw_bool() + [f"scale={b.pick([0.5, 0.125])}"] * b.rarely(3)
    att = b.line(f"scaled_dot_product_attention({', '.join([q.name for q in qkv] + keys)})", heads, qkv, mag=a.mag)
    b.line(f"reshape(permute({att.name}, {order}), ({dims}, {hd}))", lead + (hd,), [att], mag=a.mag, ops=2)



@entry("slice", ops=("slice",))
def slice_(b: Builder):
    """A table's first rows by a run-time dim, GPT-2's wpe[:T], added to a value [N, T, d] (when
    the spec has T); or a value's last axis sliced by numbers, v[:, a:c]."""
    if b.sequence and b.batched and not b.rarely(3):
        x = b.data(lambda u: u.rank == 3 and u.shape[:2] == (BATCH, SEQ) and fixed(u.shape[-1]), ranks=(3,))
        if x.shape[:2] != (BATCH, SEQ) or not fixed(x.shape[-1]):
            x = b.new_input(b.shape(3, seq=True))
        w = b.param((largest(SEQ), x.shape[-1]))
        b.line(f"{x.name} + {w.name}[:{SEQ}]", x.shape, [x, w], mag=max(x.mag, w.mag), ops=2)
        return
    v = b.data(lambda u: u.rank >= 1 and fixed(u.shape[-1]) and u.shape[-1] > 1, ranks=(2, 3, 1))
    if v.rank == 0 or not fixed(v.shape[-1]) or v.shape[-1] < 2:
        return
    n = v.shape[-1]
    lo = b.index(n - 1)
    hi = lo + 1 + b.index(n - lo - 1)
    index = ", ".join([":"] * (v.rank - 1) + [f"{lo}:{hi}"])
    b.line(f"{v.name}[{index}]", v.shape[:-1] + (hi - lo,), [v], mag=v.mag, low=v.low, sparse=v.sparse)


@entry("scan", ops=("scan",), weight=2)
def scan(b: Builder):
    """A recurrence over a value's time axis: axis 1 of [N, L, d] (batch-first) or, one scan in 3,
    axis 0 of [L, N, d] (time-major: a permute of a batch-first value, a time-major value the spec
    has, or a new input [L, N, d]); L is T or fixed. The cell: an Elman one
    h' = tanh(x_t Wxᵀ + h Whᵀ + b), or a GRU-like one (gates sliced from stacked weights, as
    examples/gru.toml), h_0 = 0 or a value [N, H]; ys the states at every step ([N, L, H], or
    [L, N, H] time-major) and/or the last state [N, H]."""
    if not b.batched:
        return
    axis = 0 if b.rarely(3) else 1
    x = _scan_sequence(b, axis)
    if x is None:
        return
    n, length, d = x.shape[1 - axis], x.shape[axis], x.shape[-1]
    if largest(length) > 129:
        return
    h = b.pick([1, 2, 3, 7, 8, 16, 17, 33])
    gru = b.rarely(2)
    g = 3 * h if gru else h
    wx, wh, bias = b.param((g, d)), b.param((g, h)), b.param((g,))
    s = b.name("scan")
    xt, hc, hn = f"{s}_x", f"{s}_h", f"{s}_n"
    init_from = b.operand(lambda u: u.shape == (n, h), lambda: b.new_input((n, h))) if b.rarely(3) else None
    init = f'"{init_from.name}"' if init_from is not None else f'{{ shape = ["{n}", "D{h}"], value = 0.0 }}'
    if gru:
        body = [f'{s}_gi = "{xt} @ {wx.name}.T + {bias.name}"', f'{s}_gh = "{hc} @ {wh.name}.T"',
                f'{s}_r = "sigmoid({s}_gi[:, 0:{h}] + {s}_gh[:, 0:{h}])"',
                f'{s}_z = "sigmoid({s}_gi[:, {h}:{2 * h}] + {s}_gh[:, {h}:{2 * h}])"',
                f'{s}_c = "tanh({s}_gi[:, {2 * h}:{3 * h}] + {s}_r * {s}_gh[:, {2 * h}:{3 * h}])"',
                f'{hn} = "(1 - {s}_z) * {s}_c + {s}_z * {hc}"']
    else:
        body = [f'{hn} = "tanh({xt} @ {wx.name}.T + {hc} @ {wh.name}.T + {bias.name})"']
    ys, final = b.name("v"), b.name("v")
    which = b.pick(["ys", "final", "both"])
    results = ([f"ys    = {{ {ys} = \"{hn}\" }}"] if which != "final" else []) \
        + ([f"final = {{ {final} = \"{hc}\" }}"] if which != "ys" else [])
    b.scans[s] = "\n".join([f"[scan.{s}]", f"init  = {{ {hc} = {init} }}", f'xs    = {{ {xt} = "{x.name}" }}',
                            f"axis  = {axis}", f'carry = {{ {hc} = "{hn}" }}', *results, "", f"[scan.{s}.body]", *body])
    operands = [x, wx, wh, bias] + ([init_from] if init_from is not None else [])
    mag = max(1.0, init_from.mag) if gru and init_from is not None else 1.0
    if which != "final":
        b.line(None, (length, n, h) if axis == 0 else (n, length, h), operands, mag=mag, name=ys, ops=len(body) * 2)
    if which != "ys":
        b.line(None, (n, h), operands, mag=mag, name=final, ops=len(body) * 2)


def _scan_sequence(b: Builder, axis: int) -> Val | None:
    """What a scan over `axis` reads: [N, L, d] (axis 1) or [L, N, d] (axis 0), d fixed."""
    def ok(u: Val, ax: int) -> bool:
        return u.rank == 3 and fixed(u.shape[-1]) and u.shape[1 - ax] == BATCH and u.shape[ax] != BATCH
    if axis == 1:
        x = b.data(lambda u: ok(u, 1), ranks=(3,))
        return x if ok(x, 1) else None
    have = [u for u in b.vals if ok(u, 0)]
    if have and not b.rarely(3):
        return have[b.index(len(have))]
    if b.rarely(3):                                   # a new time-major input [L, N, d]
        length = SEQ if b.sequence and b.draw_bool() else b.dim(64)
        d = b.dim(MAX_SEQ_ROW if not fixed(length) else max(1, MAX_ROW // length))
        return b.new_input((length, BATCH, d))
    x = b.data(lambda u: ok(u, 1), ranks=(3,))        # a batch-first value made time-major
    if not ok(x, 1):
        return None
    return b.line(f"permute({x.name}, (1, 0, 2))", (x.shape[1], x.shape[0], x.shape[2]), [x], mag=x.mag,
                  low=x.low, sparse=x.sparse)
