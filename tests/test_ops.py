"""Every op in the registry: its NumPy reference against plain NumPy, its shape rule against the
reference's output, and its VJP (run by reference.py) against central finite differences in float64.

`CASES` holds one domain-aware input generator per op name. A newly registered op without an
entry here fails `test_every_registered_op_has_a_case`. `GRAD_SPACES` draws each differentiable
op's shapes with hypothesis (broadcasting, size-1 dims, scalars) and reuses the same generators
for its values; a new op with a derivative and no space fails
`test_every_op_with_a_derivative_has_a_hypothesis_space`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from graphc.core.errors import GradientError
from graphc.ops import REGISTRY, OpDef

I32 = np.int32


# ------------------------------------------------------------------ domain-aware generators
def real(rng, *shape):
    return rng.standard_normal(shape)


def positive(rng, *shape):              # log, sqrt, a divisor
    return rng.uniform(0.5, 2.0, shape)


def off_kink(rng, *shape):              # relu, sign: |x| >= 0.2, far from the kink at 0 (eps is 1e-6)
    return np.asarray(rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape))


def labels(rng, depth, *shape):         # class indices / word ids in range
    return rng.integers(0, depth, shape).astype(I32)


def probabilities(rng, *shape):         # real targets of cross_entropy: rows on the simplex
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(axis=-1, keepdims=True)


def _np_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class Case:
    label: str
    args: list                        # positional inputs (float64 or int32 arrays)
    expect: Callable                  # plain NumPy, written independently of the op's reference
    attrs: dict = field(default_factory=dict)


def _unary(np_fn, gen=real):
    def cases(rng):
        return [Case(f"{s}", [gen(rng, *s)], np_fn) for s in [(1,), (5, 7), (), (3,)]]
    return cases


def _binary(np_fn, gen_b=real):
    def cases(rng):
        shapes = [((1,), (1,)), ((5, 7), (5, 7)), ((5, 7), (7,)), ((7,), (5, 7)),
                  ((5, 7), ()), ((), (5, 7)), ((5, 1), (1, 7)), ((4, 1), (4, 3))]
        return [Case(f"{a}x{b}", [real(rng, *a), gen_b(rng, *b)], np_fn) for a, b in shapes]
    return cases


def _embedding_grad_expect(d, ids, rows):
    out = np.zeros((rows, d.shape[-1]))
    for p, r in enumerate(ids.reshape(-1)):
        out[r] += d.reshape(-1, d.shape[-1])[p]
    return out


def _sum_to_expect(x, shape):
    while x.ndim > len(shape):
        x = x.sum(axis=0)
    for i, s in enumerate(shape):
        if s == 1 and x.shape[i] != 1:
            x = x.sum(axis=i, keepdims=True)
    return x


def _naive_layer_norm(x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
    k = len(normalized_shape)
    rows = x.reshape(-1, int(np.prod(normalized_shape)))
    out = np.stack([(r - r.mean()) / np.sqrt(r.var() + eps) for r in rows]).reshape(x.shape)
    return out * (1 if weight is None else weight) + (0 if bias is None else bias)


def _naive_batch_norm(x, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5):
    """Channel by channel, over the batch and every position (training: the batch's statistics)."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        out[:, c] = (v - v.mean()) / np.sqrt(v.var() + eps)
        out[:, c] = out[:, c] * (1 if weight is None else weight[c]) + (0 if bias is None else bias[c])
    return out


def _lowbias32(h: int) -> int:
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _naive_dropout_mask(step, shape=(), p=0.5, seed=0):
    """Element by element, in Python integers: kept (scaled by 1/(1-p)) where the bits >= p 2^32."""
    key = _lowbias32(seed * 0x9E3779B9 + _lowbias32(int(np.asarray(step).reshape(-1)[0])))
    flat = [1.0 / (1.0 - p) if _lowbias32(key ^ i) >= int(p * 2 ** 32) else 0.0 for i in range(int(np.prod(shape)))]
    return np.array(flat).reshape(shape)


def _naive_dropout(x, step, p=0.5, seed=0):
    return x * _naive_dropout_mask(step, x.shape, p, seed)


def _pad_expect(x, widths, value):
    out = np.full(tuple(n + a + b for n, (a, b) in zip(x.shape, widths)), value, dtype=float)
    out[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, widths))] = x
    return out


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _naive_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d by its definition: a loop per output element."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    C_out, cg, kh, kw = w.shape
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph, pw = _pair(padding)
        pads = (ph, ph, pw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    N, C, H, W = xp.shape
    Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, C_out, Ho, Wo))
    per_group = C_out // groups
    for n in range(N):
        for co in range(C_out):
            g = co // per_group
            for oh in range(Ho):
                for ow in range(Wo):
                    acc = 0.0 if b is None else b[co]
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                acc += xp[n, g * cg + ci, oh * sh + i * dh, ow * sw + j * dw] * w[co, ci, i, j]
                    out[n, co, oh, ow] = acc
    return out


def _naive_conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    one = lambda v: (1, v[0] if isinstance(v, tuple) else v)  # noqa: E731
    pad = padding if isinstance(padding, str) else (0, padding[0] if isinstance(padding, tuple) else padding)
    return _naive_conv2d(x[:, :, None], w[:, :, None], b, one(stride), pad, one(dilation), groups)[:, :, 0]


def _naive_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True,
                divisor_override=None, reduce=np.max, fill=-np.inf):
    """torch's pooling by its definition: a loop per output pixel over the window clipped to the
    input; torch's output size (rounded up with ceil_mode, the last window starting inside the
    input or the left padding) and torch's divisor of a mean."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = _pair(kernel_size if stride is None else stride)
    N, C, H, W = x.shape

    def size(n, k, p, d, s):
        out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        return out - 1 if ceil_mode and (out - 1) * s >= n + p else out

    Ho, Wo = size(H, kh, ph, dh, sh), size(W, kw, pw, dw, sw)
    out = np.zeros((N, C, Ho, Wo))
    for oh in range(Ho):
        for ow in range(Wo):
            rows = [oh * sh - ph + i * dh for i in range(kh)]
            cols = [ow * sw - pw + j * dw for j in range(kw)]
            inside = [(r, c) for r in rows for c in cols if 0 <= r < H and 0 <= c < W]
            padded = [(r, c) for r in rows for c in cols if -ph <= r < H + ph and -pw <= c < W + pw]
            vals = np.stack([x[:, :, r, c] for r, c in inside], axis=-1)
            if reduce is np.max:
                best = vals.max(axis=-1)
                out[:, :, oh, ow] = np.maximum(best, fill) if len(padded) > len(inside) else best
            else:
                count = divisor_override or (len(padded) if count_include_pad else len(inside))
                out[:, :, oh, ow] = vals.sum(axis=-1) / count
    return out


def _naive_im2col(x, kernel, stride, padding, dilation, pad_value, layout="nhwc"):
    """Patch rows [N, Ho, Wo, C*kh*kw], or (layout "nchw") the same as planes [N, C*kh*kw, Ho, Wo]."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    Ho, Wo = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, Ho, Wo, C * kh * kw))
    for oh in range(Ho):
        for ow in range(Wo):
            k = 0
            for c in range(C):
                for i in range(kh):
                    for j in range(kw):
                        out[:, oh, ow, k] = xp[:, c, oh * sh + i * dh, ow * sw + j * dw]
                        k += 1
    return out if layout == "nhwc" else np.moveaxis(out, 3, 1)


def _naive_col2im(p, size, kernel, stride, padding, dilation, layout="nhwc"):
    """The adjoint of _naive_im2col, by its definition ⟨im2col(x), p⟩ = ⟨x, col2im(p)⟩, column by column."""
    p = p if layout == "nhwc" else np.moveaxis(p, 1, 3)
    N, C = p.shape[0], p.shape[3] // (kernel[0] * kernel[1])
    out = np.zeros((N, C) + tuple(size))
    for idx in np.ndindex(out.shape[1:]):
        e = np.zeros((1, C) + tuple(size))
        e[(0,) + idx] = 1.0
        out[(slice(None),) + idx] = np.einsum("nhwk,hwk->n", p, _naive_im2col(e, kernel, stride, padding, dilation,
                                                                                0.0)[0])
    return out


def _naive_depthwise(a, b, bias=None, mode="forward", size=(1, 1), kernel=(1, 1), stride=(1, 1),
                     padding=(0, 0, 0, 0), dilation=(1, 1)):
    """The direct depthwise loop's three modes from _naive_im2col, channel by channel; input_grad
    by its definition as the adjoint of forward: ⟨forward(x, w), δ⟩ = ⟨x, input_grad(δ, w)⟩."""
    win = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    K = kernel[0] * kernel[1]
    if mode == "input_grad":
        N, C = a.shape[:2]
        out = np.zeros((N, C) + tuple(size))
        for idx in np.ndindex(out.shape[1:]):
            e = np.zeros((1, C) + tuple(size))
            e[(0,) + idx] = 1.0
            out[(slice(None),) + idx] = np.einsum("nchw,chw->n", a, _naive_depthwise(e, b, **win)[0])
        return out
    N, C = a.shape[:2]
    P = _naive_im2col(a, pad_value=0.0, **win)
    P = P.reshape(P.shape[:3] + (C, K))
    if mode == "weight_grad":
        return np.einsum("nhwck,nchw->ck", P, b).reshape((C, 1) + tuple(kernel))
    z = np.einsum("nhwck,ck->nchw", P, b.reshape(C, K))
    return z + bias[None, :, None, None] if bias is not None else z


