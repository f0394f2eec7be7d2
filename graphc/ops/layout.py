"""Layout: reshape, concat and slice. They only move elements, so each VJP is identity (3):
δ moved back to where each element came from.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import POSTFIX, Printed, wrap
from graphc.core.opdef import OpDef, numel, register, require_float


@register
class Reshape(OpDef):
    """A view with a new shape (same element count, row-major).

    Backward, identity (3): reshaping only relabels elements (∂z/∂x = I in row-major order),
    so dJ/dx = δ reshaped back to the shape of x."""

    name = "reshape"
    attrs = {"shape": ()}
    tuple_attrs = ("shape",)
    identity = "3"
    leafy = True
    see_through = True

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
