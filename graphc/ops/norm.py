"""Normalization: layer_norm and batch_norm, with torch.nn.functional's arguments.

Their VJP is the closed form a person writes (not the chain through mean, variance and square
root): with x̂ = (x − μ)/σ and g = δ ∘ weight, dJ/dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ,
each mean over the normalized axes (layer_norm: the last axes of each row; batch_norm: every
axis but the channels).
"""
from __future__ import annotations

import math

import numpy as np

from graphc.core.errors import ShapeError, SpecError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float


def _check_eps(eps) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or not math.isfinite(eps):
        raise SpecError(f"eps must be a positive number, got {eps!r}")


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
    input_init = {1: "ones", 2: "zeros"}
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
        _check_eps(eps)
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

    def kernel(self, k, node):
        return k.layer_norm(node)

    def vjp(self, b, node, d):
        x, *affine = node.inputs
        extra = dict(normalized_shape=tuple(node.attrs["normalized_shape"]), eps=float(node.attrs["eps"]))
        inputs = (x, d) + tuple(affine[:1])
        with b.because(node, "4"):
            out = [b.apply("layer_norm_grad", *inputs, wrt="input", **extra)]
        with b.because(node, "3"):
            if affine:
                out.append(b.apply("layer_norm_grad", *inputs, wrt="weight", **extra))
            if len(affine) > 1:
                out.append(b.apply("sum_to", d, shape=affine[1].shape))
        return out


