"""The activations of torch.nn.functional beyond relu, sigmoid and tanh: leaky_relu, elu,
softplus, gelu (exact and tanh forms), silu, and erf (which the exact gelu's derivative needs).

Each is one elementwise record: its C is a `c_expr` over {0} with its real attributes written
{name} (graphc/core/opdef.py `c_code`), and its VJP is identity (4), dJ/dx = δ ∘ f′(x), with
f′ built from other ops so the backward graph is differentiable again.
"""
from __future__ import annotations

import math

import numpy as np

from graphc.core.errors import SpecError
from graphc.core.opdef import Unary, register

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _real_attr(value, name: str, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value <= low:
        raise SpecError(f"{name} must be > {low}, got {value!r}")
    return float(value)


def _step(b, x):
    """(1 + sgn(x)) / 2: 1 where x > 0, 0 where x < 0 (the branch of a piecewise f)."""
    return b.mul(b.add(b.apply("sign", x), 1.0), 0.5)


@register
class LeakyRelu(Unary):
    """leaky_relu(x, negative_slope=0.01) = x where x > 0, negative_slope · x elsewhere.

    Backward, identity (4): dJ/dx = δ ∘ f′(x), f′(x) = 1 where x > 0 and negative_slope
    elsewhere, written (1 + s)/2 + (1 − s)/2 · sgn(x) with s the slope."""

    name = "leaky_relu"
    attrs = {"negative_slope": 0.01}
    c_expr = "({0} > 0 ? {0} : {negative_slope} * {0})"

    def shape(self, x, negative_slope):
        _real_attr(negative_slope, "negative_slope")
        return super().shape(x)

    def reference(self, x, negative_slope):
        return np.where(x > 0, x, negative_slope * x)

    def derivative(self, b, x, y, negative_slope):
        s = float(negative_slope)
        return b.add(b.mul(b.apply("sign", x), (1.0 - s) / 2), (1.0 + s) / 2)


@register
class Elu(Unary):
    """elu(x, alpha=1.0) = x where x > 0, α (eˣ − 1) elsewhere.

    Backward, identity (4): dJ/dx = δ ∘ f′(x), f′(x) = 1 where x > 0 and eˣ α = y + α elsewhere,
    read off the output: step(x) + (1 − step(x)) ∘ (y + α)."""

    name = "elu"
    attrs = {"alpha": 1.0}
    c_expr = "({0} > 0 ? {0} : {alpha} * (GC_EXP({0}) - 1))"

    def shape(self, x, alpha):
        _real_attr(alpha, "alpha")
        return super().shape(x)

    def reference(self, x, alpha):
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))

    def derivative(self, b, x, y, alpha):
        on = _step(b, x)
        return b.add(on, b.mul(b.sub(1.0, on), b.add(y, float(alpha))))


@register
class Softplus(Unary):
    """softplus(x, beta=1.0, threshold=20.0) = log(1 + e^(βx)) / β, and x where βx > threshold
    (as torch.nn.functional.softplus).

    Backward, identity (4): dJ/dx = δ ∘ f′(x), f′(x) = σ(βx), and 1 where βx > threshold."""

    name = "softplus"
    attrs = {"beta": 1.0, "threshold": 20.0}
    # max(βx, 0) + log(1 + e^(−|βx|)): exp's argument stays non-positive, no overflow
    c_expr = ("({beta} * {0} > {threshold} ? {0} : (({beta} * {0} > 0 ? {beta} * {0} : 0)"
              " + GC_LOG(1 + GC_EXP({beta} * {0} > 0 ? -{beta} * {0} : {beta} * {0}))) / {beta})")

    def shape(self, x, beta, threshold):
        _real_attr(beta, "beta", 0.0)
        _real_attr(threshold, "threshold")
        return super().shape(x)

    def reference(self, x, beta, threshold):
        bx = beta * x
        return np.where(bx > threshold, x, (np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx)))) / beta)

    def derivative(self, b, x, y, beta, threshold):
        bx = b.mul(x, float(beta))
        linear = _step(b, b.sub(bx, float(threshold)))         # 1 where βx > threshold: f = x there
        return b.add(linear, b.mul(b.sub(1.0, linear), b.apply("sigmoid", bx)))


