"""Python's indexing of a Value (x[1:5], x[:, 0], x[..., :T]) as the IR's slice and reshape nodes.

In: a Value (core/ir.py's; Value.__getitem__ and the spec's subscripts call this) and the
items of the subscript. Out: the Value they select, built through its graph's `apply`. Every
bad item is reported through `fail`, so the spec can point at the item as written.
"""
from __future__ import annotations

from typing import Callable

from graphc.core.errors import ShapeError
from graphc.core.text import operand_text


def _fail(i: int, message: str, hint: str | None = None):
    raise ShapeError(message, hint=hint)


def subscript(x, items: tuple, fail: Callable = _fail):
    """The Value x[items] (each a slice, an int or Ellipsis) as one slice node per sliced axis, then a reshape
    dropping the axes an int picked. `fail(i, message, hint)` reports a bad item i (the spec points
    at it); it must raise."""
    dots = [i for i, e in enumerate(items) if e is Ellipsis]
    if len(dots) > 1:
        fail(dots[1], "a subscript takes one '...'")
    where = list(range(len(items)))
    if dots:
        fill = max(x.rank - (len(items) - 1), 0)
        items = items[:dots[0]] + (slice(None),) * fill + items[dots[0] + 1:]
        where = where[:dots[0]] + [dots[0]] * fill + where[dots[0] + 1:]
    source = f"slice: {operand_text(x)} is {x.graph.format_shape(x.shape)}"     # the value as written
    if len(items) > x.rank:
        fail(0, f"{source}: {len(items)} indices for a value of rank {x.rank}",
             f"at most {x.rank} indices, one per axis")
    dropped = []
    for axis, e in enumerate(items):
        size, i = x.shape[axis], where[axis]
        if isinstance(e, slice) and e == slice(None):
            continue
        if isinstance(e, slice) and isinstance(e.stop, str):    # x[:T], T a symbolic dim: its first T
            if x.graph.dims.get(e.stop, 0) is not None:
                fail(i, f"{source}: slice bound {e.stop!r} is not a symbolic dim of the graph",
                     "a bound is an integer, or a symbolic dim (x[:T])")
            if e.start not in (None, 0) or e.step not in (None, 1):
                fail(i, f"{source}: a slice to the symbolic dim {e.stop} starts at 0 with step 1",
                     f"write x[:{e.stop}]")
            if isinstance(size, str):
                fail(i, f"{source}: cannot slice the batch dim {size}", "slice the other axes: x[:, 1:5]")
            x = x.graph.apply("slice", x, start=0, stop=e.stop, axis=axis - x.rank, step=1)
            continue
        if isinstance(e, slice):
            if any(b is not None and (not isinstance(b, int) or isinstance(b, bool)) for b in (e.start, e.stop, e.step)):
                fail(i, f"{source}: slice bounds are integers")
            if e.step is not None and e.step < 1:
                fail(i, f"{source}: slice step {e.step}: only positive steps are supported",
                     "a reversed axis has no form yet; slice forward (x[:, ::2])")
        elif not isinstance(e, int) or isinstance(e, bool):
            fail(i, f"an index is an int or a slice, got {e!r}")
        if isinstance(size, str):
            kind = "batch" if x.graph.symbolic_dims[:1] == [size] else "run-time"
            fail(i, f"{source}: cannot slice the {kind} dim {size}", "slice the other axes: x[:, 1:5]")
        if isinstance(e, slice):
            start, stop, step = e.indices(size)
            if start >= stop:
                written = ":".join("" if b is None else str(b) for b in (e.start, e.stop)) + \
                    ("" if e.step is None else f":{e.step}")
                fail(i, f"{source}: slice {written} of axis {axis} (size {size}) is empty",
                     f"axis {axis} has indices 0 to {size - 1}")
        else:
            if not -size <= e < size:
                fail(i, f"{source}: index {e} is out of range for axis {axis} (size {size})",
                     f"an index of axis {axis} is from {-size} to {size - 1}")
            start, stop, step = e % size, e % size + 1, 1
            dropped.append(axis)
        if (start, stop, step) != (0, size, 1):
            x = x.graph.apply("slice", x, start=start, stop=stop, axis=axis - x.rank, step=step)
    if dropped:
        x = x.graph.apply("reshape", x, shape=tuple(d for a, d in enumerate(x.shape) if a not in dropped))
    return x
