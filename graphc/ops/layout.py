"""Layout: reshape, flatten, permute, concat, pad and slice (and its adjoint, unslice). They only move elements, so each VJP is identity (3):
δ moved back to where each element came from.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import POSTFIX, Printed, wrap
from graphc.core.opdef import OpDef, norm_axis, numel, register, require_float
from graphc.core.text import ATOM
from graphc.ops.linear import swaps_last_two


def resolve_shape(src, shape, actual=None):
    """`shape` with its one -1 replaced by what makes the element count that of `src` (PyTorch's
    and NumPy's reshape). `actual`: the array's real shape, when a symbolic dim has a size."""
    if list(shape).count(-1) > 1:
        raise ShapeError(f"reshape to {shape}: only one dim may be -1")
    if any(isinstance(d, int) and d < -1 or d == 0 for d in shape):
        raise ShapeError(f"reshape to {shape}: dims are positive (or one -1)")
    if -1 in shape:
        c, syms = numel(actual if actual is not None else src)
        kc, ksyms = numel(tuple(d for d in shape if d != -1))
        if actual is not None:   # the reference: every dim has its size
            ksyms = ()
            kc = int(np.prod([d if isinstance(d, int) else dict(zip(src, actual)).get(d, 1)
                              for d in shape if d != -1]))
        if ksyms != syms or c % kc:
            raise ShapeError(f"cannot reshape {src} to {shape}: no size of -1 keeps the element count",
                             hint="the batch dim must be kept by name, e.g. (N, -1)")
        shape = tuple(c // kc if d == -1 else d for d in shape)
    elif numel(src) != numel(shape):
        raise ShapeError(f"cannot reshape {src} to {shape}: element counts differ")
    return shape


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
        return TensorType(resolve_shape(x.shape, tuple(shape)), x.dtype)

    def reference(self, x, shape):
        return x.reshape(resolve_shape(x.shape, tuple(shape), x.shape))

    def kernel(self, k, node):
        return k.flat_copy(node)
    def vjp(self, b, node, d):
        with b.because(node, self.identity):
            return [b.apply("reshape", d, shape=node.inputs[0].shape)]

    def notation(self, p, node, x):
        src, shape = node.inputs[0].shape, node.output.shape
        if tuple(d for d in src if d != 1) != tuple(d for d in shape if d != 1):
            return p.call(self.name, [x])
        if len(src) == 1 and len(shape) == 2 and shape[0] == 1:
            return p.transposed(x)                          # a row vector
        return x                        # only axes of 1 added or dropped: the notes do not write it


@register
class Concat(OpDef):
    """Concatenate along `axis` (default the last).

    Backward, identity (3) per operand: each element is copied once, so each operand gets its
    own slice of δ."""

    name = "concat"
    arity = None
    attrs = {"axis": -1}
    identity = "3"

    def shape(self, *xs, axis):
        for x in xs:
            require_float(x)
        first = xs[0]
        if first.rank == 0:
            raise ShapeError("cannot concatenate scalars")
        ax = norm_axis(axis, first.rank, "concat")
        rest = lambda t: t.shape[:ax] + t.shape[ax + 1:]  # noqa: E731
        odd = next((x for x in xs if x.rank != first.rank or rest(x) != rest(first)), None)
        if odd is not None:
            dims = lambda shape: "(" + ", ".join(map(str, shape)) + ")"  # noqa: E731
            want = dims(first.shape[:ax] + ("*",) + first.shape[ax + 1:])
            raise ShapeError(f"operands must share every dim but axis {axis}: {dims(odd.shape)} does not fit {want}",
                             hint=f"concat joins along axis {axis} only; reshape or slice the operand to "
                                  f"rank {first.rank} with the other dims equal")
        if any(isinstance(x.shape[ax], str) for x in xs):
            raise ShapeError("cannot concatenate along a symbolic dim")
        return TensorType(first.shape[:ax] + (sum(x.shape[ax] for x in xs),) + first.shape[ax + 1:])

    def reference(self, *xs, axis):
        return np.concatenate(xs, axis=axis)

    def kernel(self, k, node):
        return k.concat(node, norm_axis(node.attrs["axis"], node.output.rank, self.name))

    def vjp(self, b, node, d):
        out, start = [], 0
        ax = norm_axis(node.attrs["axis"], d.rank, self.name)
        with b.because(node, self.identity):
            for x in node.inputs:
                out.append(b.apply("slice", d, start=start, stop=start + x.shape[ax], axis=ax - d.rank))
                start += x.shape[ax]
        return out

    def notation(self, p, node, *xs):
        return Printed("[" + ", ".join(x.text for x in xs) + "]")


def _subscript(rank: int, axis: int, start: int, stop: int, step: int) -> str:
    """x[:, 1:5] or x[..., 0:6:2, :]: the subscript the spec writes for a slice along axis (< 0)."""
    body = f"{start}:{stop}" + (f":{step}" if step != 1 else "")
    lead = rank + axis
    if lead <= 2:
        return "[" + ":, " * lead + body + "]"
    return "[..., " + body + ", :" * (-axis - 1) + "]"


@register
class Slice(OpDef):
    """x[..., start:stop:step] along one axis (`axis` < 0, counted from the end); the spec's
    subscripts (x[:, 1:5], x[..., ::2], x[:, 0]) are slices, then a reshape for an int index.

    Backward, identity (3) on the kept elements: dJ/dx = δ placed back into zeros (unslice)."""

    name = "slice"
    attrs = {"start": 0, "stop": 0, "axis": -1, "step": 1}
    public = False
    identity = "3"

    def shape(self, x, start, stop, axis, step):
        ax = norm_axis(axis, x.rank, self.name) if x.rank else 0
        n = x.shape[ax] if x.rank else 0
        if isinstance(stop, str) and x.rank and not isinstance(n, str) and start == 0 and step == 1:
            # x[:T] with T a symbolic dim: its first T elements (wpe[:T], the positions of a
            # sequence of run-time length T); T <= n is checked at every call (dim_bounds)
            return TensorType(x.shape[:ax] + (stop,) + x.shape[ax + 1:], x.dtype)
        if x.rank == 0 or isinstance(n, str) or isinstance(stop, str) or not (0 <= start < stop <= n) or step < 1:
            raise ShapeError(f"slice {start}:{stop}:{step} is out of range for {x.shape} (axis {axis})",
                             hint="a symbolic bound slices from the start: x[:T]" if isinstance(stop, str) else None)
        return TensorType(x.shape[:ax] + (len(range(start, stop, step)),) + x.shape[ax + 1:], x.dtype)

    def reference(self, x, start, stop, axis, step):
        if stop > x.shape[axis]:                # a symbolic bound, given its size at this call
            raise ShapeError(f"slice {start}:{stop} of an axis of {x.shape[axis]}: the bound is past its end")
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop, step)
        return x[tuple(index)]

    def dim_bounds(self, node):
        a, x = node.attrs, node.inputs[0]
        return [(a["stop"], x.shape[a["axis"]])] if isinstance(a["stop"], str) else []

    def kernel(self, k, node):
        a = node.attrs
        return k.window_copy(node, norm_axis(a["axis"], node.output.rank, self.name), a["start"], a["step"])

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            return [b.apply("unslice", d, size=x.shape[node.attrs["axis"]], **node.attrs)]

    def spec_text(self, node, arg):
        a = node.attrs
        return arg(node.inputs[0], ATOM) + _subscript(node.inputs[0].rank, a["axis"], a["start"], a["stop"],
                                                      a["step"]), ATOM

    def notation(self, p, node, x):
        a = node.attrs
        return Printed(wrap(x, POSTFIX) + _subscript(node.inputs[0].rank, a["axis"], a["start"], a["stop"],
                                                     a["step"]), POSTFIX)


@register
class Unslice(OpDef):
    """The adjoint of a slice: x placed at start:stop:step along `axis` of zeros of that axis' `size`.

    Backward, identity (3): each element of x is copied once, so dJ/dx = δ sliced back."""

    name = "unslice"
    attrs = {"size": 1, "start": 0, "stop": 0, "axis": -1, "step": 1}
    public = False
    identity = "3"

    def shape(self, x, size, start, stop, axis, step):
        ax = norm_axis(axis, x.rank, self.name)
        if isinstance(stop, str):               # the adjoint of x[:T]: T symbolic, at most size
            if x.shape[ax] != stop or start != 0 or step != 1:
                raise ShapeError(f"cannot place {x.shape} at {start}:{stop}:{step} of an axis of {size}")
            return TensorType(x.shape[:ax] + (size,) + x.shape[ax + 1:], x.dtype)
        if x.shape[ax] != len(range(start, stop, step)) or stop > size:
            raise ShapeError(f"cannot place {x.shape} at {start}:{stop}:{step} of an axis of {size}")
        return TensorType(x.shape[:ax] + (size,) + x.shape[ax + 1:], x.dtype)

    def reference(self, x, size, start, stop, axis, step):
        ax = axis % x.ndim
        out = np.zeros(x.shape[:ax] + (size,) + x.shape[ax + 1:])
        index = [slice(None)] * x.ndim
        index[ax] = slice(start, stop, step)
        out[tuple(index)] = x
        return out

    def kernel(self, k, node):
        a = node.attrs
        return k.window_place(node, norm_axis(a["axis"], node.output.rank, self.name), a["start"], a["step"])

    def vjp(self, b, node, d):
        a = dict(node.attrs)
        del a["size"]
        with b.because(node, self.identity):
            return [b.apply("slice", d, **a)]

    def notation(self, p, node, x):
        return p.call("unslice", [x])


def _pads(rank: int, pad) -> list[tuple[int, int, int]]:
    """torch's pad tuple (last axis first: left, right, then the axis before...) as (axis, before, after)."""
    if isinstance(pad, int) or len(pad) % 2 or len(pad) // 2 > rank or \
            any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pad):
        raise ShapeError(f"pad {pad!r} must be pairs of counts >= 0, (before, after) of the last axis first, "
                         f"for at most {rank} axes", hint="e.g. pad(x, (1, 1, 2, 2)) pads W by 1 and H by 2")
    return [(rank - 1 - i, pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]


@register
class Pad(OpDef):
    """pad(x, pad, value=0.0): x surrounded by `value`, torch.nn.functional.pad's constant mode:
    `pad` = (before, after) of the last axis, then of the axis before, and so on.

    Backward, identity (3): the elements of x are copied once, so dJ/dx = δ sliced back to x."""

    name = "pad"
    attrs = {"pad": (), "value": 0.0}
    tuple_attrs = ("pad",)
    identity = "3"

    def shape(self, x, pad, value):
        require_float(x)
        shape = list(x.shape)
        for axis, before, after in _pads(x.rank, pad):
            if (before or after) and isinstance(shape[axis], str):
                raise ShapeError(f"cannot pad the batch dim {shape[axis]}")
            shape[axis] = shape[axis] + before + after if before or after else shape[axis]
        return TensorType(tuple(shape), x.dtype)

    def reference(self, x, pad, value):
        widths = [(0, 0)] * x.ndim
        for axis, before, after in _pads(x.ndim, pad):
            widths[axis] = (before, after)
        return np.pad(x, widths, constant_values=value)

    def lower(self, b, node):
        x, value = node.inputs[0], float(node.attrs["value"])
        y = b.sub(x, value) if value else x
        for axis, before, after in _pads(x.rank, node.attrs["pad"]):
            if before or after:
                n = y.shape[axis]
                y = b.apply("unslice", y, size=n + before + after, start=before, stop=before + n, axis=axis - x.rank)
        return b.add(y, value) if value else y

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            for axis, before, after in _pads(x.rank, node.attrs["pad"]):
                if before or after:
                    d = b.apply("slice", d, start=before, stop=before + x.shape[axis], axis=axis - x.rank)
            return [d]


@register
class Permute(OpDef):
    """permute(x, axes): x with its axes reordered (torch.permute; np.transpose(x, axes)).

    Backward, identity (3) up to the layout: elements only move, so dJ/dx = δ permuted back by
    the inverse order, in the shape of x."""

    name = "permute"
    attrs = {"axes": ()}
    tuple_attrs = ("axes",)
    identity = "3"

    def shape(self, x, axes):
        ok = all(isinstance(a, int) and -x.rank <= a < x.rank for a in axes)
        if not ok or sorted(a % x.rank for a in axes) != list(range(x.rank)):
            raise ShapeError(f"axes {tuple(axes)} are not an order of the {x.rank} axes of {x.shape}",
                             hint=f"e.g. permute(x, {tuple(reversed(range(x.rank)))})")
        return TensorType(tuple(x.shape[a] for a in axes), x.dtype)

    def reference(self, x, axes):
        return np.transpose(x, axes)

    def kernel(self, k, node):
        return k.permuted_copy(node, tuple(a % node.output.rank for a in node.attrs["axes"]))

    def vjp(self, b, node, d):
        axes = [a % d.rank for a in node.attrs["axes"]]
        with b.because(node, self.identity):
            return [b.apply("permute", d, axes=tuple(axes.index(i) for i in range(d.rank)))]

    def notation(self, p, node, x):
        if swaps_last_two(node.attrs["axes"]):      # kᵀ of each batch element (attention's q kᵀ)
            return p.transposed(x)
        return super().notation(p, node, x)


@register
class Flatten(OpDef):
    """flatten(x, start_dim=1, end_dim=-1): the axes start_dim..end_dim merged into one (row-major).

    Backward, identity (3): a flatten only relabels elements, so dJ/dx = δ reshaped to x."""

    name = "flatten"
    attrs = {"start_dim": 1, "end_dim": -1}
    identity = "3"

    def shape(self, x, start_dim, end_dim):
        if x.rank == 0:
            return TensorType((1,), x.dtype)
        s, e = norm_axis(start_dim, x.rank, self.name), norm_axis(end_dim, x.rank, self.name)
        if s > e:
            raise ShapeError(f"start_dim {start_dim} comes after end_dim {end_dim} for rank {x.rank}")
        merged = x.shape[s:e + 1]
        if len(merged) > 1 and any(isinstance(d, str) for d in merged):
            raise ShapeError(f"cannot merge the batch dim with others: flatten of {x.shape} from {start_dim}",
                             hint="keep the batch dim out: flatten(x, start_dim=1)")
        size = merged[0] if len(merged) == 1 else int(np.prod(merged))
        return TensorType(x.shape[:s] + (size,) + x.shape[e + 1:], x.dtype)

    def reference(self, x, start_dim, end_dim):
        return x.reshape(tuple(self.shape(TensorType(x.shape), start_dim, end_dim).shape))

    def kernel(self, k, node):
        return k.flat_copy(node)

    def vjp(self, b, node, d):
        with b.because(node, self.identity):
            return [b.apply("reshape", d, shape=node.inputs[0].shape)]