@register
class Erf(Unary):
    """erf(x), the error function, elementwise.

    Backward, identity (4): dJ/dx = δ ∘ erf′(x), erf′(x) = 2/√π · e^(−x²)."""

    name = "erf"
    c_expr = "(gc_real)erf((double){0})"     # C99 <math.h>; in double for float32 too

    def reference(self, x):
        return _erf(x)

    def derivative(self, b, x, y):
        return b.mul(b.apply("exp", b.neg(b.apply("square", x))), 2.0 / math.sqrt(math.pi))


@register
class Gelu(Unary):
    """gelu(x, approximate="none") = x Φ(x) = x/2 (1 + erf(x/√2)); approximate="tanh":
    x/2 (1 + tanh(√(2/π)(x + 0.044715 x³))).

    Backward, identity (4): dJ/dx = δ ∘ f′(x); exact: f′(x) = Φ(x) + x φ(x), φ(x) = e^(−x²/2)/√(2π);
    tanh form, with t = tanh(u), u = √(2/π)(x + a x³): f′(x) = (1 + t)/2 + x/2 (1 − t²) u′(x)."""

    name = "gelu"
    attrs = {"approximate": "none"}
    c_expr = "(gc_real)0.5 * {0} * (1 + (gc_real)erf((double){0} * 0.7071067811865476))"
    c_tanh = ("(gc_real)0.5 * {0} * (1 + GC_TANH((gc_real)0.7978845608028654"
              " * ({0} + (gc_real)0.044715 * {0} * {0} * {0})))")

    def shape(self, x, approximate):
        if approximate not in ("none", "tanh"):
            raise SpecError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        return super().shape(x)

    def c_code(self, k, node):
        return self.c_tanh if node.attrs["approximate"] == "tanh" else self.c_expr

    def reference(self, x, approximate):
        if approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_A * x ** 3)))
        return 0.5 * x * (1 + _erf(x / math.sqrt(2.0)))

    def derivative(self, b, x, y, approximate):
        if approximate == "tanh":
            x2 = b.apply("square", x)
            u = b.mul(b.add(x, b.mul(b.mul(x2, x), _GELU_TANH_A)), _SQRT_2_OVER_PI)
            t = b.apply("tanh", u)
            du = b.mul(b.add(b.mul(x2, 3 * _GELU_TANH_A), 1.0), _SQRT_2_OVER_PI)
            half_x = b.mul(x, 0.5)
            return b.add(b.mul(b.add(t, 1.0), 0.5), b.mul(b.mul(half_x, b.sub(1.0, b.apply("square", t))), du))
        cdf = b.mul(b.add(b.apply("erf", b.mul(x, 1 / math.sqrt(2.0))), 1.0), 0.5)
        pdf = b.mul(b.apply("exp", b.mul(b.apply("square", x), -0.5)), 1 / math.sqrt(2 * math.pi))
        return b.add(cdf, b.mul(x, pdf))


@register
class Silu(Unary):
    """silu(x) = x σ(x), elementwise.

    Backward, identity (4): dJ/dx = δ ∘ f′(x), f′(x) = σ(x) (1 + x (1 − σ(x)))."""

    name = "silu"
    c_expr = "({0} >= 0 ? {0} / (1 + GC_EXP(-{0})) : {0} * GC_EXP({0}) / (1 + GC_EXP({0})))"

    def reference(self, x):
        e = np.exp(-np.abs(x))
        return x * np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(self, b, x, y):
        s = b.apply("sigmoid", x)
        return b.mul(s, b.add(b.mul(x, b.sub(1.0, s)), 1.0))
