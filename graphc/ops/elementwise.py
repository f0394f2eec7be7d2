"""Elementwise ops: arithmetic with broadcasting and the activations.

Each is rendered by the elementwise kernel family: `c_expr` is the C
expression of one element, over its operands {0}, {1}.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import FLOAT, TensorType
from graphc.ops import Binary, OpDef, Unary, broadcast_shapes, register, require_float, unbroadcast


@register
class Const(OpDef):
    """A scalar constant. No inputs; no gradient."""

    name = "const"
    arity = 0
    attrs = {"value": 0.0}
    public = False

    def shape(self, value):
        return TensorType(())

    def reference(self, value):
        return np.array(value)

    def vjp(self, b, node, d_out):
        return []


@register
class Add(Binary):
    """z = x + y. Identity (3) for each operand, then a sum over the broadcast axes
    (a bias added to every row gets the sum of the rows' deltas)."""

    name = "add"
    identity = "3"
    c_expr = "{0} + {1}"

    def reference(self, x, y):
        return x + y

    def partials(self, b, x, y, z, d):
        return d, d


@register
class Sub(Binary):
    """z = x - y. Identity (3): dJ/dx = δ, dJ/dy = -δ (summed over broadcast axes)."""

    name = "sub"
    identity = "3"
    c_expr = "{0} - {1}"

    def reference(self, x, y):
        return x - y

    def partials(self, b, x, y, z, d):
        return d, b.neg(d)


@register
class Mul(Binary):
    """z = x ∘ y (elementwise product). Identity (4): ∂z/∂x = diag(y), so dJ/dx = δ ∘ y."""

    name = "mul"
    identity = "4"
    c_expr = "{0} * {1}"

    def reference(self, x, y):
        return x * y

    def partials(self, b, x, y, z, d):
        return b.mul(d, y), b.mul(d, x)


@register
class Div(Binary):
    """z = x / y. Identity (4): dJ/dx = δ / y, dJ/dy = -δ ∘ z / y."""

    name = "div"
    identity = "4"
    c_expr = "{0} / {1}"

    def reference(self, x, y):
        return x / y

    def partials(self, b, x, y, z, d):
        dx = b.div(d, y)
        return dx, b.neg(b.mul(dx, z))


@register
class Neg(Unary):
    """z = -x. Identity (4) with f' = -1."""

    name = "neg"
    c_expr = "-{0}"
    np_fn = np.negative

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.neg(d_out)]


@register
class Square(Unary):
    """z = x**2. Identity (4) with f'(x) = 2x."""

    name = "square"
    c_expr = "{0} * {0}"
    np_fn = np.square

    def derivative(self, b, x, y):
        return b.mul(x, 2.0)


@register
class Relu(Unary):
    """relu(x) = max(x, 0). Identity (4); relu'(x) = sgn(relu(x)), read off the output, so x need not be kept."""

    name = "relu"
    c_expr = "({0} <= 0 ? 0 : {0})"     # NaN fails the test and passes through, as in np.maximum

    def reference(self, x):
        return np.maximum(x, 0)

    def derivative(self, b, x, y):
        return b.apply("sign", y)


@register
class Sign(Unary):
    """sgn(x), elementwise (0 at 0). Its derivative is zero almost everywhere: no gradient flows."""

    name = "sign"
    c_expr = "(gc_real)(({0} > 0) - ({0} < 0))"
    np_fn = np.sign

    def vjp(self, b, node, d_out):
        return [None]


@register
class Sigmoid(Unary):
    """σ(x) = 1 / (1 + e^-x). Identity (4) with σ'(x) = σ(x)(1 - σ(x)), read off the output."""

    name = "sigmoid"
    # Both branches keep exp's argument non-positive: no overflow at large |x|.
    c_expr = "({0} >= 0 ? 1 / (1 + GC_EXP(-{0})) : GC_EXP({0}) / (1 + GC_EXP({0})))"

    def reference(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(self, b, x, y):
        return b.mul(y, b.sub(1.0, y))


@register
class Tanh(Unary):
    """tanh(x). Identity (4) with tanh'(x) = 1 - tanh(x)^2, read off the output."""

    name = "tanh"
    c_expr = "GC_TANH({0})"
    np_fn = np.tanh

    def derivative(self, b, x, y):
        return b.sub(1.0, b.apply("square", y))


@register
class Exp(Unary):
    """exp(x). Identity (4) with exp' = exp, read off the output."""

    name = "exp"
    c_expr = "GC_EXP({0})"
    np_fn = np.exp

    def derivative(self, b, x, y):
        return y


@register
class Log(Unary):
    """log(x) (natural). Identity (4) with log'(x) = 1/x."""

    name = "log"
    c_expr = "GC_LOG({0})"
    np_fn = np.log

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.div(d_out, node.inputs[0])]


@register
class Sqrt(Unary):
    """sqrt(x). Identity (4) with sqrt'(x) = 1 / (2 sqrt(x)), read off the output."""

    name = "sqrt"
    c_expr = "GC_SQRT({0})"
    np_fn = np.sqrt

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.div(b.mul(d_out, 0.5), node.output)]


@register
class BroadcastTo(OpDef):
    """Copy x into a larger shape by NumPy broadcasting. VJP: identity (3) and a sum over the new axes."""

    name = "broadcast_to"
    attrs = {"shape": ()}
    identity = "3"
    public = False
    c_expr = "{0}"

    def shape(self, x, shape):
        require_float(x)
        if broadcast_shapes(x.shape, tuple(shape)) != tuple(shape):
            from graphc.errors import ShapeError
            raise ShapeError(f"cannot broadcast {x.shape} to {tuple(shape)}")
        return TensorType(tuple(shape))

    def reference(self, x, shape):
        return np.broadcast_to(x, tuple(shape)).copy()

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [unbroadcast(b, d_out, node.inputs[0].shape)]


def is_elementwise(op: OpDef) -> bool:
    return op.c_expr is not None


__all__ = ["FLOAT", "is_elementwise"]
