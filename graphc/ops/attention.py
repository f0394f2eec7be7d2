"""scaled_dot_product_attention, with torch.nn.functional's name, arguments and shapes, and the
two kernel ops of its backward pass: attention_lse (the per-row log-sum-exp L of the scores, which
the forward kernel writes beside O) and attention_grad (dQ, dK, dV from Q, K, V, O, L and δ = dJ/dO).

With S = s Q Kᵀ (s = scale, 1/√D by default), P = softmax(S) over the keys (is_causal: only the
lower-left triangle, query i sees keys j ≤ i, torch.ones(Tq, Tk).tril()) and O = P V, the backward
pass is the notes' identities: dV = Pᵀ δ (6), dP = δ Vᵀ (2), dS = P ∘ (dP − rowsum(δ ∘ O)) (4, the
softmax Jacobian, never built), dQ = s dS K (2), dK = s dSᵀ Q (5). The kernels (templates/kernels/
attention.c.j2) work by blocks of rows and columns with an online softmax and never store a Tq×Tk
matrix: the backward kernel recomputes P block by block from Q, K and L.
"""
from __future__ import annotations

import math

import numpy as np

from graphc.core.errors import ShapeError, SpecError
from graphc.core.ir import TensorType
from graphc.core.notation import ADD, MATMUL, MUL, POSTFIX, Printed, wrap
from graphc.core.opdef import OpDef, register, require_float

SUPPORTED = "graphc supports q, k, v of rank 3 or 4, is_causal and scale (no attn_mask, dropout_p 0, no enable_gqa)"


def _scale(attrs, D) -> float:
    s = attrs.get("scale")
    return 1.0 / math.sqrt(D) if s is None else float(s)


def _check_flags(is_causal, scale) -> None:
    if not isinstance(is_causal, bool):
        raise SpecError(f"is_causal must be True or False, got {is_causal!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise SpecError(f"scale must be a finite number or None (1/sqrt(D)), got {scale!r}")


def _heads(q: TensorType, k: TensorType, v: TensorType | None = None):
    """(Tq, Tk, D, Dv) of attention over q [..., Tq, D], k [..., Tk, D], v [..., Tk, Dv], the
    leading (batch, head) axes equal; every mismatch named."""
    named = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, t in named:
        require_float(t, name)
        if t.rank not in (3, 4):
            raise ShapeError(f"scaled_dot_product_attention takes {name} of rank 4 [B, H, T, D] or 3 [B, T, D], "
                             f"got rank {t.rank} {t.shape}",
                             hint="split the heads with reshape and permute first" if t.rank == 2 else None)
    for name, t in named[1:]:
        if t.rank != q.rank or t.shape[:-2] != q.shape[:-2]:
            raise ShapeError(f"scaled_dot_product_attention needs the batch and head axes of q and {name} equal, "
                             f"got q {q.shape} and {name} {t.shape}",
                             hint="grouped-query attention (enable_gqa) is not supported: repeat the heads of k and v")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"scaled_dot_product_attention needs q and k of the same head size D (last axis), got "
                         f"q {q.shape} and k {k.shape}")
    for name, t in named:
        if isinstance(t.shape[-1], str):
            raise ShapeError(f"scaled_dot_product_attention needs a fixed head size (the last axis of {name}), "
                             f"got {t.shape}", hint="only the batch, head and length axes may be symbolic")
    if v is not None and v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"scaled_dot_product_attention needs k and v of the same length Tk (axis -2), got "
                         f"k {k.shape} and v {v.shape}")
    return q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1] if v is not None else None


def _probabilities(q, k, is_causal, scale, lse=None):
    """(P, L): the attention weights softmax(s q kᵀ) (masked) and their log-sum-exp per row, stably
    (the largest score subtracted first); given L, P = exp(S − L) as the backward kernel recomputes it."""
    s = _scale({"scale": scale}, q.shape[-1])
    S = np.matmul(q, np.swapaxes(k, -1, -2)) * s
    if is_causal:
        S = np.where(np.tril(np.ones(S.shape[-2:], dtype=bool)), S, -np.inf)
    if lse is None:
        m = S.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(S - m).sum(axis=-1, keepdims=True)))[..., 0]
    return np.exp(S - lse[..., None]), lse


class _Attention(OpDef):
    """What the three records share: the flags and their check."""

    attrs = {"is_causal": False, "scale": None}

    def check_attrs(self, inputs, attrs):
        out = super().check_attrs(inputs, attrs)
        _check_flags(out["is_causal"], out["scale"])
        return out

    def _flags(self, node):
        return {"is_causal": node.attrs["is_causal"], "scale": node.attrs["scale"]}

    def _s(self, node) -> float:
        return _scale(node.attrs, node.inputs[0].shape[-1])


