"""Elementwise ops: arithmetic with broadcasting and the activations.

Each is rendered by the elementwise kernel family: `c_expr` is the C
expression of one element, over its operands {0}, {1}.
"""
from __future__ import annotations

import numpy as np

from graphc.core.ir import FLOAT, TensorType
from graphc.core.opdef import Binary, OpDef, Unary, broadcast_shapes, register, require_float, unbroadcast
from graphc.core.notation import ADD, MATMUL, MUL, POSTFIX, Printed, wrap
from graphc.core.text import ATOM, POWER, PRODUCT, SUM, UNARY


@register
class Const(OpDef):
    """A scalar constant. No inputs, so no gradient: nothing flows back through a number."""

    name = "const"
    arity = 0
    attrs = {"value": 0.0}
    public = False
    static = True
    leafy = True
    shown_by_name = False           # a named constant still prints as its number

    def shape(self, value):
        return TensorType(())

    def reference(self, value):
        return np.array(value)

    def static_c(self, k, node):
        return k.real(node.attrs["value"])    # finite from the spec; folding could still overflow
    def vjp(self, b, node, d_out):
        return []

    def spec_text(self, node, arg):
        value = float(node.attrs["value"])
        text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
        return text, UNARY if value < 0 else ATOM          # -2 binds like -x

    def constant(self, node):
        return node.attrs["value"]

    def notation(self, p, node):
        return Printed(p.sym.number(node.attrs["value"]))


@register
class Add(Binary):
    """z = x + y with NumPy broadcasting.

    Backward, identity (3) for each operand: ∂z/∂x = ∂z/∂y = I, so dJ/dx = dJ/dy = δ, then summed
    over the broadcast axes (a bias added to every row gets the sum of the rows' deltas); each
    gradient has its operand's shape."""

    name = "add"
    infix = ("+", SUM)
    identity = "3"
    c_expr = "{0} + {1}"

    def reference(self, x, y):
        return x + y

    def partials(self, b, x, y, z, d):
        return d, d

    def notation(self, p, node, a, b):
        y = node.inputs[1]
        if y.node is not None and isinstance(y.node.op, Neg) and not p.is_ref(y):
            return p.difference(a, p.expr(y.node.inputs[0]))       # a + (−b) reads a − b
        return Printed(f"{wrap(a, ADD)} + {wrap(b, ADD)}", ADD)


@register
class Sub(Binary):
    """z = x − y with NumPy broadcasting.

    Backward, identity (3): dJ/dx = δ, dJ/dy = −δ, each summed over its broadcast axes."""

    name = "sub"
    infix = ("-", SUM)
    identity = "3"
    c_expr = "{0} - {1}"

    def reference(self, x, y):
        return x - y

    def partials(self, b, x, y, z, d):
        return d, b.neg(d)

    def notation(self, p, node, a, b):
        return p.difference(a, b)


@register
class Mul(Binary):
    """z = x ∘ y (elementwise product, a practice exercise of the notes), with broadcasting.

    Backward, identity (4): ∂z/∂x = diag(y), so dJ/dx = δ ∘ y and dJ/dy = δ ∘ x, each summed
    over its broadcast axes."""

    name = "mul"
    infix = ("*", PRODUCT)
    identity = "4"
    c_expr = "{0} * {1}"

    def reference(self, x, y):
        return x * y

    def partials(self, b, x, y, z, d):
        return b.mul(d, y), b.mul(d, x)

    def notation(self, p, node, a, b):
        x, y = node.inputs
        cx, cy = p.constant(x), p.constant(y)
        if cx == 1.0:
            return Printed(b.text, b.prec)
        if cy == 1.0:
            return Printed(a.text, a.prec)
        if p.scalar(y) and not p.scalar(x) or (cy is not None and cx is None):
            x, y, a, b = y, x, b, a                       # scalar first: c X
        if p.scalar(x) and not p.scalar(y) or p.constant(x) is not None:
            s = p.coefficient(x).node
            if s is not None and isinstance(s.op, Div) and p.constant(s.inputs[0]) == 1.0:
                return p.quotient(b, p.expr(s.inputs[1]))   # X · (1/N) reads X/N
            return p.product(a, b)
        return Printed(f"{wrap(a, MUL)}{p.sym.circ}{wrap(b, MUL + 0.5)}", MUL)

    def skeleton(self, p, node, top):
        if any(p.scalar(x) or p.constant(x) is not None for x in node.inputs):
            return None                                   # c X: checked as X
        return p.sym.circ.join(p.skeleton(x, top) for x in node.inputs)


