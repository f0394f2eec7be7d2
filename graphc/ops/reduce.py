"""Reductions: sum and mean over all elements or an axis, sum_to (the undo of broadcasting)
and size (the count a mean divides by). Their VJPs are identity (3): δ broadcast back.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import MUL, Printed
from graphc.core.opdef import OpDef, broadcast_shapes, norm_axis, register, require_float


def reduced_axes(rank, axis) -> tuple[int, ...]:
    """The axes a reduction sums over: all for None, one int or a tuple of them (each in range)."""
    if axis is None:
        return tuple(range(rank))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = tuple(sorted({norm_axis(a, rank, "sum") for a in axes}))
    if len(out) != len(axes):
        raise ShapeError(f"axis {axis!r} names an axis twice")
    return out


def reduced_shape(shape, axis, keepdims):
    axes = reduced_axes(len(shape), axis)
    if keepdims:
        return tuple(1 if a in axes else d for a, d in enumerate(shape))
    return tuple(d for a, d in enumerate(shape) if a not in axes)


@register
class Sum(OpDef):
    """Σ x over all elements, or along one axis or a tuple of axes.

    Backward, identity (3): each summed element passes δ through unchanged, so dJ/dx = δ
    broadcast back over the summed axes, in the shape of x."""

    name = "sum"
    attrs = {"axis": None, "keepdims": False}
    identity = "3"

    def check_attrs(self, inputs, attrs):
        out = OpDef.check_attrs(self, inputs, attrs)
        if isinstance(out["axis"], list):       # a list from the builder: hashable, as the spec's tuple
            out["axis"] = tuple(out["axis"])
        return out

    def shape(self, x, axis, keepdims):
        require_float(x)
        return TensorType(reduced_shape(x.shape, axis, keepdims))

    def reference(self, x, axis, keepdims):
        return np.sum(x, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims)

    def kernel(self, k, node):
        x, axis = node.inputs[0], node.attrs["axis"]
        return k.reduce(node, reduced_shape(x.shape, axis, True))
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
        axes = reduced_axes(x.rank, axis)
        if x.rank == 2 and len(axes) == 1:
            return "rows" if axes[0] == 0 else "cols"
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

    check_attrs = Sum.check_attrs

    shape = Sum.shape

    def reference(self, x, axis, keepdims):
        return np.mean(x, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims)

    def _count(self, b, x, axis):
        return b.apply("size", x, axes=reduced_axes(x.rank, axis))

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
class Max(OpDef):
    """The largest element of x, over all elements, one axis or a tuple of axes.

    Backward, identity (4): ∂max/∂x is 1 at the largest element and 0 elsewhere, so dJ/dx = δ
    (broadcast back) ∘ [x = max], in the shape of x (every tie gets δ)."""

    name = "max"
    attrs = {"axis": None, "keepdims": False}
    identity = "4"

    check_attrs = Sum.check_attrs
    shape = Sum.shape

    def reference(self, x, axis, keepdims):
        return np.max(x, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims)

    def kernel(self, k, node):
        x = node.inputs[0]
        return k.reduce_max(node, reduced_shape(x.shape, node.attrs["axis"], True))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        keep = reduced_shape(x.shape, node.attrs["axis"], True)
        with b.because(node, self.identity):
            at_max = b.apply("equal", x, b.apply("reshape", node.output, shape=keep))
            return [b.mul(b.apply("reshape", d, shape=keep), at_max)]


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
        if x.rank >= 2 and shape in ((x.shape[-1],), (1,) * (x.rank - 1) + (x.shape[-1],)):
            return "rows"           # every row of a [.., D] (the B·T rows of a [B, T, D] too)
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
    tuple_attrs = ("axes",)
    public = False
    static = True
    leafy = True

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