def _naive_pointwise(a, b, bias=None, mode="forward"):
    """A 1x1 convolution's three modes by loops over pixels: forward z[n, :, i, j] = W x[n, :, i, j] (+ b),
    input_grad Wᵀ δ per pixel, weight_grad Σ over images and pixels of δ xᵀ."""
    N, _, H, W_ = a.shape
    if mode == "weight_grad":
        out = np.zeros((b.shape[1], a.shape[1], 1, 1))
        for n, i, j in np.ndindex(N, H, W_):
            out[:, :, 0, 0] += np.outer(b[n, :, i, j], a[n, :, i, j])
        return out
    Wm = b[:, :, 0, 0] if mode == "forward" else b[:, :, 0, 0].T
    out = np.zeros((N, Wm.shape[0], H, W_))
    for n, i, j in np.ndindex(N, H, W_):
        out[n, :, i, j] = Wm @ a[n, :, i, j] + (bias if bias is not None else 0.0)
    return out


def _naive_patch_matmul(a, b, bias=None, mode="nt", groups=1):
    G = groups
    if mode == "tn":
        A, B = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        ma, nb = A.shape[1] // G, B.shape[1] // G
        return np.vstack([A[:, g * ma:(g + 1) * ma].T @ B[:, g * nb:(g + 1) * nb] for g in range(G)])
    A, b = a.reshape(-1, a.shape[-1]), b.reshape(b.shape[0], -1)     # a conv weight read as a matrix
    ka = A.shape[1] // G
    blocks = []
    for g in range(G):
        if mode == "nt":
            nb = b.shape[0] // G
            blocks.append(A[:, g * ka:(g + 1) * ka] @ b[g * nb:(g + 1) * nb].T)
        else:
            blocks.append(A[:, g * ka:(g + 1) * ka] @ b[g * ka:(g + 1) * ka])
    z = np.hstack(blocks).reshape(a.shape[:-1] + (-1,))
    return z if bias is None else z + bias


# backward kernel ops whose own VJP (a second derivative) graphc does not build: it raises
NO_SECOND_DERIVATIVE = {"attention_grad", "layer_norm_grad"}


def _naive_attention_parts(q, k, is_causal=False, scale=None):
    """(P, L) head by head, with plain loops over the rows: the weights and their log-sum-exp."""
    s = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    lead = q.shape[:-2]
    P = np.zeros(lead + (q.shape[-2], k.shape[-2]))
    L = np.zeros(lead + (q.shape[-2],))
    for h in np.ndindex(lead):
        for i in range(q.shape[-2]):
            keys = range(min(i + 1, k.shape[-2])) if is_causal else range(k.shape[-2])
            row = np.array([s * float(np.dot(q[h][i], k[h][j])) for j in keys])
            L[h][i] = row.max() + np.log(np.sum(np.exp(row - row.max())))
            P[h][i][:len(row)] = np.exp(row - L[h][i])
    return P, L


def _naive_attention(q, k, v, is_causal=False, scale=None):
    return _naive_attention_parts(q, k, is_causal, scale)[0] @ v


def _naive_attention_lse(q, k, is_causal=False, scale=None):
    return _naive_attention_parts(q, k, is_causal, scale)[1]


def _naive_attention_grad(q, k, v, o, lse, d, wrt="q", is_causal=False, scale=None):
    P = _naive_attention_parts(q, k, is_causal, scale)[0]
    s = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    dS = P * (d @ np.swapaxes(v, -1, -2) - np.sum(d * o, axis=-1, keepdims=True))
    return {"q": s * dS @ k, "k": s * np.swapaxes(dS, -1, -2) @ q, "v": np.swapaxes(P, -1, -2) @ d}[wrt]


def _naive_layer_norm_grad(x, d, weight=None, wrt="input", normalized_shape=(), eps=1e-5):
    """Row by row through the full Jacobian of one row r (not the closed form the op computes):
    ∂y_j/∂r_k = w_j ((δ_jk − 1/n) s − (r_j − μ)(r_k − μ) s³ / n), s = 1/√(var + eps); then
    dJ/dx = δ J, and dJ/dweight = Σ over the rows of δ ∘ (r − μ) s."""
    n = int(np.prod(normalized_shape))
    w = np.ones(n) if weight is None else weight.reshape(n)
    rows, ds = x.reshape(-1, n), d.reshape(-1, n)
    dx, dw = np.zeros_like(rows), np.zeros(n)
    for i, (r, dr) in enumerate(zip(rows, ds)):
        mu = r.mean()
        s = 1 / np.sqrt(((r - mu) ** 2).mean() + eps)
        jac = np.array([[w[j] * ((float(j == k) - 1 / n) * s - (r[j] - mu) * (r[k] - mu) * s ** 3 / n)
                         for k in range(n)] for j in range(n)])
        dx[i] = dr @ jac
        dw += dr * (r - mu) * s
    return dx.reshape(x.shape) if wrt == "input" else dw.reshape(normalized_shape)


def _layer_norm_grad_cases(rng):
    x, d, w = real(rng, 3, 2, 5), real(rng, 3, 2, 5), real(rng, 5)
    return [Case(f"wrt {wrt}", [x, d, w], _naive_layer_norm_grad, {"wrt": wrt, "normalized_shape": (5,)})
            for wrt in ("input", "weight")] + \
        [Case("plain, two axes", [x, d], _naive_layer_norm_grad, {"normalized_shape": (2, 5), "eps": 0.1})]


def _attention_grad_cases(rng):
    q, k, v, d = real(rng, 2, 2, 5, 3), real(rng, 2, 2, 4, 3), real(rng, 2, 2, 4, 2), real(rng, 2, 2, 5, 2)
    out = []
    for wrt, causal in (("q", False), ("k", True), ("v", True)):
        P, L = _naive_attention_parts(q, k, causal)
        out.append(Case(f"wrt {wrt}{' causal' if causal else ''}", [q, k, v, P @ v, L, d], _naive_attention_grad,
                        {"wrt": wrt, "is_causal": causal}))
    return out


def _rnn_body(n, d, h, axis=1):
    """A scan body of ops/scan.py: h_t = tanh(x_t W + h_{t-1} U), y_t = h_t ∘ h_t, over x [n, T, d]
    (axis 1) or [T, n, d] (axis 0), with W [d, h] and U [h, h] read at every step."""
    from graphc.ops.scan import finish
    outer = graphc.Graph("rnn")
    W, U = outer.input("W", (d, h)), outer.input("U", (h, h))
    body = graphc.Graph("rnn_cell")
    body.enclosing = outer
    carry, x = body.input("h", (n, h)), body.input("x_t", (n, d))
    new = graphc.tanh(x @ W + carry @ U)
    return finish(body, ["h"], ["x_t"], [new], [new * new], axis, "rnn")


def _rnn_expect(h0, x, W, U, body, part):
    hs, h = [], h0
    for t in range(x.shape[body.x_axes[0]]):
        h = np.tanh(np.take(x, t, axis=body.x_axes[0]) @ W + h @ U)
        hs.append(h * h)
    return h if part[0] == "final" else np.stack(hs, axis=body.y_axes[0])


def _scan_cases(rng):
    out = []
    for n, T, d, h, axis, part in [(3, 4, 2, 5, 1, ("final", 0)), (2, 3, 4, 3, 1, ("ys", 0)),
                                   (1, 1, 1, 1, 1, ("ys", 0)), (4, 5, 3, 2, 0, ("ys", 0))]:
        x = real(rng, n, T, d) if axis == 1 else real(rng, T, n, d)
        out.append(Case(f"rnn {n}x{T}x{d}->{h} axis {axis} {part[0]}",
                        [real(rng, n, h), x, real(rng, d, h) * 0.5, real(rng, h, h) * 0.5], _rnn_expect,
                        {"body": _rnn_body(n, d, h, axis), "part": part}))
    return out