@register
class ScaledDotProductAttention(_Attention):
    """scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
    scale=None, enable_gqa=False) as torch.nn.functional, over q [B, H, Tq, D], k [B, H, Tk, D],
    v [B, H, Tk, Dv] (or [B, T, D]) -> O [B, H, Tq, Dv]: O = P V, P = softmax(S) over the keys,
    S = s Q Kᵀ, s = scale or 1/√D; is_causal keeps the lower-left triangle (query i sees keys j ≤ i,
    torch.ones(Tq, Tk).tril()). attn_mask, dropout_p > 0 and enable_gqa are refused.

    Backward: dV = Pᵀ δ, identity (6); dP = δ Vᵀ, identity (2); dS = P ∘ (dP − rowsum(δ ∘ O)),
    identity (4) with softmax's Jacobian, never built; dQ = s dS K, identity (2); dK = s dSᵀ Q,
    identity (5). One attention_grad kernel computes the three from Q, K, V, O, δ and the row
    log-sum-exp L (attention_lse, written by the forward kernel): P is recomputed, never stored."""

    name = "scaled_dot_product_attention"
    arity = 3
    positional = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    input_names = ("query", "key", "value")
    identity = "2,4,5,6"

    def check_attrs(self, inputs, attrs):
        attrs = dict(attrs)
        mask, p, gqa = attrs.pop("attn_mask", None), attrs.pop("dropout_p", 0.0), attrs.pop("enable_gqa", False)
        if mask is not None:
            raise SpecError("scaled_dot_product_attention: attn_mask is not supported", hint=SUPPORTED
                            + "; for the lower-left triangle pass is_causal=True")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p != 0:
            raise SpecError(f"scaled_dot_product_attention: dropout_p must be 0, got {p!r}", hint=SUPPORTED
                            + "; apply dropout(...) to the output instead")
        if gqa is not False:
            raise SpecError(f"scaled_dot_product_attention: enable_gqa is not supported, got {gqa!r}", hint=SUPPORTED)
        return super().check_attrs(inputs, attrs)

    def shape(self, q, k, v, is_causal=False, scale=None):
        _heads(q, k, v)
        return TensorType(q.shape[:-1] + v.shape[-1:])

    def reference(self, q, k, v, is_causal=False, scale=None):
        P, _ = _probabilities(q, k, is_causal, scale)
        return np.matmul(P, v)

    def kernel(self, k, node):
        return k.attention(node, "forward", self._s(node))

    def vjp(self, b, node, d):
        q, k, v = node.inputs
        o = node.output
        with b.because(node, "4"):
            lse = b.apply("attention_lse", q, k, **self._flags(node))
        grad = lambda wrt: b.apply("attention_grad", q, k, v, o, lse, d, wrt=wrt, **self._flags(node))  # noqa: E731
        with b.because(node, "2,4"):
            dq = grad("q")
        with b.because(node, "4,5"):
            dk = grad("k")
        with b.because(node, "6"):
            dv = grad("v")
        return [dq, dk, dv]

    def notation(self, p, node, q, k, v):
        return p.call("attention", [q, k, v])

    def explain_notes(self, p, nodes):
        return [f"attention(Q, K, V) = P V with P = softmax(S) over the keys, S = s Q Kᵀ, s = {_scale_text(n)}"
                + (" (is_causal: query i sees keys j ≤ i)" if n.attrs["is_causal"] else "") for n in nodes[:1]]


def _scale_text(node) -> str:
    s = node.attrs["scale"]
    return f"1/√{node.inputs[0].shape[-1]}" if s is None else f"{s:g}"


@register
class AttentionLse(_Attention):
    """L = log Σ_j exp(S_ij) over the keys of S = s Q Kᵀ (masked as scaled_dot_product_attention's):
    [..., Tq], the one value the forward kernel saves for the backward pass, which recomputes
    P = exp(S − L) from it. The forward kernel of the same q and k writes it beside O.

    Backward: ∂L_i/∂S_ij = P_ij (identity (4), logsumexp′ = softmax), so dQ = s (δ ∘ P K) by
    identity (2), P K being attention(Q, K, K), and dK = s Pᵀ (δ ∘ Q) by identity (5), attention_grad's
    dV with δ ∘ Q for dO."""

    name = "attention_lse"
    arity = 2
    public = False
    leafy = True                    # L, in the note under explain's title: never a δ of its own
    identity = "2,4,5"

    def shape(self, q, k, is_causal=False, scale=None):
        _heads(q, k)
        return TensorType(q.shape[:-1])

    def reference(self, q, k, is_causal=False, scale=None):
        return _probabilities(q, k, is_causal, scale)[1]

    def kernel(self, k, node):
        return k.attention(node, "lse", self._s(node))

    def vjp(self, b, node, d):
        q, k = node.inputs
        s = self._s(node)
        with b.because(node, "2,4"):
            dcol = b.apply("reshape", d, shape=d.shape + (1,))      # δ_i on every column of row i
            pk = b.apply("scaled_dot_product_attention", q, k, k, **self._flags(node))
            dq = b.mul(b.mul(dcol, pk), s)
        with b.because(node, "4,5"):
            dk = b.mul(b.apply("attention_grad", q, k, k, pk, node.output, b.mul(dcol, q), wrt="v",
                               **self._flags(node)), s)
        return [dq, dk]

    def notation(self, p, node, q, k):
        return p.call("logsumexp", [Printed(f"s {wrap(q, MATMUL)} {p.sym.T(wrap(k, POSTFIX))}")])