def _layer_norm_grads(x, d, weight, normalized_shape, eps):
    """(dJ/dx, dJ/dweight) of layer_norm in NumPy, the closed form of LayerNormGrad."""
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    g = d * weight if weight is not None else d
    dx = (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * rstd
    return dx, (d * xhat).reshape((-1,) + tuple(normalized_shape)).sum(axis=0)


@register
class LayerNormGrad(OpDef):
    """One gradient of y = layer_norm(x, normalized_shape, weight, ...) from x, δ = dJ/dy and the
    weight (attribute wrt): with x̂ = (x − μ)/σ per row and g = δ ∘ weight, wrt "input" is
    dJ/dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ (identities (4) and (3): each mean passes δ back to
    every element it reads), wrt "weight" dJ/dweight = Σ δ ∘ x̂ over the rows (identity (3)). μ and
    σ are recomputed from x, one row at a time; the nodes of one layer norm (same inputs) are one
    pass over the rows (backend/fusion.py's NORM_GRADS).

    Its own VJP (a second derivative through layer_norm) is not supported: it raises a GraphcError."""

    name = "layer_norm_grad"
    arity = 3
    optional_inputs = 1
    public = False
    attrs = {"wrt": "input", "normalized_shape": (), "eps": 1e-5}
    tuple_attrs = ("normalized_shape",)
    identity = "3,4"

    def check_attrs(self, inputs, attrs):
        out = super().check_attrs(inputs, attrs)
        if out["wrt"] not in ("input", "weight"):
            raise SpecError(f"layer_norm_grad: wrt must be 'input' or 'weight', got {out['wrt']!r}")
        return out

    def shape(self, x, d, weight=None, wrt="input", normalized_shape=(), eps=1e-5):
        LayerNorm().shape(x, weight, None, normalized_shape=normalized_shape, eps=eps)
        require_float(d, "d")
        if d.shape != x.shape:
            raise ShapeError(f"layer_norm_grad: d must have the shape of x {x.shape}, got {d.shape}")
        return TensorType(x.shape if wrt == "input" else tuple(normalized_shape))

    def reference(self, x, d, weight=None, wrt="input", normalized_shape=(), eps=1e-5):
        return _layer_norm_grads(x, d, weight, normalized_shape, eps)[wrt == "weight"]

    def kernel(self, k, node):
        return k.layer_norm(node)

    def vjp(self, b, node, d):
        from graphc.core.errors import GraphcError
        raise GraphcError("layer_norm_grad has no VJP: second derivatives through layer_norm are not supported",
                          hint="differentiate a graph once (grad of the forward graph)")

    def notation(self, p, node, *args):
        return p.call(self.name, list(args))


@register
class BatchNorm(OpDef):
    """batch_norm(x, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5) as
    torch.nn.functional, over x [N, C], [N, C, L] or [N, C, H, W] (NCHW): each channel c
    standardized over every other axis, y = x̂ ∘ weight + bias.

    In training (forward, value_and_grad, train_step, fit) the statistics are the batch's (the
    variance biased, as torch); train_step then updates the running statistics, which are model
    state ([state] in the spec): r ← (1 − momentum) r + momentum s, with s the batch mean and the
    unbiased batch variance. In inference (predict) y = (x − running_mean)/√(running_var + eps) ∘
    weight + bias.

    Backward, the closed form (as layer_norm's, over the axes N, H, W): with g = δ ∘ weight
    (identity (4)), dJ/dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ; dJ/dweight = Σ δ ∘ x̂ and dJ/dbias = Σ δ over
    N, H, W, identity (3). The running statistics get no gradient."""

    name = "batch_norm"
    arity = 5
    optional_inputs = 2
    attrs = {"momentum": 0.1, "eps": 1e-5}
    positional = ("input", "running_mean", "running_var", "weight", "bias", "momentum", "eps")
    input_names = ("input", "running_mean", "running_var", "weight", "bias")
    state_inputs = (1, 2)
    input_init = {1: "zeros", 2: "ones", 3: "ones", 4: "zeros"}
    identity = "3,4"

    def shape(self, x, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5):
        for t in (x, running_mean, running_var, weight, bias):
            if t is not None:
                require_float(t)
        if not 2 <= x.rank <= 4:
            raise ShapeError(f"batch_norm takes x of rank 2 to 4 ([N, C], [N, C, L] or [N, C, H, W]), got rank {x.rank}")
        C = x.shape[1]
        if isinstance(C, str):
            raise ShapeError(f"the channel dim (axis 1) of x must be fixed, got {C!r}")
        for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
            if t is not None and t.shape != (C,):
                raise ShapeError(f"{name} must have shape ({C},) (the channels of x {x.shape}), got {t.shape}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise SpecError(f"momentum must be a number in [0, 1], got {momentum!r}")
        _check_eps(eps)
        return TensorType(x.shape)

    @staticmethod
    def _axes(rank: int) -> tuple[int, ...]:
        return (0,) + tuple(range(2, rank))

    @staticmethod
    def _channels(b, v, rank: int):
        """A per-channel vector [C] as [C, 1, ...]: it broadcasts along the axes after C."""
        return v if rank == 2 else b.apply("reshape", v, shape=v.shape + (1,) * (rank - 2))

    def reference(self, x, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5):
        axes, cshape = self._axes(x.ndim), (-1,) + (1,) * (x.ndim - 2)
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
        if weight is not None:
            y = y * weight.reshape(cshape)
        return y + bias.reshape(cshape) if bias is not None else y

    def _stats(self, b, x, eps: float):
        """(count, μ, σ², 1/σ) per channel, μ and σ² biased, each [1, C, 1, 1]: two passes over x (the
        sum, then the sum of squares about μ, whose x − μ is computed inside that pass, never stored).
        The forward pass, the VJP and the running statistics build the same nodes: computed once."""
        axes = self._axes(x.rank)
        count = b.apply("size", x, axes=axes)
        mu = b.div(b.apply("sum", x, axis=axes, keepdims=True), count)
        var = b.div(b.apply("sum", b.apply("square", b.sub(x, mu)), axis=axes, keepdims=True), count)
        return count, mu, var, b.div(1.0, b.apply("sqrt", b.add(var, float(eps))))

    def _affine(self, b, node):
        """(weight, bias) as [C, 1, 1] (None where left out)."""
        x, _rm, _rv, *affine = node.inputs
        return tuple(self._channels(b, t, x.rank) for t in affine) + (None,) * (2 - len(affine))

    def lower(self, b, node):
        """y = x ∘ s + t per channel, s = weight/σ, t = bias − μ s: one pass over x after the
        statistics, and x̂ is never stored (the VJP reads x again)."""
        x = node.inputs[0]
        _, mu, _, rstd = self._stats(b, x, node.attrs["eps"])
        w, bias = self._affine(b, node)
        scale = b.mul(rstd, w) if w is not None else rstd
        shift = b.neg(b.mul(mu, scale)) if bias is None else b.sub(bias, b.mul(mu, scale))
        return b.add(b.mul(x, scale), shift)

    def vjp(self, b, node, d):
        x, rm = node.inputs[:2]
        axes = self._axes(x.rank)
        with b.because(node, "3"):     # the sums over N, H, W of δ and of δ ∘ x (identity (3) passes δ to each)
            w, bias = self._affine(b, node)
            count, mu, _, rstd = self._stats(b, x, node.attrs["eps"])
            s1 = b.apply("sum", d, axis=axes, keepdims=True)
            s2 = b.sub(b.apply("sum", b.mul(d, x), axis=axes, keepdims=True), b.mul(mu, s1))   # Σ δ (x − μ)
        with b.because(node, "4"):
            # dJ/dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ with g = δ ∘ weight, written as δ a + x k1 + k0
            # per channel (a = weight/σ, k1 = −a Σδ(x − μ) / (σ² count), k0 = −a Σδ / count − μ k1)
            a = b.mul(rstd, w) if w is not None else rstd
            k1 = b.neg(b.div(b.mul(b.mul(a, b.mul(rstd, rstd)), s2), count))
            k0 = b.sub(b.neg(b.div(b.mul(a, s1), count)), b.mul(mu, k1))
            dx = b.add(b.mul(d, a), b.add(b.mul(x, k1), k0))
        out = [dx, None, None]
        with b.because(node, "3"):
            flat = lambda v: b.apply("reshape", v, shape=rm.shape)  # noqa: E731
            if w is not None:
                out.append(flat(b.mul(s2, rstd)))        # dJ/dweight = Σ δ ∘ x̂
            if bias is not None:
                out.append(flat(s1))                     # dJ/dbias = Σ δ
        return out

    def positive_inputs(self, node):
        return [node.inputs[2]]

    def inference(self, b, node):
        x, rm, rv, *affine = node.inputs
        rank = x.rank
        scale = b.div(1.0, b.apply("sqrt", b.add(rv, float(node.attrs["eps"]))))
        if affine:
            scale = b.mul(scale, affine[0])
        y = b.mul(b.sub(x, self._channels(b, rm, rank)), self._channels(b, scale, rank))
        return b.add(y, self._channels(b, affine[1], rank)) if len(affine) > 1 else y

    def state_updates(self, b, node):
        """The running statistics: r ← (1 − momentum) r + momentum s, s the batch mean and the
        unbiased batch variance (σ² count / (count − 1), count = the elements per channel; at a
        count of 1 the biased one, 0, as no spread was seen)."""
        x, rm = node.inputs[:2]
        m = float(node.attrs["momentum"])
        count, mu, var, _ = self._stats(b, x, node.attrs["eps"])
        denom = b.add(b.sub(count, 1.0), b.apply("equal", count, 1.0))     # count − 1, but 1 when count is 1
        flat = lambda v: b.apply("reshape", v, shape=rm.shape)  # noqa: E731

        def blend(r, s):
            return b.add(b.mul(r, 1.0 - m), b.mul(s, m))
        return {1: blend(node.inputs[1], flat(mu)), 2: blend(node.inputs[2], flat(b.div(b.mul(var, count), denom)))}
