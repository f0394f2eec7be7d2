"""Linear-algebra, reduction and layout ops: matmul, transpose, sums, reshape, concat.

matmul cites identities (1)/(2) for the operand the gradient passes through
and (5)/(6) for the weight; every gradient comes back in its operand's shape.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import MATMUL, MUL, POSTFIX, Printed, wrap
from graphc.core.text import ATOM, PRODUCT, operand_text, spec_form
from graphc.core.opdef import OpDef, broadcast_shapes, norm_axis, numel, register, require_float, unbroadcast


@register
class Matmul(OpDef):
    """z = a @ b with NumPy's rules for 1-D and 2-D operands.

    VJP: row form z = x W: dJ/dx = δ Wᵀ, identity (2); dJ/dW = xᵀ δ, identity (6).
    Column form z = W x: dJ/dW = δ xᵀ, identity (5); dJ/dx = Wᵀ δ, identity (1).
    """

    name = "matmul"
    arity = 2
    infix = ("@", PRODUCT)
    identity = "1,2,5,6"

    def shape(self, a, b):
        require_float(a, "left operand")
        require_float(b, "right operand")
        if not (1 <= a.rank <= 2 and 1 <= b.rank <= 2):
            raise ShapeError(f"supports 1-D and 2-D operands, got ranks {a.rank} and {b.rank}")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.rank == 1 else b.shape[-2]
        if k_a != k_b:
            hint = None
            if b.rank == 2 and b.shape[-1] == k_a:
                hint = "the right operand transposed would fit"
            elif a.rank == 2 and a.shape[0] == k_b:
                hint = "the left operand transposed would fit"
            raise ShapeError(f"inner dims {k_a} and {k_b} differ", hint=hint)
        return TensorType(a.shape[:-1] + b.shape[1:] if b.rank == 2 else a.shape[:-1])

    def error_hint(self, inputs, error):
        if error.hint is None or len(inputs) != 2:
            return error.hint
        a, b = inputs
        g = a.graph
        if error.hint.startswith("the right"):
            fixed = transposed_text(b)
            fix = f"{operand_text(a, self, 0)} {self.infix[0]} {fixed}"
            shape = tuple(reversed(b.shape))
        else:
            fixed = transposed_text(a)
            fix = f"{fixed} {self.infix[0]} {operand_text(b, self, 1)}"
            shape = tuple(reversed(a.shape))
        return f"{fixed} is {g.format_shape(shape)}; did you mean {fix}?"

    def reference(self, a, b):
        return a @ b

    def kernel(self, k, node):
        return k.gemm(node)
    def vjp(self, b, node, d):
        x, w = node.inputs
        out = []
        # gradient of the left operand: d @ wᵀ (or an outer product when w is a vector)
        column = x.rank == 2 and w.rank == 1          # z = W x, the notes' column form
        with b.because(node, "5" if column else "2"):
            if w.rank == 2:
                out.append(b.matmul(d, b.transpose(w)))
            else:
                out.append(b.outer(d, w) if x.rank == 2 else b.mul(d, w))
        # gradient of the right operand: xᵀ @ d, the weight's shape
        with b.because(node, "1" if column else "6"):
            if x.rank == 2:
                out.append(b.matmul(b.transpose(x), d))
            elif w.rank == 2:
                out.append(b.outer(x, d))
            else:
                out.append(b.mul(d, x))
        return out

    def notation(self, p, node, a, b):
        return p.product(a, b)

    def skeleton(self, p, node, top):
        a, b = node.inputs
        return p.skeleton(a, top) + p.skeleton(b, top)


@register
class Transpose(OpDef):
    """z = xᵀ (a no-op on vectors, as in NumPy).

    Backward, identity (3) up to the layout: transposing only moves elements, so dJ/dx = δᵀ,
    in the shape of x."""

    name = "transpose"
    postfix = (".T", ATOM)
    leafy = True

    def shape(self, x):
        if x.rank > 2:
            raise ShapeError(f".T supports rank 1 and 2, got rank {x.rank}")
        return TensorType(tuple(reversed(x.shape)), x.dtype)

    def reference(self, x):
        return x.T

    def kernel(self, k, node):
        return k.permuted_copy(node, tuple(reversed(range(node.inputs[0].rank))))
    def vjp(self, b, node, d):
        with b.because(node, "3"):
            return [b.transpose(d)]

    def notation(self, p, node, a):
        return a if node.inputs[0].rank < 2 else p.transposed(a)     # a vector's ᵀ is NumPy's no-op


def transposed_text(v) -> str:
    """How a hint writes vᵀ: `W.T` for W, and `U` for the temporary U.T."""
    n = v.node
    if v.temporary and n is not None and isinstance(n.op, Transpose):
        return operand_text(n.inputs[0])
    text, prec = (v.name, ATOM) if not v.temporary else (operand_text(v), spec_form(v, 1)[1])
    return f"{text}{Transpose.postfix[0]}" if prec >= ATOM else f"({text}){Transpose.postfix[0]}"


def reduced_shape(shape, axis, keepdims):
    if axis is None:
        return tuple(1 for _ in shape) if keepdims else ()
    ax = norm_axis(axis, len(shape), "sum")
    return shape[:ax] + ((1,) if keepdims else ()) + shape[ax + 1:]


@register
class Sum(OpDef):
    """Σ x over all elements, or along one axis.

    Backward, identity (3): each summed element passes δ through unchanged, so dJ/dx = δ
    broadcast back over the summed axes, in the shape of x."""

    name = "sum"
    attrs = {"axis": None, "keepdims": False}
    identity = "3"

    def shape(self, x, axis, keepdims):
        require_float(x)
        return TensorType(reduced_shape(x.shape, axis, keepdims))

    def reference(self, x, axis, keepdims):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def kernel(self, k, node):
        x, axis = node.inputs[0], node.attrs["axis"]
        return k.reduce(node, tuple(1 if axis is None or a == axis % x.rank else d for a, d in enumerate(x.shape)))
    def vjp(self, b, node, d):
        x = node.inputs[0]
        axis, keep = node.attrs["axis"], node.attrs["keepdims"]
        with b.because(node, self.identity):
            if axis is not None and not keep:
                d = b.apply("reshape", d, shape=reduced_shape(x.shape, axis, True))
            return [b.apply("broadcast_to", d, shape=x.shape)]

    def sum_over(self, node) -> str | None:
        """'rows', 'cols' or '' (all) for the sums the notes write Σ_rows, Σ_cols, Σ; None else."""
        x, axis = node.inputs[0], node.attrs["axis"]
        if axis is None:
            return ""
        if x.rank == 2:
            return "rows" if axis % 2 == 0 else "cols"
        return None

    def notation(self, p, node, x):
        over = self.sum_over(node)
        if over is None:
            axis = node.attrs["axis"]
            over = "classes" if axis == -1 or axis == node.inputs[0].rank - 1 else f"axis {axis}"
        return p.summed(over, x)

    def skeleton(self, p, node, top):
        over = self.sum_over(node)
        return None if over is None else p.sym.sum(over, p.skeleton(node.inputs[0], top))


@register
class Mean(OpDef):
    """Mean of all elements or along one axis: Σ x / count.

    Backward, identity (3) as for sum, scaled: dJ/dx = δ / count broadcast back over the
    averaged axes, in the shape of x."""

    name = "mean"
    attrs = {"axis": None, "keepdims": False}
    identity = "3"

    shape = Sum.shape

    def reference(self, x, axis, keepdims):
        return np.mean(x, axis=axis, keepdims=keepdims)

    def _count(self, b, x, axis):
        axes = tuple(range(x.rank)) if axis is None else (norm_axis(axis, x.rank, "mean"),)
        return b.apply("size", x, axes=axes)

    def lower(self, b, node):
        x = node.inputs[0]
        s = b.apply("sum", x, **node.attrs)
        return b.div(s, self._count(b, x, node.attrs["axis"]))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            d = b.div(d, self._count(b, x, node.attrs["axis"]))
            return Sum.vjp(self, b, node, d)


@register
class SumTo(OpDef):
    """Sum x down to a broadcast-compatible shape: the undo of broadcasting.

    Backward, identity (3): dJ/dx = δ broadcast back to the shape of x."""

    name = "sum_to"
    attrs = {"shape": ()}
    identity = "3"
    public = False

    def shape(self, x, shape):
        require_float(x)
        if broadcast_shapes(tuple(shape), x.shape) != x.shape:
            raise ShapeError(f"cannot sum {x.shape} down to {tuple(shape)}")
        return TensorType(tuple(shape))

    def reference(self, x, shape):
        shape = tuple(shape)
        lead = x.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
        return np.sum(x, axis=axes, keepdims=True).reshape(shape)

    def kernel(self, k, node):
        return k.reduce(node, tuple(node.attrs["shape"]))
    def vjp(self, b, node, d):
        with b.because(node, self.identity):
            return [b.apply("broadcast_to", d, shape=node.inputs[0].shape)]

    def sum_over(self, node) -> str | None:
        """'rows', 'cols' or '' (all) for the sums the notes write Σ_rows, Σ_cols, Σ; None else."""
        x, shape = node.inputs[0], tuple(node.attrs["shape"])
        if shape == () or all(d == 1 for d in shape):
            return ""
        if x.rank == 2 and shape in ((x.shape[1],), (1, x.shape[1])):
            return "rows"
        if x.rank == 2 and shape == (x.shape[0], 1):
            return "cols"
        return None

    def notation(self, p, node, x):
        over = self.sum_over(node)
        return p.call(self.name, [x]) if over is None else p.summed(over, x)

    skeleton = Sum.skeleton


@register
class Size(OpDef):
    """The number of elements of x along `axes`, as a real scalar (the batch count of a mean).

    No gradient: it depends on the shape of x, not on its values."""

    name = "size"
    attrs = {"axes": ()}
    public = False
    static = True
    leafy = True

    def check_attrs(self, inputs, attrs):
        attrs = super().check_attrs(inputs, attrs)
        attrs["axes"] = tuple(attrs["axes"])
        return attrs

    def shape(self, x, axes):
        for a in axes:
            norm_axis(a, x.rank, "size")
        return TensorType(())

    def reference(self, x, axes):
        return np.array(float(np.prod([x.shape[a] for a in axes])))

    def static_c(self, k, node):
        src = node.inputs[0].shape
        return k.size_of([src[a] for a in node.attrs["axes"]])
    def vjp(self, b, node, d):
        return [None]

    def notation(self, p, node, _x):
        x = node.inputs[0]
        dims = [p.dim(x.shape[a]) for a in node.attrs["axes"]]
        if len(dims) <= 1:
            return Printed(p.sym.ident(dims[0]) if dims else "1")     # N
        return Printed("·".join(dims), MUL)                            # N·D


@register
class Dot(OpDef):
    """a · b over the last axis (np.dot for vectors), a practice exercise of the notes.

    Backward, identity (4) on the elementwise product, then the sum: ∂(a·b)/∂a = bᵀ, so
    dJ/da = δ b and dJ/db = δ a, each summed over its broadcast axes."""

    name = "dot"
    arity = 2
    identity = "4"

    def shape(self, a, b):
        require_float(a), require_float(b)
        if a.rank == 0 or b.rank == 0 or a.shape[-1] != b.shape[-1]:
            raise ShapeError("needs two operands with the same last dim")
        return TensorType(broadcast_shapes(a.shape, b.shape)[:-1])

    def reference(self, a, b):
        return np.sum(a * b, axis=-1)

    def lower(self, b, node):
        return b.apply("sum", b.mul(*node.inputs), axis=-1)

    def vjp(self, b, node, d):
        x, y = node.inputs
        with b.because(node, self.identity):
            d = b.apply("reshape", d, shape=node.output.shape + (1,))
            return [unbroadcast(b, b.mul(d, y), x.shape), unbroadcast(b, b.mul(d, x), y.shape)]

    def notation(self, p, node, a, b):
        return Printed(f"{wrap(a, MATMUL)} · {wrap(b, MATMUL)}", MUL)


@register
class Norm2(OpDef):
    """‖x‖₂ over the last axis, a practice exercise of the notes.

    Backward, identity (4) through √(Σ x²): ∂‖x‖/∂x = xᵀ/‖x‖, so dJ/dx = δ x / ‖x‖, in the
    shape of x."""

    name = "norm2"
    identity = "4"

    def shape(self, x):
        require_float(x)
        if x.rank == 0:
            raise ShapeError("needs at least one axis")
        return TensorType(x.shape[:-1])

    def reference(self, x):
        return np.sqrt(np.sum(x * x, axis=-1))

    def lower(self, b, node):
        return b.apply("sqrt", b.apply("sum", b.apply("square", node.inputs[0]), axis=-1))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            scale = b.apply("reshape", b.div(d, node.output), shape=node.output.shape + (1,))
            return [b.mul(scale, x)]

    def notation(self, p, node, a):
        return Printed(p.sym.norm(a.text))


@register
class Reshape(OpDef):
    """A view with a new shape (same element count, row-major).

    Backward, identity (3): reshaping only relabels elements (∂z/∂x = I in row-major order),
    so dJ/dx = δ reshaped back to the shape of x."""

    name = "reshape"
    attrs = {"shape": ()}
    identity = "3"
    leafy = True
    see_through = True

    def check_attrs(self, inputs, attrs):
        attrs = super().check_attrs(inputs, attrs)
        attrs["shape"] = tuple(attrs["shape"])
        return attrs

    def shape(self, x, shape):
        if numel(x.shape) != numel(shape):
            raise ShapeError(f"cannot reshape {x.shape} to {shape}: element counts differ")
        return TensorType(shape, x.dtype)

    def reference(self, x, shape):
        return x.reshape(shape)

    def kernel(self, k, node):
        return k.flat_copy(node)
    def vjp(self, b, node, d):
        with b.because(node, self.identity):
            return [b.apply("reshape", d, shape=node.inputs[0].shape)]

    def notation(self, p, node, x):
        src, shape = node.inputs[0].shape, tuple(node.attrs["shape"])
        if tuple(d for d in src if d != 1) != tuple(d for d in shape if d != 1):
            return p.call(self.name, [x])
        if len(src) == 1 and len(shape) == 2 and shape[0] == 1:
            return p.transposed(x)                          # a row vector
        return x                        # only axes of 1 added or dropped: the notes do not write it


@register
class Concat(OpDef):
    """Concatenate along the last axis.

    Backward, identity (3) per operand: each element is copied once, so each operand gets its
    own slice of δ."""

    name = "concat"
    arity = None
    identity = "3"

    def shape(self, *xs):
        for x in xs:
            require_float(x)
        first = xs[0]
        if any(x.rank != first.rank or x.rank == 0 or x.shape[:-1] != first.shape[:-1] for x in xs):
            raise ShapeError("operands must share every dim but the last")
        if any(isinstance(x.shape[-1], str) for x in xs):
            raise ShapeError("cannot concatenate along a symbolic dim")
        return TensorType(first.shape[:-1] + (sum(x.shape[-1] for x in xs),))

    def reference(self, *xs):
        return np.concatenate(xs, axis=-1)

    def kernel(self, k, node):
        return k.concat(node)
    def vjp(self, b, node, d):
        out, start = [], 0
        with b.because(node, self.identity):
            for x in node.inputs:
                out.append(b.apply("slice", d, start=start, stop=start + x.shape[-1]))
                start += x.shape[-1]
        return out

    def notation(self, p, node, *xs):
        return Printed("[" + ", ".join(x.text for x in xs) + "]")


@register
class Slice(OpDef):
    """x[..., start:stop].

    Backward, identity (3) on the kept elements: dJ/dx = δ placed back into zeros (a pad)."""

    name = "slice"
    attrs = {"start": 0, "stop": 0}
    public = False
    identity = "3"

    def shape(self, x, start, stop):
        if x.rank == 0 or not (0 <= start < stop <= x.shape[-1]):
            raise ShapeError(f"slice {start}:{stop} is out of range for {x.shape}")
        return TensorType(x.shape[:-1] + (stop - start,), x.dtype)

    def reference(self, x, start, stop):
        return x[..., start:stop]

    def kernel(self, k, node):
        return k.window_copy(node, node.attrs["start"])
    def vjp(self, b, node, d):
        x = node.inputs[0]
        start, stop = node.attrs["start"], node.attrs["stop"]
        with b.because(node, self.identity):
            parts = []
            if start:
                parts.append(b.zeros(x.shape[:-1] + (start,)))
            parts.append(d)
            if stop < x.shape[-1]:
                parts.append(b.zeros(x.shape[:-1] + (x.shape[-1] - stop,)))
            return [b.apply("concat", *parts) if len(parts) > 1 else d]

    def notation(self, p, node, x):
        lead = ":, " * (node.inputs[0].rank - 1)
        return Printed(f"{wrap(x, POSTFIX)}[{lead}{node.attrs['start']}:{node.attrs['stop']}]", POSTFIX)