@register
class AttentionGrad(_Attention):
    """One of dQ, dK, dV (attribute wrt) of O = scaled_dot_product_attention(Q, K, V) from Q, K, V,
    O, the row log-sum-exp L and δ = dJ/dO: with P = exp(s Q Kᵀ − L) (masked) recomputed,
    dV = Pᵀ δ, identity (6); dS = P ∘ (δ Vᵀ − rowsum(δ ∘ O)), identities (2) and (4);
    dQ = s dS K, identity (2); dK = s dSᵀ Q, identity (5). The nodes of one attention (same inputs)
    are one kernel (backend/fusion.py's ATTENTION_PARTS), which writes each that is needed.

    Its own VJP (a second derivative through attention) is not supported: it raises a GraphcError."""

    name = "attention_grad"
    arity = 6
    public = False
    attrs = {"wrt": "q", "is_causal": False, "scale": None}
    identity = "2,4,5,6"

    def check_attrs(self, inputs, attrs):
        out = super().check_attrs(inputs, attrs)
        if out["wrt"] not in ("q", "k", "v"):
            raise SpecError(f"attention_grad: wrt must be 'q', 'k' or 'v', got {out['wrt']!r}")
        return out

    def shape(self, q, k, v, o, lse, d, wrt="q", is_causal=False, scale=None):
        _heads(q, k, v)
        for name, t, want in (("o", o, q.shape[:-1] + v.shape[-1:]), ("d_o", d, q.shape[:-1] + v.shape[-1:]),
                              ("lse", lse, q.shape[:-1])):
            require_float(t, name)
            if t.shape != want:
                raise ShapeError(f"attention_grad: {name} must have shape {want}, got {t.shape}")
        return TensorType({"q": q.shape, "k": k.shape, "v": v.shape}[wrt])

    def reference(self, q, k, v, o, lse, d, wrt="q", is_causal=False, scale=None):
        P, _ = _probabilities(q, k, is_causal, scale, lse)
        if wrt == "v":
            return np.matmul(np.swapaxes(P, -1, -2), d)
        s = _scale({"scale": scale}, q.shape[-1])
        dS = P * (np.matmul(d, np.swapaxes(v, -1, -2)) - (d * o).sum(axis=-1, keepdims=True))
        return s * (np.matmul(dS, k) if wrt == "q" else np.matmul(np.swapaxes(dS, -1, -2), q))

    def kernel(self, k, node):
        return k.attention(node, "backward", self._s(node))

    def vjp(self, b, node, d):
        from graphc.core.errors import GraphcError
        raise GraphcError("attention_grad has no VJP: second derivatives through scaled_dot_product_attention "
                          "are not supported", hint="differentiate a graph once (grad of the forward graph)")

    def notation(self, p, node, q, k, v, o, lse, d):
        P = Printed("P")
        p.used.add("attention")
        if node.attrs["wrt"] == "v":
            return p.product(p.transposed(P), d)
        dS = Printed(f"P{p.sym.circ}({wrap(p.product(d, p.transposed(v)), ADD)}{p.sym.minus}"
                     f"rowsum({wrap(d, MUL)}{p.sym.circ}{wrap(o, MUL)}))", MUL)
        if node.attrs["wrt"] == "q":
            return p.product(p.product(Printed("s"), dS), k)
        return p.product(p.product(Printed("s"), p.transposed(dS)), q)

    def explain_notes(self, p, nodes):
        if "attention" not in p.used:
            return []
        n = nodes[0]
        q, k = (p.sym.ident(x.name) for x in n.inputs[:2])
        mask = " (is_causal: query i sees keys j ≤ i, torch.ones(Tq, Tk).tril())" if n.attrs["is_causal"] else ""
        return [f"P = softmax(s {q} {k}ᵀ) over the keys{mask}, s = {_scale_text(n)}: recomputed block by block "
                f"from {q}, {k} and the row log-sum-exp L = logsumexp(s {q} {k}ᵀ) the forward pass saved, "
                "never stored"]