@register
class Div(Binary):
    """z = x / y with broadcasting.

    Backward, identity (4): dJ/dx = δ / y, dJ/dy = −δ ∘ z / y (= −δ ∘ x / y²), each summed over
    its broadcast axes."""

    name = "div"
    infix = ("/", PRODUCT)
    identity = "4"
    c_expr = "{0} / {1}"

    def reference(self, x, y):
        return x / y

    def partials(self, b, x, y, z, d):
        dx = b.div(d, y)
        return dx, b.neg(b.mul(dx, z))

    def notation(self, p, node, a, b):
        return p.quotient(a, b)


@register
class Neg(Unary):
    """z = −x. Backward, identity (4) with f′ = −1: dJ/dx = −δ."""

    name = "neg"
    prefix = ("-", UNARY)
    c_expr = "-{0}"
    np_fn = np.negative

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.neg(d_out)]

    def notation(self, p, node, a):
        return Printed(p.sym.neg(wrap(a, MATMUL)), MUL)


@register
class Square(Unary):
    """z = x², elementwise. Backward, identity (4) with f′(x) = 2x: dJ/dx = δ ∘ 2x."""

    name = "square"
    postfix = (" ** 2", POWER)
    c_expr = "{0} * {0}"
    np_fn = np.square

    def derivative(self, b, x, y):
        return b.mul(x, 2.0)

    def notation(self, p, node, a):
        return Printed(p.sym.square(wrap(a, POSTFIX)), POSTFIX)


@register
class Relu(Unary):
    """relu(x) = max(x, 0), elementwise.

    Backward, identity (4): dJ/dx = δ ∘ relu′(x), with relu′(x) = sgn(relu(x)) read off the
    output, so x need not be kept."""

    name = "relu"
    c_expr = "({0} <= 0 ? 0 : {0})"     # NaN fails the test and passes through, as in np.maximum

    def reference(self, x):
        return np.maximum(x, 0)

    def derivative(self, b, x, y):
        return b.apply("sign", y)


@register
class Sign(Unary):
    """sgn(x), elementwise (0 at 0).

    No gradient: its derivative is zero wherever it exists (and undefined at 0), so nothing flows
    back to x; relu's VJP uses it as relu′, never differentiates through it."""

    name = "sign"
    symbol = "sgn"
    leafy = True
    c_expr = "(gc_real)(({0} > 0) - ({0} < 0))"
    np_fn = np.sign

    def vjp(self, b, node, d_out):
        return [None]


@register
class Sigmoid(Unary):
    """σ(x) = 1 / (1 + e⁻ˣ), elementwise.

    Backward, identity (4): dJ/dx = δ ∘ σ(x)(1 − σ(x)), read off the output."""

    name = "sigmoid"
    symbol = "sigma"                # σ(x)
    # Both branches keep exp's argument non-positive: no overflow at large |x|.
    c_expr = "({0} >= 0 ? 1 / (1 + GC_EXP(-{0})) : GC_EXP({0}) / (1 + GC_EXP({0})))"

    def reference(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(self, b, x, y):
        return b.mul(y, b.sub(1.0, y))


@register
class Tanh(Unary):
    """tanh(x), elementwise. Backward, identity (4): dJ/dx = δ ∘ (1 − tanh²(x)), read off the output."""

    name = "tanh"
    c_expr = "GC_TANH({0})"
    np_fn = np.tanh

    def derivative(self, b, x, y):
        return b.sub(1.0, b.apply("square", y))


@register
class Exp(Unary):
    """exp(x), elementwise. Backward, identity (4) with exp′ = exp: dJ/dx = δ ∘ exp(x), read off the output."""

    name = "exp"
    c_expr = "GC_EXP({0})"
    np_fn = np.exp

    def derivative(self, b, x, y):
        return y


@register
class Log(Unary):
    """log(x) (natural), elementwise. Backward, identity (4) with log′(x) = 1/x: dJ/dx = δ / x."""

    name = "log"
    c_expr = "GC_LOG({0})"
    np_fn = np.log

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.div(d_out, node.inputs[0])]

    def positive_inputs(self, node):
        return [node.inputs[0]]