CASES: dict[str, Callable[[np.random.Generator], list[Case]]] = {
    "scaled_dot_product_attention": lambda rng: [
        Case("rank 4 Tq != Tk", [real(rng, 2, 2, 3, 4), real(rng, 2, 2, 5, 4), real(rng, 2, 2, 5, 3)], _naive_attention),
        Case("rank 3 causal", [real(rng, 2, 4, 3), real(rng, 2, 4, 3), real(rng, 2, 4, 2)], _naive_attention,
             {"is_causal": True}),
        Case("causal Tq > Tk scale 0.7", [real(rng, 1, 2, 5, 3), real(rng, 1, 2, 3, 3), real(rng, 1, 2, 3, 2)],
             _naive_attention, {"is_causal": True, "scale": 0.7}),
    ],
    "attention_lse": lambda rng: [
        Case("rank 4", [real(rng, 2, 2, 3, 4), real(rng, 2, 2, 5, 4)], _naive_attention_lse),
        Case("causal", [real(rng, 1, 3, 4, 2), real(rng, 1, 3, 4, 2)], _naive_attention_lse, {"is_causal": True}),
    ],
    "attention_grad": _attention_grad_cases,
    "layer_norm_grad": _layer_norm_grad_cases,
    "const": lambda rng: [Case("scalar", [], lambda value: np.float64(value), {"value": 2.5})],
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _binary(np.divide, positive),
    "neg": _unary(np.negative),
    "square": _unary(lambda x: x * x),
    "relu": _unary(lambda x: np.where(x > 0, x, 0.0), off_kink),
    "sign": _unary(lambda x: np.where(x > 0, 1.0, -1.0), off_kink),
    "sigmoid": _unary(lambda x: 1 / (1 + np.exp(-x))),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "log": _unary(np.log, positive),
    "sqrt": _unary(np.sqrt, positive),
    # the activations of torch.nn.functional, written out from their definitions
    "leaky_relu": lambda rng: _unary(lambda x, negative_slope: np.where(x > 0, x, negative_slope * x), off_kink)(rng)
    + [Case("slope 0.3", [off_kink(rng, 5, 7)], lambda x, negative_slope: np.where(x > 0, x, 0.3 * x),
            {"negative_slope": 0.3})],
    "elu": lambda rng: _unary(lambda x, alpha: np.where(x > 0, x, np.exp(x) - 1), off_kink)(rng)
    + [Case("alpha 2", [off_kink(rng, 5, 7)], lambda x, alpha: np.where(x > 0, x, 2 * (np.exp(x) - 1)),
            {"alpha": 2.0})],
    "softplus": lambda rng: _unary(lambda x, beta, threshold: np.log(1 + np.exp(x)))(rng)
    + [Case("beta 2", [real(rng, 5, 7)], lambda x, beta, threshold: np.log(1 + np.exp(2 * x)) / 2, {"beta": 2.0}),
       Case("threshold", [np.array([-30.0, 0.5, 30.0])], lambda x, beta, threshold: np.where(x > 1, x, np.log1p(np.exp(x))),
            {"threshold": 1.0})],
    "gelu": lambda rng: _unary(lambda x, approximate: x * 0.5 * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))))(rng)
    + [Case("tanh", [real(rng, 5, 7)], lambda x, approximate: 0.5 * x * (1 + np.tanh(
        np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), {"approximate": "tanh"})],
    "silu": _unary(lambda x: x / (1 + np.exp(-x))),
    "erf": _unary(np.vectorize(__import__("math").erf, otypes=[float])),
    "broadcast_to": lambda rng: [
        Case("row", [real(rng, 7)], lambda x, shape: np.tile(x, (5, 1)), {"shape": (5, 7)}),
        Case("column", [real(rng, 5, 1)], lambda x, shape: np.repeat(x, 7, axis=1), {"shape": (5, 7)}),
        Case("scalar", [real(rng)], lambda x, shape: np.full(shape, x), {"shape": (2, 3)}),
    ],
    "matmul": lambda rng: [
        Case(f"{a}@{b}", [real(rng, *a), real(rng, *b)], lambda x, y: np.einsum(
            {(2, 2): "ik,kj->ij", (1, 2): "k,kj->j", (2, 1): "ik,k->i", (1, 1): "k,k->"}[x.ndim, y.ndim], x, y))
        for a, b in [((5, 7), (7, 3)), ((1, 1), (1, 1)), ((7,), (7, 3)), ((5, 7), (7,)), ((7,), (7,)),
                     ((1, 7), (7, 1)), ((3, 1), (1, 4))]
    ] + [   # rank 3-4: the rows of a [.., K] times a matrix or a vector; batched, batch axes broadcast
        Case(f"{a}@{b}", [real(rng, *a), real(rng, *b)], lambda x, y: np.matmul(x, y))
        for a, b in [((2, 5, 7), (7, 3)), ((2, 5, 7), (7,)), ((2, 3, 5, 4), (2, 3, 4, 6)), ((2, 1, 5, 4), (3, 4, 2)),
                     ((5, 4), (2, 4, 3)), ((1, 3, 2, 4), (2, 1, 4, 5))]
    ],
    "transpose": lambda rng: [Case(f"{s}", [real(rng, *s)], lambda x: np.swapaxes(x, 0, -1) if x.ndim == 2 else x)
                              for s in [(5, 7), (1, 1), (7,), ()]],
    "sum": lambda rng: [
        Case("all", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum()),
        Case("axis0", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum(0), {"axis": 0}),
        Case("axis-1 keep", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum(1)[:, None],
             {"axis": -1, "keepdims": True}),
        Case("all keep", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum().reshape(1, 1), {"keepdims": True}),
        Case("size 1", [real(rng, 1)], lambda x, axis, keepdims: x[0], {"axis": 0}),
        Case("spatial keep", [real(rng, 2, 3, 4, 5)], lambda x, axis, keepdims: x.sum(3).sum(2)[:, :, None, None],
             {"axis": (2, 3), "keepdims": True}),
        Case("channels", [real(rng, 2, 3, 4, 5)], lambda x, axis, keepdims: x.sum(1), {"axis": 1}),
    ],
    "mean": lambda rng: [
        Case("all", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum() / 35),
        Case("axis0", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum(0) / 5, {"axis": 0}),
        Case("axis1 keep", [real(rng, 5, 7)], lambda x, axis, keepdims: x.sum(1, keepdims=True) / 7,
             {"axis": 1, "keepdims": True}),
    ],
    "sum_to": lambda rng: [
        Case("bias", [real(rng, 5, 7)], lambda x, shape: _sum_to_expect(x, shape), {"shape": (7,)}),
        Case("column", [real(rng, 5, 7)], lambda x, shape: _sum_to_expect(x, shape), {"shape": (5, 1)}),
        Case("scalar", [real(rng, 5, 7)], lambda x, shape: _sum_to_expect(x, shape), {"shape": ()}),
        Case("same", [real(rng, 5, 7)], lambda x, shape: x, {"shape": (5, 7)}),
    ],
    "size": lambda rng: [
        Case("rows", [real(rng, 5, 7)], lambda x, axes: np.float64(5), {"axes": (0,)}),
        Case("all", [real(rng, 5, 7)], lambda x, axes: np.float64(35), {"axes": (0, 1)}),
        Case("none", [real(rng, 5, 7)], lambda x, axes: np.float64(1), {"axes": ()}),
    ],
    "dot": lambda rng: [
        Case("vectors", [real(rng, 7), real(rng, 7)], lambda a, b: np.dot(a, b)),
        Case("rows", [real(rng, 5, 7), real(rng, 5, 7)], lambda a, b: np.einsum("ij,ij->i", a, b)),
        Case("rows-vector", [real(rng, 5, 7), real(rng, 7)], lambda a, b: np.einsum("ij,j->i", a, b)),
        Case("size 1", [real(rng, 1), real(rng, 1)], lambda a, b: a[0] * b[0]),
    ],
    "norm2": lambda rng: [
        Case("vector", [real(rng, 7)], lambda x: np.linalg.norm(x)),
        Case("rows", [real(rng, 5, 7)], lambda x: np.linalg.norm(x, axis=1)),
        Case("size 1", [off_kink(rng, 1)], lambda x: np.abs(x[0])),
    ],
    "reshape": lambda rng: [
        Case("flatten", [real(rng, 5, 7)], lambda x, shape: x.ravel(), {"shape": (35,)}),
        Case("column", [real(rng, 7)], lambda x, shape: x[:, None], {"shape": (7, 1)}),
        Case("to scalar", [real(rng, 1)], lambda x, shape: x[0], {"shape": ()}),
        Case("regroup", [real(rng, 6, 2)], lambda x, shape: x.ravel().reshape(3, 4), {"shape": (3, 4)}),
        Case("-1", [real(rng, 2, 3, 4)], lambda x, shape: x.reshape(2, 12), {"shape": (2, -1)}),
    ],
    "concat": lambda rng: [
        Case("rows", [real(rng, 5, 2), real(rng, 5, 3), real(rng, 5, 1)], lambda *xs, axis: np.hstack(xs)),
        Case("vectors", [real(rng, 3), real(rng, 4)], lambda *xs, axis: np.hstack(xs)),
        Case("single", [real(rng, 2, 3)], lambda x, axis: x.copy()),
        Case("channels", [real(rng, 2, 3, 4, 5), real(rng, 2, 1, 4, 5)],
             lambda a, b, axis: np.stack([np.vstack([a[i], b[i]]) for i in range(2)]), {"axis": 1}),
    ],
    "slice": lambda rng: [
        Case("middle", [real(rng, 5, 7)], lambda x, **a: x[:, 2:5], {"start": 2, "stop": 5}),
        Case("head", [real(rng, 7)], lambda x, **a: x[:3], {"start": 0, "stop": 3}),
        Case("tail", [real(rng, 5, 7)], lambda x, **a: x[:, 4:], {"start": 4, "stop": 7}),
        Case("all", [real(rng, 1)], lambda x, **a: x, {"start": 0, "stop": 1}),
        Case("step", [real(rng, 2, 3, 7, 4)], lambda x, **a: x[:, :, 1:6:2],
             {"start": 1, "stop": 6, "step": 2, "axis": -2}),
    ],
    "unslice": lambda rng: [
        Case("middle", [real(rng, 5, 3)], lambda x, **a: np.hstack([np.zeros((5, 2)), x, np.zeros((5, 2))]),
             {"size": 7, "start": 2, "stop": 5}),
        Case("step", [real(rng, 3, 2)], lambda x, **a: np.stack([np.zeros(2), x[0], np.zeros(2), x[1], np.zeros(2),
                                                                  x[2]]), {"size": 6, "start": 1, "stop": 6,
                                                                           "step": 2, "axis": 0}),
    ],
    "permute": lambda rng: [
        Case("NCHW to NHWC", [real(rng, 2, 3, 4, 5)], lambda x, axes: np.moveaxis(x, 1, -1), {"axes": (0, 2, 3, 1)}),
        Case("matrix", [real(rng, 5, 7)], lambda x, axes: x.T.copy(), {"axes": (1, 0)}),
        Case("negative", [real(rng, 2, 3, 4)], lambda x, axes: np.swapaxes(x, 1, 2), {"axes": (0, -1, 1)}),
    ],
    "pad": lambda rng: [
        Case("image", [real(rng, 2, 3, 4, 5)], lambda x, pad, value: _pad_expect(x, [(0, 0), (0, 0), (2, 0), (1, 2)],
                                                                                 value), {"pad": (1, 2, 2, 0)}),
        Case("value", [real(rng, 3)], lambda x, pad, value: np.r_[-1.0, x, -1.0, -1.0], {"pad": (1, 2), "value": -1.0}),
    ],
    "flatten": lambda rng: [
        Case("images", [real(rng, 2, 3, 4, 5)], lambda x, **a: x.reshape(2, 60)),
        Case("middle", [real(rng, 2, 3, 4, 5)], lambda x, **a: x.reshape(2, 12, 5), {"start_dim": 1, "end_dim": 2}),
        Case("all", [real(rng, 3, 4)], lambda x, **a: x.ravel(), {"start_dim": 0}),
    ],
    "softmax": lambda rng: [
        Case(f"{s}" + (f" axis {a['axis']}" if a else ""), [real(rng, *s)],
             lambda x, axis: np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True), a)
        for s, a in [((5, 7), {}), ((7,), {}), ((1,), {}), ((1, 1), {}), ((5, 7), {"axis": 0}),
                     ((2, 3, 4), {"axis": 1}), ((2, 3, 4, 2), {"axis": -3})]
    ],
    "log_softmax": lambda rng: [
        Case(f"{s}" + (f" axis {a['axis']}" if a else ""), [real(rng, *s)],
             lambda x, axis: np.log(np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True)), a)
        for s, a in [((5, 7), {}), ((7,), {}), ((1,), {}), ((3, 4, 2), {"axis": 0}), ((2, 3, 4, 2), {"axis": 2})]
    ],
    "cross_entropy": lambda rng: [
        Case("int labels", [real(rng, 5, 7), labels(rng, 7, 5)],
             lambda t, y: -np.mean(_np_log_softmax(t)[np.arange(len(y)), y])),
        Case("one row", [real(rng, 1, 3), labels(rng, 3, 1)],
             lambda t, y: -_np_log_softmax(t)[0, y[0]]),
        Case("column vector", [real(rng, 7), labels(rng, 7).reshape(())],
             lambda t, y: -_np_log_softmax(t)[int(y)]),
        Case("probabilities", [real(rng, 5, 7), probabilities(rng, 5, 7)],
             lambda t, y: -np.sum(y * _np_log_softmax(t)) / 5),
        Case("one-hot vector", [real(rng, 5), np.eye(5)[2]], lambda t, y: -_np_log_softmax(t)[2]),
    ],
    "mse": lambda rng: [
        Case("rows", [real(rng, 5, 7), real(rng, 5, 7)], lambda p, t: ((p - t) ** 2).sum() / 35),
        Case("scalar", [real(rng), real(rng)], lambda p, t: (p - t) ** 2),
        Case("size 1", [real(rng, 1), real(rng, 1)], lambda p, t: (p[0] - t[0]) ** 2),
    ],
    "onehot": lambda rng: [
        Case("labels", [labels(rng, 4, 6)], lambda y, depth: np.eye(depth)[y], {"depth": 4}),
        Case("scalar label", [np.array(2, dtype=I32)], lambda y, depth: np.eye(depth)[int(y)], {"depth": 3}),
        Case("depth 1", [np.zeros(3, I32)], lambda y, depth: np.ones((3, 1)), {"depth": 1}),
    ],
    "embedding": lambda rng: [
        Case("ids", [real(rng, 6, 4), labels(rng, 6, 9)], lambda t, ids: np.stack([t[i] for i in ids])),
        Case("repeated ids", [real(rng, 3, 2), np.array([1, 1, 0, 1], I32)], lambda t, ids: t[[1, 1, 0, 1]]),
        Case("2-D ids", [real(rng, 5, 3), labels(rng, 5, 2, 4)], lambda t, ids: t[ids]),
        Case("one row", [real(rng, 1, 1), np.zeros(1, I32)], lambda t, ids: t.copy()),
    ],
    "embedding_grad": lambda rng: [
        Case("ids", [real(rng, 9, 4), labels(rng, 6, 9)], _embedding_grad_expect, {"rows": 6}),
        Case("repeated ids", [real(rng, 4, 2), np.array([1, 1, 0, 1], I32)], _embedding_grad_expect, {"rows": 3}),
        Case("unused rows", [real(rng, 2, 3), np.array([4, 4], I32)], _embedding_grad_expect, {"rows": 7}),
    ],
    # convolutions and pooling (NCHW), against loops written from their definitions
    "conv2d": lambda rng: [
        Case("bias, padding 1", [real(rng, 2, 3, 5, 4), real(rng, 4, 3, 3, 3), real(rng, 4)], _naive_conv2d,
             {"padding": 1}),
        Case("no bias, stride 2", [real(rng, 1, 2, 7, 6), real(rng, 3, 2, 3, 2)], _naive_conv2d, {"stride": 2}),
        Case("dilation, groups", [real(rng, 2, 4, 6, 7), real(rng, 6, 2, 2, 3), real(rng, 6)], _naive_conv2d,
             {"dilation": (2, 1), "groups": 2, "stride": (1, 2), "padding": (1, 0)}),
        Case("depthwise same", [real(rng, 2, 3, 5, 5), real(rng, 3, 1, 3, 3)], _naive_conv2d,
             {"padding": "same", "groups": 3}),
        Case("1x1", [real(rng, 2, 3, 2, 2), real(rng, 5, 3, 1, 1), real(rng, 5)], _naive_conv2d),
        Case("even kernel same", [real(rng, 1, 1, 4, 5), real(rng, 2, 1, 2, 4)], _naive_conv2d, {"padding": "same"}),
    ],
    "conv1d": lambda rng: [
        Case("bias", [real(rng, 2, 3, 9), real(rng, 4, 3, 3), real(rng, 4)], _naive_conv1d,
             {"stride": 2, "padding": 1}),
        Case("dilated depthwise", [real(rng, 1, 2, 8), real(rng, 2, 1, 2)], _naive_conv1d,
             {"dilation": 3, "groups": 2, "padding": "same"}),
    ],
    "im2col": lambda rng: [
        Case("3x3", [real(rng, 2, 2, 4, 5)], _naive_im2col, {"kernel": (3, 3), "padding": (1, 1, 1, 1)}),
        Case("strided, pad value", [real(rng, 1, 3, 5, 5)], _naive_im2col,
             {"kernel": (2, 3), "stride": (2, 1), "padding": (0, 1, 1, 0), "dilation": (1, 2), "pad_value": -3.0}),
        Case("planes", [real(rng, 2, 2, 4, 5)], _naive_im2col,
             {"kernel": (3, 2), "stride": (1, 2), "padding": (1, 0, 1, 1), "layout": "nchw"}),
    ],
    "col2im": lambda rng: [
        Case("3x3", [real(rng, 2, 4, 5, 18)], _naive_col2im,
             {"size": (4, 5), "kernel": (3, 3), "padding": (1, 1, 1, 1)}),
        Case("strided", [real(rng, 1, 3, 2, 12)], _naive_col2im,
             {"size": (5, 5), "kernel": (2, 3), "stride": (2, 1), "padding": (0, 1, 1, 0), "dilation": (1, 2)}),
        Case("planes", [real(rng, 2, 12, 3, 3)], _naive_col2im,
             {"size": (4, 5), "kernel": (3, 2), "stride": (1, 2), "padding": (1, 0, 1, 1), "layout": "nchw"}),
    ],
    "patch_matmul": lambda rng: [
        Case("nt", [real(rng, 2, 3, 4, 6), real(rng, 5, 6)], _naive_patch_matmul),
        Case("nt conv weight", [real(rng, 2, 3, 4, 6), real(rng, 5, 2, 3)], _naive_patch_matmul),
        Case("nn conv weight groups", [real(rng, 2, 3, 4), real(rng, 4, 1, 3)], _naive_patch_matmul,
             {"mode": "nn", "groups": 2}),
        Case("nt bias groups", [real(rng, 2, 3, 6), real(rng, 4, 3), real(rng, 4)], _naive_patch_matmul,
             {"groups": 2}),
        Case("nn groups", [real(rng, 2, 3, 4), real(rng, 4, 5)], _naive_patch_matmul, {"mode": "nn", "groups": 2}),
        Case("tn groups", [real(rng, 2, 3, 6), real(rng, 2, 3, 9)], _naive_patch_matmul, {"mode": "tn", "groups": 3}),
    ],
    "depthwise_conv": lambda rng: [
        Case("forward bias", [real(rng, 2, 3, 5, 4), real(rng, 3, 1, 3, 3), real(rng, 3)], _naive_depthwise,
             {"size": (5, 4), "kernel": (3, 3), "padding": (1, 1, 1, 1)}),
        Case("forward strided dilated", [real(rng, 1, 2, 6, 7), real(rng, 2, 1, 2, 3)], _naive_depthwise,
             {"size": (6, 7), "kernel": (2, 3), "stride": (2, 3), "padding": (0, 1, 2, 0), "dilation": (2, 1)}),
        Case("input_grad", [real(rng, 2, 3, 3, 2), real(rng, 3, 1, 3, 3)], _naive_depthwise,
             {"mode": "input_grad", "size": (5, 4), "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)}),
        Case("weight_grad", [real(rng, 2, 3, 5, 4), real(rng, 2, 3, 3, 2)], _naive_depthwise,
             {"mode": "weight_grad", "size": (5, 4), "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)}),
    ],
    "pointwise_conv": lambda rng: [
        Case("forward bias", [real(rng, 2, 3, 4, 5), real(rng, 5, 3, 1, 1), real(rng, 5)], _naive_pointwise),
        Case("forward", [real(rng, 1, 4, 2, 3), real(rng, 2, 4, 1, 1)], _naive_pointwise),
        Case("input_grad", [real(rng, 2, 5, 3, 2), real(rng, 5, 3, 1, 1)], _naive_pointwise, {"mode": "input_grad"}),
        Case("weight_grad", [real(rng, 2, 3, 4, 2), real(rng, 2, 5, 4, 2)], _naive_pointwise, {"mode": "weight_grad"}),
    ],
    "max": lambda rng: [
        Case("all", [real(rng, 5, 7)], lambda x, axis, keepdims: np.float64(x.ravel().max())),
        Case("axis0", [real(rng, 5, 7)], lambda x, axis, keepdims: np.array([max(c) for c in x.T]), {"axis": 0}),
        Case("spatial keep", [real(rng, 2, 3, 4, 5)],
             lambda x, axis, keepdims: x.reshape(2, 3, 20).max(-1)[:, :, None, None], {"axis": (2, 3), "keepdims": True}),
    ],
    "equal": lambda rng: [
        Case("ties", [np.array([[1.0, 2.0], [3.0, 3.0]]), np.array([[1.0, 0.0], [3.0, 3.5]])],
             lambda x, y: np.array([[1.0, 0.0], [1.0, 0.0]])),
        Case("broadcast", [np.array([[1.0, 2.0], [2.0, 3.0]]), np.array([2.0, 2.0])],
             lambda x, y: np.array([[0.0, 1.0], [1.0, 0.0]])),
    ],
    "scan": _scan_cases,
    "where": lambda rng: [
        Case("broadcast mask", [(rng.standard_normal((3, 1, 4)) > 0) * 2.0, real(rng, 3, 2, 4), real(rng, 4)],
             lambda c, a, b: np.where(c != 0, a, b)),
        Case("scalar", [np.array([[0.0, -1.0, 0.0], [3.0, 0.0, 0.5]]), real(rng, 2, 3), real(rng)],
             lambda c, a, b: np.where(c != 0, a, b)),
    ],
    "max_pool2d": lambda rng: [
        Case("2x2", [real(rng, 2, 3, 4, 6)], _naive_pool, {"kernel_size": 2}),
        Case("3 stride 2 padding 1", [real(rng, 1, 2, 5, 5)], _naive_pool, {"kernel_size": 3, "stride": 2, "padding": 1}),
        Case("dilated", [real(rng, 1, 2, 6, 5)], _naive_pool, {"kernel_size": (2, 2), "stride": 1, "dilation": 2}),
        Case("ceil_mode", [real(rng, 1, 2, 8, 7)], _naive_pool,
             {"kernel_size": (3, 2), "stride": 2, "padding": (1, 0), "dilation": (1, 2), "ceil_mode": True}),
    ],
    "avg_pool2d": lambda rng: [
        Case("ceil_mode", [real(rng, 1, 2, 6, 7)], lambda x, **a: _naive_pool(x, **a, reduce=np.mean, fill=0.0),
             {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
        Case("count_include_pad False", [real(rng, 1, 2, 5, 6)],
             lambda x, **a: _naive_pool(x, **a, reduce=np.mean, fill=0.0),
             {"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 1), "ceil_mode": True, "count_include_pad": False}),
        Case("divisor_override", [real(rng, 1, 2, 5, 5)], lambda x, **a: _naive_pool(x, **a, reduce=np.mean, fill=0.0),
             {"kernel_size": 2, "padding": 1, "divisor_override": 3}),
        Case("2x2", [real(rng, 2, 3, 4, 6)], lambda x, **a: _naive_pool(x, **a, reduce=np.mean, fill=0.0),
             {"kernel_size": 2}),
        Case("3 stride 2 padding 1", [real(rng, 1, 2, 5, 5)],
             lambda x, **a: _naive_pool(x, **a, reduce=np.mean, fill=0.0), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ],
    "layer_norm": lambda rng: [
        Case("affine", [real(rng, 3, 2, 5), real(rng, 5), real(rng, 5)], _naive_layer_norm, {"normalized_shape": (5,)}),
        Case("two axes", [real(rng, 3, 2, 5), real(rng, 2, 5)], _naive_layer_norm,
             {"normalized_shape": (2, 5), "eps": 0.1}),
        Case("plain", [real(rng, 4, 6)], _naive_layer_norm, {"normalized_shape": (6,)}),
    ],
    "adaptive_avg_pool2d": lambda rng: [
        Case("global", [real(rng, 2, 3, 4, 5)], lambda x, output_size: x.sum(axis=(2, 3))[:, :, None, None] / 20),
    ],
    "batch_norm": lambda rng: [
        Case("NCHW affine", [real(rng, 3, 2, 4, 5), real(rng, 2), np.abs(real(rng, 2)) + 0.5, real(rng, 2), real(rng, 2)],
             _naive_batch_norm),
        Case("NC plain eps 0.1", [real(rng, 5, 3), real(rng, 3), np.abs(real(rng, 3)) + 0.5], _naive_batch_norm,
             {"eps": 0.1}),
        Case("NCL weight only", [real(rng, 2, 3, 6), real(rng, 3), np.abs(real(rng, 3)) + 0.5, real(rng, 3)],
             _naive_batch_norm, {"momentum": 0.5}),
    ],
    "dropout": lambda rng: [
        Case("p 0.5 step 3", [real(rng, 4, 9), np.array(3.0)], _naive_dropout, {"seed": 0}),
        Case("p 0.2 seed 7 rank 4", [real(rng, 2, 3, 4, 5), np.array(11.0)], _naive_dropout, {"p": 0.2, "seed": 7}),
        Case("p 0", [real(rng, 3, 5), np.array(0.0)], _naive_dropout, {"p": 0.0, "seed": 0}),
    ],
    "dropout_mask": lambda rng: [
        # (steps between integers: finite differences of the step see no jump of the mask)
        Case("step 0", [np.array(0.5)], _naive_dropout_mask, {"shape": (6, 7), "p": 0.5, "seed": 0}),
        Case("step 5 seed 2", [np.array(5.5)], _naive_dropout_mask, {"shape": (3, 2, 5), "p": 0.3, "seed": 2}),
    ],
}


def _cases() -> list:
    """(op name, case) pairs, each op's generator seeded by its own name so cases are stable."""
    out = []
    for name in sorted(CASES):
        rng = np.random.default_rng([7, *name.encode()])
        for case in CASES[name](rng):
            out.append(pytest.param(name, case, id=f"{name}-{case.label}"))
    return out


ALL_CASES = _cases()


def _build(name: str, case: Case):
    """A one-op graph: inputs a0, a1, ... of the case's shapes (and dtypes); output `out`."""
    g = graphc.Graph(f"op_{name}")
    args = []
    for i, a in enumerate(case.args):
        dtype = "int32" if a.dtype.kind in "iu" else "float"
        declare = g.state if i in REGISTRY[name].state_inputs else g.input   # running statistics, step count
        args.append(declare(f"a{i}", a.shape, dtype=dtype))
    out = g.apply(name, *args, **case.attrs)
    g.output("out", out)
    return g, out


def _has_vjp(op: OpDef) -> bool:
    return type(op).vjp is not OpDef.vjp


# ------------------------------------------------------------------ the registry is covered
def test_every_registered_op_has_a_case():
    assert set(CASES) == set(REGISTRY), (
        f"ops without a test case: {sorted(set(REGISTRY) - set(CASES))}; "
        f"cases for unknown ops: {sorted(set(CASES) - set(REGISTRY))}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_op_has_reference_and_vjp(name):
    op = REGISTRY[name]
    assert type(op).reference is not OpDef.reference, f"{name} has no NumPy reference"
    assert _has_vjp(op), f"{name} has no VJP rule"
    assert op.name == name


def _vjp_of_first_case(name: str):
    """Run the op's VJP once on its first case: (gradients per input, identities stamped on the new nodes)."""
    from graphc.autodiff.grad import Builder
    case = CASES[name](np.random.default_rng(0))[0]
    g, out = _build(name, case)
    delta = g.input("delta", out.shape)
    before = len(g.nodes)
    grads = REGISTRY[name].vjp(Builder(g), out.node, delta)
    stamped = {i for n in g.nodes[before:] for i in (n.origin.identity or "").split(",") if i}
    return [gr for gr, v in zip(grads, out.node.inputs) if v.dtype != "int32"], stamped


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_docstring_names_the_identity_its_vjp_applies(name):
    """Issue 3: each op's docstring states the identity of the notes its VJP applies (every number
    the VJP stamps on its nodes, and the op's own `identity`), or, without a derivative, says why."""
    op = REGISTRY[name]
    doc = type(op).__doc__ or ""
    if name in NO_SECOND_DERIVATIVE:
        assert "not supported" in doc
        with pytest.raises(graphc.GraphcError, match="not supported"):
            _vjp_of_first_case(name)
        return
    grads, stamped = _vjp_of_first_case(name)
    if all(gr is None for gr in grads):
        assert "no gradient" in doc.lower(), f"{name} has no derivative; its docstring must say why:\n{doc}"
        return
    assert "identity (" in doc, f"{name}'s docstring does not name the identity its VJP applies:\n{doc}"
    cited = set(re.findall(r"\((\d)\)", doc))
    wanted = stamped | set(filter(None, (op.identity or "").split(",")))
    assert wanted <= cited, f"{name}: its VJP applies identities {sorted(wanted)}, the docstring cites {sorted(cited)}"


# ------------------------------------------------------------------ reference vs plain NumPy
@pytest.mark.parametrize("name, case", ALL_CASES)
def test_reference_matches_numpy(name, case):
    g, out = _build(name, case)
    got = graphc.evaluate(g, **{f"a{i}": a for i, a in enumerate(case.args)})["out"]
    attrs = {**REGISTRY[name].attrs, **case.attrs}      # the expectation sees every attribute, defaults too
    want = np.asarray(case.expect(*case.args, **attrs), dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, case", ALL_CASES)
def test_shape_rule_matches_reference_output(name, case):
    g, out = _build(name, case)
    got = graphc.evaluate(g, **{f"a{i}": a for i, a in enumerate(case.args)})["out"]
    assert out.shape == got.shape
    assert (out.dtype == "int32") == (got.dtype.kind in "iu")


# ------------------------------------------------------------------ VJP vs finite differences
EPS = 1e-6


def _loss_graph(name: str, case: Case):
    """L = sum(op(a0, a1, ...) * v) with a fixed random v; returns (graph, float input names)."""
    g, out = _build(name, case)
    v = g.input("v", out.shape)
    g.output("L", graphc.sum(out * v))
    wrt = [f"a{i}" for i, a in enumerate(case.args) if a.dtype.kind == "f" and f"a{i}" not in g.states]
    return g, wrt


def finite_difference(g, arrays: dict, name: str, of: str = "L") -> np.ndarray:
    """Central differences of the scalar output `of` with respect to arrays[name], float64."""
    base = arrays[name]
    grad = np.zeros_like(base, dtype=np.float64)
    for idx in np.ndindex(base.shape):
        vals = []
        for step in (EPS, -EPS):
            x = np.array(base, dtype=np.float64)
            x[idx] += step
            vals.append(float(graphc.evaluate(g, **{**arrays, name: x})[of]))
        grad[idx] = (vals[0] - vals[1]) / (2 * EPS)
    return grad


def assert_gradient_close(analytic, numeric, what: str, rtol: float = 1e-6):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, f"{what}: gradient shape {analytic.shape}, want {numeric.shape}"
    assert np.all(np.isfinite(analytic)), what
    scale = max(np.abs(numeric).max(initial=0.0), np.abs(analytic).max(initial=0.0), 1e-3)
    err = np.abs(analytic - numeric).max(initial=0.0) / scale
    assert err < rtol, f"{what}: relative error {err:.2e}\nanalytic\n{analytic}\nnumeric\n{numeric}"


def check_grads(g, arrays: dict, wrt: list[str], of: str = "L", rtol: float = 1e-6):
    bwd = graphc.grad(g, of=of, wrt=wrt)
    got = graphc.evaluate(bwd, **arrays)
    for w in wrt:
        assert_gradient_close(got[f"d_{w}"], finite_difference(g, arrays, w, of), f"d_{w}", rtol)


@pytest.mark.parametrize("name, case", [c for c in ALL_CASES if any(a.dtype.kind == "f" for a in c.values[1].args)
                                        and c.values[0] not in NO_SECOND_DERIVATIVE])
def test_vjp_matches_finite_differences(name, case):
    g, wrt = _loss_graph(name, case)
    rng = np.random.default_rng(11)
    arrays = {f"a{i}": a for i, a in enumerate(case.args)}
    arrays["v"] = rng.standard_normal(g.inputs["v"].shape)
    check_grads(g, arrays, wrt)


@pytest.mark.parametrize("name, case", [c for c in ALL_CASES if any(a.dtype.kind in "iu" for a in c.values[1].args)])
def test_integer_inputs_get_no_gradient(name, case):
    g, _ = _loss_graph(name, case)
    for i, a in enumerate(case.args):
        if a.dtype.kind in "iu":
            with pytest.raises(GradientError, match="int32"):
                graphc.grad(g, of="L", wrt=[f"a{i}"])


# ------------------------------------------------------------------ gradients through small graphs
def test_vjp_shared_weight_gradients_add_up():
    """z1 = x @ W.T and z2 = h @ W.T share W: dJ/dW is the sum of both contributions."""
    rng = np.random.default_rng(3)
    g = graphc.Graph("shared")
    x = g.input("x", (5, 4))
    h = g.input("h", (3, 4))
    W = g.param("W", (6, 4))
    v1, v2 = g.input("v1", (5, 6)), g.input("v2", (3, 6))
    g.output("L", graphc.sum((x @ W.T) * v1) + graphc.sum(graphc.tanh(h @ W.T) * v2))
    arrays = {k: rng.standard_normal(v.shape) for k, v in {**g.inputs, **g.params}.items()}
    check_grads(g, arrays, ["W", "x", "h"])
    d_W = graphc.evaluate(graphc.grad(g, of="L", wrt=["W"]), **arrays)["d_W"]
    t = np.tanh(arrays["h"] @ arrays["W"].T)
    closed = arrays["v1"].T @ arrays["x"] + ((1 - t * t) * arrays["v2"]).T @ arrays["h"]
    np.testing.assert_allclose(d_W, closed, rtol=1e-12, atol=1e-12)


def test_vjp_value_used_twice_accumulates():
    rng = np.random.default_rng(4)
    g = graphc.Graph("twice")
    x = g.input("x", (5, 7))
    g.output("L", graphc.sum(x * x + graphc.exp(x) * x))
    arrays = {"x": rng.standard_normal((5, 7))}
    check_grads(g, arrays, ["x"])


@pytest.mark.parametrize("bias_shape", [(7,), (1, 7), (1, 1), (), (1,)])
def test_vjp_bias_broadcast_over_batch(bias_shape):
    """A bias added to every row gets the sum of the rows' deltas (and a scalar, the sum of all)."""
    rng = np.random.default_rng(5)
    g = graphc.Graph("bias")
    x = g.input("x", ("N", 7))
    b = g.param("b", bias_shape)
    v = g.input("v", ("N", 7))
    g.output("L", graphc.sum(graphc.sigmoid(x * b + b) * v))
    arrays = {"x": rng.standard_normal((5, 7)), "b": rng.standard_normal(bias_shape),
              "v": rng.standard_normal((5, 7))}
    check_grads(g, arrays, ["b", "x"])
    bwd = graphc.grad(g, of="L", wrt=["b"])
    assert bwd.outputs["d_b"].shape == bias_shape


def test_vjp_one_layer_network_with_symbolic_batch():
    rng = np.random.default_rng(6)
    g = graphc.Graph("one_layer")
    x = g.input("x", ("N", 5))
    y = g.input("y", ("N",), dtype="int32")
    W, b1 = g.param("W", (7, 5)), g.param("b1", (7,))
    U, b2 = g.param("U", (3, 7)), g.param("b2", (3,))
    theta = graphc.tanh(x @ W.T + b1) @ U.T + b2
    g.output("J", graphc.cross_entropy(theta, y))
    arrays = {"x": rng.standard_normal((4, 5)), "y": np.array([0, 2, 1, 2], I32)}
    arrays.update({k: rng.standard_normal(v.shape) for k, v in g.params.items()})
    check_grads(g, arrays, ["W", "b1", "U", "b2", "x"], of="J")


def test_vjp_column_form_of_the_notes():
    """z = W x + b1 with column x (identities 1 and 5): gradients in the parameters' shapes."""
    rng = np.random.default_rng(8)
    g = graphc.Graph("column")
    x = g.input("x", (5,))
    y = g.input("y", (3,))
    W, b1 = g.param("W", (7, 5)), g.param("b1", (7,))
    U, b2 = g.param("U", (3, 7)), g.param("b2", (3,))
    g.output("J", graphc.cross_entropy(U @ graphc.relu(W @ x + b1) + b2, y))
    arrays = {"x": rng.standard_normal(5), "y": np.eye(3)[1]}
    arrays.update({k: rng.standard_normal(v.shape) for k, v in g.params.items()})
    arrays["b1"] = np.abs(arrays["b1"]) + 3.0         # every hidden unit stays off the relu kink
    check_grads(g, arrays, ["W", "b1", "U", "b2", "x"], of="J")


def test_vjp_second_order_through_backward_graph():
    """The backward graph is ordinary IR: differentiate sum(d_x) again, by the same rules."""
    rng = np.random.default_rng(9)
    g = graphc.Graph("second")
    x = g.input("x", (4,))
    g.output("L", graphc.sum(graphc.tanh(x) * x))
    bwd = graphc.grad(g, of="L", wrt=["x"])
    bwd.output("G", graphc.sum(bwd.outputs["d_x"]))
    arrays = {"x": rng.standard_normal(4)}
    check_grads(bwd, arrays, ["x"], of="G")


def test_grad_of_unused_param_is_zero():
    g = graphc.Graph("unused")
    x = g.input("x", (3,))
    g.param("W", (2, 2))
    g.output("L", graphc.sum(x))
    got = graphc.evaluate(graphc.grad(g, of="L", wrt=["W"]), x=np.ones(3), W=np.ones((2, 2)))
    np.testing.assert_array_equal(got["d_W"], np.zeros((2, 2)))


def test_grad_wrt_int_input_raises():
    g = graphc.Graph("labels")
    t = g.input("t", (4, 3))
    y = g.input("y", (4,), dtype="int32")
    g.output("J", graphc.cross_entropy(t, y))
    with pytest.raises(GradientError, match="'y'"):
        graphc.grad(g, of="J", wrt=["y"])


def test_grad_of_a_non_scalar_raises():
    g = graphc.Graph("nonscalar")
    x = g.input("x", (3,))
    g.output("z", graphc.exp(x))
    with pytest.raises(GradientError, match="scalar"):
        graphc.grad(g, of="z", wrt=["x"])


def test_cross_entropy_gradient_is_right_for_unnormalised_real_targets():
    """dJ/dθ = ŷ Σy − y: rows of targets that do not sum to 1 still get the true gradient."""
    g = graphc.Graph("ce_mass")
    th = g.input("th", (3, 4))
    y = g.input("y", (3, 4))
    g.output("J", graphc.cross_entropy(th, y))
    bwd = graphc.grad(g, "J", ["th", "y"])
    rng = np.random.default_rng(7)
    T, Y = rng.normal(size=(3, 4)), rng.uniform(0.5, 2.0, size=(3, 4))
    got = graphc.evaluate(bwd, th=T, y=Y)
    eps = 1e-6
    for name, base in (("th", T), ("y", Y)):
        fd = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[i] += eps
            down[i] -= eps
            args_up = {"th": T, "y": Y, name: up}
            args_down = {"th": T, "y": Y, name: down}
            fd[i] = (graphc.evaluate(g, **args_up)["J"] - graphc.evaluate(g, **args_down)["J"]) / (2 * eps)
        np.testing.assert_allclose(got[f"d_{name}"], fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ hypothesis: every VJP on drawn shapes and values
# For every op with a derivative: draw shapes (broadcasting a bias over a batch, size-1 dims, a scalar
# `()`), draw values with the op's domain-aware generator (above), build J = sum(op(...) * v) for a
# random v, and check the backward graph, run by graphc.evaluate in float64, against central
# differences: relative error < 1e-6.
NO_DERIVATIVE = {
    "const": "no inputs",
    "sign": "its derivative is zero almost everywhere",
    "size": "it depends on a shape, not on values",
    "onehot": "its input is integer labels",
    "equal": "it is piecewise constant",
    "dropout_mask": "it depends on the step count, not on values",
}

DIM = st.integers(1, 5)


def shapes(min_rank=0, max_rank=2):
    return st.lists(DIM, min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def broadcast_from(draw, full):
    """A shape that broadcasts to `full`: a bias over the batch, size-1 dims, a scalar, or itself."""
    kind = draw(st.sampled_from(["bias", "ones", "scalar", "same"]))
    if kind == "bias":
        return full[draw(st.integers(1, max(1, len(full)))):]
    if kind == "ones":
        return tuple(1 if draw(st.booleans()) else d for d in full)
    return () if kind == "scalar" else full


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast together, in either order: a bias (D,) or (1, D) over a batch
    (N, D), size-1 dims, a scalar (), (m, 1) with (1, n), or equal shapes."""
    kind = draw(st.sampled_from(["bias", "other", "outer"]))
    if kind == "outer":
        a, b = (draw(DIM), 1), (1, draw(DIM))
    else:
        a = (draw(DIM), draw(DIM)) if kind == "bias" else draw(shapes())
        b = a[1:] if kind == "bias" and draw(st.booleans()) else draw(broadcast_from(a))
    return (a, b) if draw(st.booleans()) else (b, a)


def _unary_space(gen=real, min_rank=0, max_rank=2, attrs=lambda draw: {}):
    def space(draw, rng):
        return [gen(rng, *draw(shapes(min_rank, max_rank)))], attrs(draw)
    return space


def _binary_space(gen_b=real):
    def space(draw, rng):
        a, b = draw(broadcast_pair())
        return [real(rng, *a), gen_b(rng, *b)], {}
    return space


def _matmul_space(draw, rng):
    m, k, n = draw(DIM), draw(DIM), draw(DIM)
    a = (m, k) if draw(st.booleans()) else (k,)
    b = (k, n) if draw(st.booleans()) else (k,)
    return [real(rng, *a), real(rng, *b)], {}


def _reduce_space(draw, rng):
    shape = draw(shapes(0, 4))
    axis = draw(st.none() | st.integers(-len(shape), len(shape) - 1)) if shape else None
    if shape and draw(st.booleans()):
        axis = tuple(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
    return [real(rng, *shape)], {"axis": axis, "keepdims": draw(st.booleans())}


def _broadcast_to_space(draw, rng):
    target = draw(shapes())
    return [real(rng, *draw(broadcast_from(target)))], {"shape": target}


def _sum_to_space(draw, rng):
    full = draw(shapes())
    return [real(rng, *full)], {"shape": draw(broadcast_from(full))}


def _dot_space(draw, rng):
    lead_a, lead_b = draw(broadcast_pair().filter(lambda p: len(p[0]) + len(p[1]) <= 2))
    k = draw(DIM)
    return [real(rng, *lead_a, k), real(rng, *lead_b, k)], {}


def _reshape_space(draw, rng):
    shape = draw(shapes())
    left, target = int(np.prod(shape)), []
    for _ in range(draw(st.integers(0, 2))):      # split the element count into factors
        f = draw(st.sampled_from([d for d in range(1, left + 1) if left % d == 0]))
        target.append(f)
        left //= f
    if left > 1 or draw(st.booleans()):
        target.append(left)
    return [real(rng, *shape)], {"shape": tuple(target)}


def _concat_space(draw, rng):
    shape = list(draw(shapes(1, 4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(1, 3))
        parts.append(real(rng, *shape))
    return parts, {"axis": axis}


def _slice_space(draw, rng):
    shape = draw(shapes(1, 4))
    axis = draw(st.integers(-len(shape), -1))
    start = draw(st.integers(0, shape[axis] - 1))
    return [real(rng, *shape)], {"start": start, "stop": draw(st.integers(start + 1, shape[axis])),
                                 "axis": axis, "step": draw(st.integers(1, 3))}


def _unslice_space(draw, rng):
    shape = list(draw(shapes(1, 4)))
    axis = draw(st.integers(-len(shape), -1))
    size = shape[axis]
    start = draw(st.integers(0, size - 1))
    stop, step = draw(st.integers(start + 1, size)), draw(st.integers(1, 3))
    shape[axis] = len(range(start, stop, step))
    return [real(rng, *shape)], {"size": size, "start": start, "stop": stop, "axis": axis, "step": step}


def _permute_space(draw, rng):
    shape = draw(shapes(1, 4))
    return [real(rng, *shape)], {"axes": tuple(draw(st.permutations(range(len(shape)))))}


def _pad_space(draw, rng):
    shape = draw(shapes(1, 4))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(2 * draw(st.integers(1, len(shape)))))
    return [real(rng, *shape)], {"pad": pad, "value": draw(st.sampled_from([0.0, 1.5]))}


def _flatten_space(draw, rng):
    shape = draw(shapes(1, 4))
    start = draw(st.integers(0, len(shape) - 1))
    return [real(rng, *shape)], {"start_dim": start, "end_dim": draw(st.integers(start, len(shape) - 1))}


def _cross_entropy_space(draw, rng):
    *lead, classes = draw(shapes(1))
    kind = draw(st.sampled_from(["labels", "probabilities", "one-hot"]))
    ids = np.asarray(labels(rng, classes, *lead))
    target = {"labels": ids, "probabilities": probabilities(rng, *lead, classes),
              "one-hot": np.eye(classes)[ids]}[kind]
    return [real(rng, *lead, classes), target], {}


def _mse_space(draw, rng):
    shape = draw(shapes())
    return [real(rng, *shape), real(rng, *shape)], {}


def _embedding_space(draw, rng):
    rows, dim = draw(DIM), draw(DIM)
    return [real(rng, rows, dim), np.asarray(labels(rng, rows, *draw(shapes(0))))], {}


def _embedding_grad_space(draw, rng):
    rows, ids_shape = draw(DIM), draw(shapes(0))
    return [real(rng, *ids_shape, draw(DIM)), np.asarray(labels(rng, rows, *ids_shape))], {"rows": rows}


GRAD_SPACES = {
    "add": _binary_space(), "sub": _binary_space(), "mul": _binary_space(), "div": _binary_space(positive),
    "neg": _unary_space(), "square": _unary_space(), "relu": _unary_space(off_kink),
    "sigmoid": _unary_space(), "tanh": _unary_space(), "exp": _unary_space(),
    "log": _unary_space(positive), "sqrt": _unary_space(positive),
    "leaky_relu": _unary_space(off_kink, attrs=lambda draw: {"negative_slope": draw(st.sampled_from([0.01, 0.2, -0.5]))}),
    "elu": _unary_space(off_kink, attrs=lambda draw: {"alpha": draw(st.sampled_from([1.0, 0.3]))}),
    "softplus": _unary_space(attrs=lambda draw: {"beta": draw(st.sampled_from([1.0, 2.5]))}),
    "gelu": _unary_space(attrs=lambda draw: {"approximate": draw(st.sampled_from(["none", "tanh"]))}),
    "silu": _unary_space(), "erf": _unary_space(),
    "softmax": _unary_space(min_rank=1), "log_softmax": _unary_space(min_rank=1),
    "norm2": _unary_space(off_kink, min_rank=1),     # rows away from the kink of |x| at 0
    "transpose": _unary_space(),
    "matmul": _matmul_space, "dot": _dot_space,
    "sum": _reduce_space, "mean": _reduce_space,
    "broadcast_to": _broadcast_to_space, "sum_to": _sum_to_space,
    "reshape": _reshape_space, "concat": _concat_space, "slice": _slice_space, "unslice": _unslice_space,
    "permute": _permute_space, "flatten": _flatten_space, "pad": _pad_space,
    "cross_entropy": _cross_entropy_space, "mse": _mse_space,
    "embedding": _embedding_space, "embedding_grad": _embedding_grad_space,
}

# convolutions and pooling: shapes, strides, paddings, dilations and groups drawn together
@st.composite
def window(draw, size_max=5):
    """(x shape [N, C, H, W], kernel, stride, padding, dilation) of windows that fit."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), size_max))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), size_max))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), (kh, kw), \
        (draw(st.integers(1, 2)), draw(st.integers(1, 2))), (ph, pw), (dh, dw)


def _conv2d_space(draw, rng):
    (N, C, H, W), k, s, p, d = draw(window())
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if C % g == 0]))
    C = C * groups if groups > 1 and draw(st.booleans()) else C          # more channels per group, sometimes
    groups = groups if C % groups == 0 else 1
    C_out = groups * draw(st.integers(1, 2))
    if draw(st.integers(0, 4)) == 0:
        s, p = (1, 1), "same"
    args = [real(rng, N, C, H, W), real(rng, C_out, C // groups, *k)]
    if draw(st.booleans()):
        args.append(real(rng, C_out))
    return args, {"stride": s, "padding": p, "dilation": d, "groups": groups}


def _conv1d_space(draw, rng):
    (N, C, _, L), (_, k), (_, s), (_, p), (_, d) = draw(window(size_max=7))
    groups = draw(st.sampled_from([g for g in (1, C) if C % g == 0]))
    args = [real(rng, N, C, L), real(rng, groups * draw(st.integers(1, 2)), C // groups, k)]
    if draw(st.booleans()):
        args.append(real(rng, args[1].shape[0]))
    return args, {"stride": s, "padding": p, "dilation": d, "groups": groups}


def _window_attrs(k, s, p, d):
    return {"kernel": k, "stride": s, "padding": (p[0], p[0], p[1], p[1]), "dilation": d}


def _out_size(shape, k, s, p, d):
    return tuple((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, ss, pp, dd in zip(shape, k, s, p, d))


def _im2col_space(draw, rng):
    (N, C, H, W), k, s, p, d = draw(window())
    return [real(rng, N, C, H, W)], _window_attrs(k, s, p, d)


def _col2im_space(draw, rng):
    (N, C, H, W), k, s, p, d = draw(window())
    Ho, Wo = _out_size((H, W), k, s, p, d)
    return [real(rng, N, Ho, Wo, C * k[0] * k[1])], {"size": (H, W), **_window_attrs(k, s, p, d)}


def _patch_matmul_space(draw, rng):
    mode, G = draw(st.sampled_from(["nt", "nn", "tn"])), draw(st.integers(1, 3))
    rows, ka, nb = draw(shapes(1, 3)), draw(DIM), draw(DIM)
    if mode == "tn":
        return [real(rng, *rows, G * ka), real(rng, *rows, G * nb)], {"mode": mode, "groups": G}
    args = [real(rng, *rows, G * ka), real(rng, G * nb, ka) if mode == "nt" else real(rng, G * ka, nb)]
    if mode == "nt" and draw(st.booleans()):
        args.append(real(rng, G * nb))
    return args, {"mode": mode, "groups": G}


def _depthwise_space(draw, rng):
    (N, C, H, W), k, s, p, d = draw(window())
    mode = draw(st.sampled_from(["forward", "input_grad", "weight_grad"]))
    Ho, Wo = _out_size((H, W), k, s, p, d)
    x, w, dy = real(rng, N, C, H, W), real(rng, C, 1, *k), real(rng, N, C, Ho, Wo)
    args = {"forward": [x, w], "input_grad": [dy, w], "weight_grad": [x, dy]}[mode]
    if mode == "forward" and draw(st.booleans()):
        args.append(real(rng, C))
    return args, {"mode": mode, "size": (H, W), **_window_attrs(k, s, p, d)}


def _pointwise_space(draw, rng):
    N, C_in, C_out, H, W = (draw(DIM) for _ in range(5))
    mode = draw(st.sampled_from(["forward", "input_grad", "weight_grad"]))
    x, w, dy = real(rng, N, C_in, H, W), real(rng, C_out, C_in, 1, 1), real(rng, N, C_out, H, W)
    args = {"forward": [x, w], "input_grad": [dy, w], "weight_grad": [x, dy]}[mode]
    if mode == "forward" and draw(st.booleans()):
        args.append(real(rng, C_out))
    return args, {"mode": mode}


def _max_space(draw, rng):
    shape = draw(shapes(0, 4))
    args, attrs = [rng.permutation(np.linspace(-2, 2, int(np.prod(shape)))).reshape(shape)], {}   # no ties
    if shape:
        attrs["axis"] = draw(st.none() | st.integers(-len(shape), len(shape) - 1)
                             | st.sets(st.integers(0, len(shape) - 1), min_size=1).map(tuple))
        attrs["keepdims"] = draw(st.booleans())
    return args, attrs


def _pool_space(max_pool):
    def space(draw, rng):
        (N, C, H, W), k, s, p, d = draw(window())
        attrs = {"kernel_size": k, "stride": draw(st.none() | st.just(s)), "padding": p}
        if max_pool:      # distinct values: no ties for max's gradient
            attrs["dilation"] = d
            return [rng.permutation(np.linspace(-2, 2, N * C * H * W)).reshape(N, C, H, W)], attrs
        return [real(rng, N, C, H, W)], attrs
    return space


def _layer_norm_space(draw, rng):
    shape = draw(shapes(1, 4))
    norm = shape[len(shape) - draw(st.integers(1, len(shape))):]
    args = [real(rng, *shape)]
    for _ in range(draw(st.integers(0, 2))):
        args.append(real(rng, *norm))
    return args, {"normalized_shape": norm, "eps": draw(st.sampled_from([1e-5, 0.5]))}


def _adaptive_space(draw, rng):
    return [real(rng, draw(DIM), draw(DIM), draw(DIM), draw(DIM))], {"output_size": draw(st.sampled_from([1, (1, 1)]))}


def _batch_norm_space(draw, rng):
    rank = draw(st.integers(2, 4))
    shape = (draw(st.integers(2, 4)),) + tuple(draw(DIM) for _ in range(rank - 1))
    C = shape[1]
    args = [real(rng, *shape), real(rng, C), np.abs(real(rng, C)) + 0.5]
    for _ in range(draw(st.integers(0, 2))):
        args.append(real(rng, C))
    # (eps 1e-3 at least: two values per channel at eps 1e-5 leave finite differences ill-conditioned)
    return args, {"eps": draw(st.sampled_from([1e-3, 0.5])), "momentum": draw(st.sampled_from([0.1, 0.9]))}


def _dropout_space(draw, rng):
    shape = draw(shapes(1, 4))
    return [real(rng, *shape), np.array(float(draw(st.integers(0, 1000))))], \
        {"p": draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])), "seed": draw(st.integers(0, 5))}


def _where_space(draw, rng):
    full = draw(shapes(1, 4))
    cond = (rng.standard_normal(draw(broadcast_from(full))) > 0) * 1.0
    return [cond, real(rng, *draw(broadcast_from(full))), real(rng, *full)], {}


def _attention_space(with_v=True):
    def space(draw, rng):
        lead = draw(st.sampled_from([(1,), (2,), (1, 2), (2, 1)]))
        tq, tk, d, dv = (draw(st.integers(1, 5)) for _ in range(4))
        attrs = {"is_causal": draw(st.booleans())}
        if draw(st.booleans()):
            attrs["scale"] = draw(st.sampled_from([0.3, 1.0, 2.0]))
        args = [real(rng, *lead, tq, d), real(rng, *lead, tk, d)] + ([real(rng, *lead, tk, dv)] if with_v else [])
        return args, attrs
    return space


def _scan_space(draw, rng):
    n, T, d, h, axis = draw(DIM), draw(DIM), draw(DIM), draw(DIM), draw(st.sampled_from([0, 1]))
    x = real(rng, n, T, d) if axis == 1 else real(rng, T, n, d)
    part = draw(st.sampled_from([("final", 0), ("ys", 0)]))
    return [real(rng, n, h), x, real(rng, d, h) * 0.5, real(rng, h, h) * 0.5], \
        {"body": _rnn_body(n, d, h, axis), "part": part}


GRAD_SPACES.update({
    "scaled_dot_product_attention": _attention_space(), "attention_lse": _attention_space(with_v=False),
    "scan": _scan_space,
    "batch_norm": _batch_norm_space, "dropout": _dropout_space, "where": _where_space,
    "conv2d": _conv2d_space, "conv1d": _conv1d_space, "im2col": _im2col_space, "col2im": _col2im_space,
    "patch_matmul": _patch_matmul_space, "depthwise_conv": _depthwise_space,
    "pointwise_conv": _pointwise_space, "max": _max_space, "max_pool2d": _pool_space(True),
    "avg_pool2d": _pool_space(False), "adaptive_avg_pool2d": _adaptive_space, "layer_norm": _layer_norm_space,
})
WINDOWED = {"conv2d", "conv1d", "im2col", "col2im", "depthwise_conv", "max_pool2d", "avg_pool2d"}   # finite differences cost most

GRAD_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)   # the whole file runs in ~10 s
WINDOW_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def test_every_op_with_a_derivative_has_a_hypothesis_space():
    assert set(GRAD_SPACES) == set(REGISTRY) - set(NO_DERIVATIVE) - NO_SECOND_DERIVATIVE, (
        f"ops without a space: {sorted(set(REGISTRY) - set(NO_DERIVATIVE) - NO_SECOND_DERIVATIVE - set(GRAD_SPACES))}")
    for name in NO_DERIVATIVE:   # and those said to have none really return no gradient
        assert all(gr is None for gr in _vjp_of_first_case(name)[0]), name


@st.composite
def op_cases(draw, name):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    args, attrs = GRAD_SPACES[name](draw, rng)
    return Case(f"{name}-drawn", args, expect=None, attrs=attrs)


@pytest.mark.parametrize("name", sorted(set(GRAD_SPACES) - WINDOWED))
@GRAD_SETTINGS
@given(data=st.data())
def test_vjp_matches_finite_differences_on_drawn_shapes(name, data):
    _check_drawn(name, data)


@pytest.mark.parametrize("name", sorted(WINDOWED))
@WINDOW_SETTINGS
@given(data=st.data())
def test_vjp_of_windowed_ops_matches_finite_differences_on_drawn_windows(name, data):
    """Convolutions, pooling and the patch matrix over drawn kernels, strides, paddings ('same'
    too), dilations and groups (depthwise among them)."""
    _check_drawn(name, data)


def _check_drawn(name, data):
    case = data.draw(op_cases(name), label="case")
    g, wrt = _loss_graph(name, case)
    arrays = {f"a{i}": a for i, a in enumerate(case.args)}
    v_seed = data.draw(st.integers(0, 2**32 - 1), label="v seed")
    arrays["v"] = np.random.default_rng(v_seed).standard_normal(g.inputs["v"].shape)
    check_grads(g, arrays, wrt, rtol=DRAWN_RTOL.get(name, 1e-6))


# batch_norm over a channel of 2-3 values: the third derivative grows as 1/σ³, and central
# differences of step 1e-6 lose a few more digits than elsewhere
DRAWN_RTOL = {"batch_norm": 1e-5}


@GRAD_SETTINGS
@given(n=DIM, d=DIM, h=DIM, form=st.sampled_from(["rows", "column", "square"]),
       act=st.sampled_from(["tanh", "sigmoid"]), bias=st.sampled_from(["vector", "row", "scalar"]),
       seed=st.integers(0, 2**32 - 1))
def test_vjp_weight_shared_by_two_layers_on_drawn_shapes(n, d, h, form, act, bias, seed):
    """One W in two layers (tied as W.T then W, or one square W applied twice, row or column
    form): dJ/dW is the sum of both layers' contributions, and matches finite differences."""
    f = getattr(graphc, act)
    rng = np.random.default_rng(seed)
    if form == "square":
        h = d
    g = graphc.Graph("shared")
    x = g.input("x", (d,) if form == "column" else (n, d))
    W = g.param("W", (h, d))
    b = g.param("b", {"vector": (h,), "row": (1, h), "scalar": ()}[bias] if form != "column" else (h,))
    c = g.param("c", (d,))
    if form == "rows":
        out = f(f(x @ W.T + b) @ W + c)                    # identities (6) and (2) on the same W
    elif form == "column":
        out = f(W.T @ f(W @ x + b) + c)                    # identities (5) and (1)
    else:
        out = f(f(x @ W.T + b) @ W.T + b) + c              # W and b both used twice
    v = g.input("v", out.shape)
    g.output("L", graphc.sum(out * v))
    arrays = {k: rng.standard_normal(val.shape) for k, val in {**g.inputs, **g.params}.items()}
    check_grads(g, arrays, ["W", "b", "c", "x"])
