"""An independent NumPy transformer block, forward and backward written by hand (as llm.c's
train_gpt2.c writes them layer by layer), to check graphc's derived backward pass against.

Nothing here calls graphc. The block is GPT-2's pre-LayerNorm block:
    a = layer_norm(x) ; qkv = a Wqkvᵀ + bqkv ; causal multi-head attention ; x1 = x + att Wprojᵀ + bproj
    m = layer_norm(x1) ; x2 = x1 + gelu(m Wfcᵀ + bfc) Wfc2ᵀ + bfc2
with the exact (erf) GELU. Shapes: x [B, T, C], H heads of size C / H.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-5


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def layernorm_forward(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mu) * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    xhat, rstd, w = cache
    dw = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    db = dy.reshape(-1, dy.shape[-1]).sum(0)
    g = dy * w
    dx = (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) * rstd
    return dx, dw, db


def linear_forward(x, W, b):
    return x @ W.T + b, x


def linear_backward(dy, x, W):
    C_in = x.shape[-1]
    dW = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, C_in)
    db = dy.reshape(-1, dy.shape[-1]).sum(0)
    return dy @ W, dW, db


def gelu_forward(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_backward(dy, x):
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def attention_forward(qkv, H):
    """qkv [B, T, 3C] -> [B, T, C]: causal softmax(q kᵀ / sqrt(D)) v per head."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // H
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ v                                                    # [B, H, T, D]
    return o.transpose(0, 2, 1, 3).reshape(B, T, C), (q, k, v, p)


def attention_backward(dout, cache):
    q, k, v, p = cache
    B, H, T, D = q.shape
    do = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv = p.transpose(0, 1, 3, 2) @ do
    dp = do @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(D)
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    merge = [t.transpose(0, 2, 1, 3).reshape(B, T, H * D) for t in (dq, dk, dv)]
    return np.concatenate(merge, axis=-1)


def block_forward(x, P, H):
    a, ln1 = layernorm_forward(x, P["ln1_w"], P["ln1_b"])
    qkv, a_in = linear_forward(a, P["attn_w"], P["attn_b"])
    att, att_cache = attention_forward(qkv, H)
    proj, att_in = linear_forward(att, P["proj_w"], P["proj_b"])
    x1 = x + proj
    m, ln2 = layernorm_forward(x1, P["ln2_w"], P["ln2_b"])
    f, m_in = linear_forward(m, P["fc_w"], P["fc_b"])
    g = gelu_forward(f)
    f2, g_in = linear_forward(g, P["fc2_w"], P["fc2_b"])
    x2 = x1 + f2
    return x2, (ln1, a_in, att_cache, att_in, ln2, m_in, f, g_in)


def block_backward(dx2, cache, P):
    ln1, a_in, att_cache, att_in, ln2, m_in, f, g_in = cache
    grads = {}
    dx1 = dx2.copy()
    dg, grads["fc2_w"], grads["fc2_b"] = linear_backward(dx2, g_in, P["fc2_w"])
    df = gelu_backward(dg, f)
    dm, grads["fc_w"], grads["fc_b"] = linear_backward(df, m_in, P["fc_w"])
    d, grads["ln2_w"], grads["ln2_b"] = layernorm_backward(dm, ln2)
    dx1 += d
    dx = dx1.copy()
    datt, grads["proj_w"], grads["proj_b"] = linear_backward(dx1, att_in, P["proj_w"])
    dqkv = attention_backward(datt, att_cache)
    da, grads["attn_w"], grads["attn_b"] = linear_backward(dqkv, a_in, P["attn_w"])
    d, grads["ln1_w"], grads["ln1_b"] = layernorm_backward(da, ln1)
    dx += d
    return dx, grads


def block_params(C: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def mat(o, i):
        return rng.normal(0.0, 1.0 / math.sqrt(i), size=(o, i))
    return {"ln1_w": 1.0 + 0.1 * rng.normal(size=C), "ln1_b": 0.1 * rng.normal(size=C),
            "attn_w": mat(3 * C, C), "attn_b": 0.1 * rng.normal(size=3 * C),
            "proj_w": mat(C, C), "proj_b": 0.1 * rng.normal(size=C),
            "ln2_w": 1.0 + 0.1 * rng.normal(size=C), "ln2_b": 0.1 * rng.normal(size=C),
            "fc_w": mat(4 * C, C), "fc_b": 0.1 * rng.normal(size=4 * C),
            "fc2_w": mat(C, 4 * C), "fc2_b": 0.1 * rng.normal(size=C)}