@register
class Sqrt(Unary):
    """√x, elementwise. Backward, identity (4) with √′(x) = 1 / (2√x): dJ/dx = δ / (2√x), read off the output."""

    name = "sqrt"
    c_expr = "GC_SQRT({0})"
    np_fn = np.sqrt

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.div(b.mul(d_out, 0.5), node.output)]

    def notation(self, p, node, a):
        return Printed(p.sym.sqrt(a.text))

    def positive_inputs(self, node):
        return [node.inputs[0]]


@register
class Equal(Binary):
    """[x = y]: 1 where the operands are equal, 0 elsewhere, with broadcasting (max's VJP mask).

    No gradient: it is piecewise constant, so nothing flows back to either operand."""

    name = "equal"
    public = False
    leafy = True
    c_expr = "(gc_real)({0} == {1})"

    def reference(self, x, y):
        return (x == y).astype(np.float64)

    def vjp(self, b, node, d_out):
        return [None, None]


@register
class Where(OpDef):
    """where(cond, a, b) as torch.where: a where cond is nonzero, b elsewhere, with NumPy
    broadcasting over all three. cond is a constant mask (an input, a param, a comparison).

    Backward, identity (4) for a and b: ∂z/∂a = diag([cond ≠ 0]), so dJ/da = where(cond, δ, 0)
    and dJ/db = where(cond, 0, δ), each summed over its broadcast axes, identity (3). No gradient
    to cond: z is piecewise constant in it."""

    name = "where"
    arity = 3
    identity = "3,4"
    c_expr = "GC_WHERE({0}, {1}, {2})"     # graphc_kernels.h: not `?:`, which GCC 12 miscompiles here

    def shape(self, cond, a, b):
        require_float(cond, "cond (argument 1)")
        require_float(a, "argument 2")
        require_float(b, "argument 3")
        return TensorType(broadcast_shapes(broadcast_shapes(cond.shape, a.shape), b.shape))

    def reference(self, cond, a, b):
        return np.where(cond != 0, a, b)

    def vjp(self, b, node, d_out):
        cond, x, y = node.inputs
        with b.because(node, "4"):
            dx = b.apply("where", cond, d_out, 0.0)
            dy = b.apply("where", cond, 0.0, d_out)
        with b.because(node, "3"):
            return [None, unbroadcast(b, dx, x.shape), unbroadcast(b, dy, y.shape)]


@register
class BroadcastTo(OpDef):
    """Copy x into a larger shape by NumPy broadcasting.

    Backward, identity (3): every copy passes δ through, so dJ/dx = δ summed over the broadcast
    axes (shape of x)."""

    name = "broadcast_to"
    attrs = {"shape": ()}
    identity = "3"
    public = False
    leafy = True
    see_through = True
    c_expr = "{0}"

    def shape(self, x, shape):
        require_float(x)
        if broadcast_shapes(x.shape, tuple(shape)) != tuple(shape):
            from graphc.core.errors import ShapeError
            raise ShapeError(f"cannot broadcast {x.shape} to {tuple(shape)}")
        return TensorType(tuple(shape))

    def reference(self, x, shape):
        return np.broadcast_to(x, tuple(shape)).copy()

    def inline_c(self, k, node, iter_shape, loads):
        return k.expr(node.inputs[0], iter_shape, loads)     # the loop's index broadcasts it
    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [unbroadcast(b, d_out, node.inputs[0].shape)]

    def notation(self, p, node, a):
        return a                        # a broadcast is implicit in the notes' notation


def is_elementwise(op: OpDef) -> bool:
    return op.c_expr is not None


__all__ = ["FLOAT", "is_elementwise"]
