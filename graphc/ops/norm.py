"""Normalization: layer_norm, with torch.nn.functional's arguments.

Its VJP is the closed form a person writes (not the chain through mean, variance and square
root): with x̂ = (x − μ)/σ and g = δ ∘ weight, dJ/dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ,
each mean over the normalized axes.
"""
from __future__ import annotations

import math

import numpy as np

from graphc.core.errors import ShapeError, SpecError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float


def _standardized(b, x, axes, eps):
    """(x̂, 1/σ): x centred and scaled over `axes`, σ = √(var + eps), as graph values."""
    mu = b.apply("mean", x, axis=axes, keepdims=True)
    xc = b.sub(x, mu)
    var = b.apply("mean", b.apply("square", xc), axis=axes, keepdims=True)
    rstd = b.div(1.0, b.apply("sqrt", b.add(var, eps)))
    return b.mul(xc, rstd), rstd


@register
class LayerNorm(OpDef):
    """layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) as torch.nn.functional:
    y = x̂ ∘ weight + bias, x̂ = (x − μ)/√(σ² + eps) over the last len(normalized_shape) axes.

    Backward, the closed form: with g = δ ∘ weight (identity (4)), dJ/dx = (g − mean(g) − x̂ ∘
    mean(g ∘ x̂)) / σ (identities (4) and (3): the means pass δ back to every element);
    dJ/dweight = Σ δ ∘ x̂ and dJ/dbias = Σ δ over the leading axes, identity (3)."""

    name = "layer_norm"
    arity = 3
    optional_inputs = 2
    attrs = {"normalized_shape": (), "eps": 1e-5}
    tuple_attrs = ("normalized_shape",)
    positional = ("input", "normalized_shape", "weight", "bias", "eps")
    input_names = ("input", "weight", "bias")
    identity = "3,4"

    def check_attrs(self, inputs, attrs):
        if isinstance(attrs.get("normalized_shape"), int) and not isinstance(attrs.get("normalized_shape"), bool):
            attrs = {**attrs, "normalized_shape": (attrs["normalized_shape"],)}
        return super().check_attrs(inputs, attrs)

    def shape(self, x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
        for t in (x, weight, bias):
            if t is not None:
                require_float(t)
        k = len(normalized_shape)
        if not normalized_shape or k > x.rank or tuple(x.shape[-k:]) != tuple(normalized_shape):
            raise ShapeError(f"normalized_shape {tuple(normalized_shape)} must be the last dims of x {x.shape}",
                             hint=f"e.g. normalized_shape=({x.shape[-1]},)" if x.rank else None)
        if any(isinstance(d, str) for d in normalized_shape):
            raise ShapeError("cannot normalize over the batch dim")
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.shape != tuple(normalized_shape):
                raise ShapeError(f"{name} must have shape {tuple(normalized_shape)}, got {t.shape}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or not math.isfinite(eps):
            raise SpecError(f"eps must be a positive number, got {eps!r}")
        return TensorType(x.shape)

    def reference(self, x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
        axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
        if weight is not None:
            y = y * weight
        return y + bias if bias is not None else y

    def _axes(self, node):
        x = node.inputs[0]
        return tuple(range(x.rank - len(node.attrs["normalized_shape"]), x.rank))

    def lower(self, b, node):
        x, *affine = node.inputs
        xhat, _ = _standardized(b, x, self._axes(node), float(node.attrs["eps"]))
        y = b.mul(xhat, affine[0]) if affine else xhat
        return b.add(y, affine[1]) if len(affine) > 1 else y

    def vjp(self, b, node, d):
        x, *affine = node.inputs
        axes = self._axes(node)
        with b.because(node, "4"):
            xhat, rstd = _standardized(b, x, axes, float(node.attrs["eps"]))
            g = b.mul(d, affine[0]) if affine else d
            mean = lambda v: b.apply("mean", v, axis=axes, keepdims=True)  # noqa: E731
            dx = b.mul(b.sub(b.sub(g, mean(g)), b.mul(xhat, mean(b.mul(g, xhat)))), rstd)
        out = [dx]
        with b.because(node, "3"):
            if affine:
                out.append(b.apply("sum_to", b.mul(d, xhat), shape=affine[0].shape))
            if len(affine) > 1:
                out.append(b.apply("sum_to", d, shape=affine[1].shape))
        return out
