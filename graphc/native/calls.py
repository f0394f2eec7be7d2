"""Repeated calls of generated C functions from Python: argument types, workspaces, CallPlans.

In: arrays that core/arguments.bind has checked. Out: cffi pointers and new output arrays.
A `CallPlan` is what a full check leaves for the C calls: the next call with the same arrays,
or new ones of the same shapes and dtypes, is checked by identity, shape, strides and dtype
alone; anything else goes back to `bind`.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any

import numpy as np

from graphc.core.errors import ShapeError

ALIGN = 64


def aligned_empty(nbytes: int) -> np.ndarray:
    """A uint8 array of nbytes whose data starts on a 64-byte boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


def allocate_workspace(model_name: str, size: int, n) -> np.ndarray:
    """aligned_empty(size), or a ShapeError naming the bytes and the batch size (or the dims' sizes,
    `n` a tuple) when it cannot be had."""
    try:
        return aligned_empty(size)
    except MemoryError:
        raise ShapeError(f"{model_name}: the workspace for {describe_dims(n)} needs {size} bytes "
                         f"({size / 2**30:,.1f} GiB), more memory than this process can allocate",
                         hint="use a smaller batch size (the workspace grows with it) or smaller dims") from None


def as_c_array(name: str, arr: np.ndarray) -> np.ndarray:
    """Zero-copy when C-contiguous and aligned; otherwise one contiguous copy."""
    if arr.flags.c_contiguous and arr.flags.aligned:
        return arr
    return np.require(arr, requirements=("C", "A"))


def batch_rows(graph, dims: dict[str, int]) -> int:
    """The batch size of a call of a C function of `graph`: the value `bind` found for the
    graph's first symbolic dim (1 when it has none, or when none of the function's arguments
    and outputs has it: predict of outputs of the params alone, such as norm2(W), reads no
    row). ShapeError when no argument sets it or it is below 1."""
    sym = graph.symbolic_dims
    if not sym:
        return 1
    n = dims.get(sym[0])
    if n is None:
        if not any(sym[0] in v.shape for v in (*graph.inputs.values(), *graph.params.values(),
                                                *graph.outputs.values())):
            return 1
        raise ShapeError(f"the batch dim {sym[0]} is not set by any argument")
    if n < 1:
        raise ShapeError(f"batch size {sym[0]}={n}: graphc functions need at least one row",
                         hint="skip the call for an empty batch")
    return n


def dim_values(graph, dims: dict[str, int]) -> tuple[int, ...]:
    """The values a C function of `graph` takes for its symbolic dims, in their order (n, then the
    other run-time dims, codegen.c_dims): the batch by batch_rows, each other dim as `bind` found
    it (1 when no argument or output of the graph has it). ShapeError when an argument's
    dim is below 1 or the graph has the dim and no argument sets it."""
    sym = graph.symbolic_dims
    out = [batch_rows(graph, dims)]
    for d in sym[1:]:
        value = dims.get(d)
        if value is None:
            if any(d in v.shape for v in (*graph.inputs.values(), *graph.outputs.values())):
                raise ShapeError(f"the run-time dim {d} is not set by any argument")
            value = 1
        if value < 1:
            raise ShapeError(f"run-time dim {d}={value}: graphc functions need at least 1",
                             hint=f"every argument with {d} in its shape needs {d} >= 1")
        out.append(value)
    return tuple(out)


def describe_dims(values, graph=None) -> str:
    """'batch size 4', or with several run-time dims 'N=4, T=7' (the graph's names) or '(4, 7)'."""
    if isinstance(values, int) or len(values) == 1:
        return f"batch size {values if isinstance(values, int) else values[0]}"
    if graph is not None:
        return ", ".join(f"{d}={v}" for d, v in zip(graph.symbolic_dims, values))
    return f"run-time dims {tuple(values)}"


def shape_at(shape, graph, values: tuple) -> tuple:
    """A shape with each symbolic dim replaced by its value (dim_values' order)."""
    at = dict(zip(graph.symbolic_dims, values))
    return tuple(at.get(d, values[0]) if isinstance(d, str) else d for d in shape)


def picker(pairs: list[tuple[str, int]]):
    """A function outs -> {name: outs[i] for name, i in pairs}; for one or two names a dict display,
    four times faster than the comprehension (this runs on every call)."""
    if len(pairs) == 1:
        (k, i), = pairs
        return lambda outs: {k: outs[i]}
    if len(pairs) == 2:
        (k, i), (k2, i2) = pairs
        return lambda outs: {k: outs[i], k2: outs[i2]}
    return lambda outs: {k: outs[i] for k, i in pairs}


_META = operator.attrgetter("shape", "strides", "dtype")
_FIT = operator.attrgetter("__class__", "shape", "dtype", "flags.c_contiguous", "flags.aligned")


def c_array_type(real: str, dtype: np.dtype) -> str:
    """The cffi type a C function takes an array of `dtype` as (real is "float" or "double")."""
    return {"int32": "int32_t[]", "int64": "int64_t[]"}.get(dtype.name, f"{real}[]")


def output_specs(real: str, specs) -> tuple[list, list, list]:
    """(shapes, dtypes, cffi types) of outputs given as (shape, dtype) pairs."""
    return [s for s, _ in specs], [d for _, d in specs], [c_array_type(real, d) for _, d in specs]


class CallPlan:
    """A checked call of one C function, ready to repeat.

    It holds the dims' values (`dims`: the batch size n, then the other run-time dims), the array arguments (the arrays of a recent call with their shape,
    strides and dtype, and their cffi pointers), pointers that never change (`fixed`: a
    TrainState's params and optimizer state), the workspace pointer and the outputs to allocate
    for each call (shape, dtype, cffi type). C takes n, the arrays, the fixed pointers, the
    outputs and the workspace, in that order (the dims first); `run` makes the outputs and calls it.

    `reuse(arrays)` answers the next call with (the plan to keep, the leading C arguments), or
    None when the call needs the checked path (a missing or extra name, a new shape or dtype, an
    array to copy: not C-contiguous or misaligned, or not an ndarray):

    - the same array objects with the same shape, strides and dtype: the plan's own pointers
      (values changed in place are fine: the pointer still points at the data);
    - other arrays of the same shapes and dtypes, C-contiguous and aligned: fresh pointers for
      this call. Arrays that come back a second call in a row become a new plan (so a loop over
      new minibatches pays for no plan it would not reuse).

    A plan holds its arrays, so no other object can take their ids, and a weak reference to each,
    which makes NumPy refuse to resize them in place (a resize would move the data from under
    the pointer) while the plan lives. Its `pending` arrays (the last call's, if new) are only
    compared by identity. Keep a plan to one thread (runtime: per thread; training: per state)."""

    __slots__ = ("sig", "dims", "fit", "objs", "meta", "refs", "ptrs", "head", "ws", "outs", "single", "pending")

    def __init__(self, ffi, dims: tuple, names, ctypes, objs, ws, outs, fixed=()):
        get = operator.itemgetter(*names) if len(names) > 1 else (lambda d, k=names[0]: (d[k],))
        # shared by the plans made from this one; ffi.from_buffer bound once (a lookup fewer per call)
        self.sig = (ffi.from_buffer, get, len(names), tuple(ctypes), tuple(fixed))
        self.dims, self.ws, self.outs = tuple(dims), ws, outs      # outs: (shapes, dtypes, cffi types)
        self.single = tuple(x[0] for x in outs) if len(outs[0]) == 1 else None
        self.fit = [(np.ndarray, a.shape, a.dtype, True, True) for a in objs]    # what other arrays must be
        self._bind(objs)

    def _bind(self, objs, ptrs=None):
        from_buffer, _, _, ctypes, fixed = self.sig
        self.objs, self.meta, self.refs = tuple(objs), list(map(_META, objs)), list(map(weakref.ref, objs))
        self.ptrs = ptrs if ptrs is not None else [from_buffer(t, a, require_writable=False)
                                                   for t, a in zip(ctypes, objs)]
        self.head, self.pending = (*self.dims, *self.ptrs, *fixed), None

    def reuse(self, arrays: dict[str, Any]) -> "tuple[CallPlan, tuple] | None":
        from_buffer, get, count, ctypes, fixed = self.sig
        if len(arrays) != count:
            return None
        try:
            objs = get(arrays)
        except KeyError:
            return None
        if all(map(operator.is_, objs, self.objs)) and list(map(_META, objs)) == self.meta:
            return self, self.head
        # some arrays are new (or changed in place): all must be what the checked path passes on as is
        try:
            if list(map(_FIT, objs)) != self.fit:
                return None
            ptrs = list(map(from_buffer, ctypes, objs))
        except (AttributeError, ValueError, BufferError):      # not an array; no plain buffer
            return None
        pending = self.pending
        if pending is not None and all(map(operator.is_, objs, pending)):
            new = object.__new__(CallPlan)      # the second call in a row with these arrays: keep them
            new.sig, new.dims, new.ws, new.fit = self.sig, self.dims, self.ws, self.fit
            new.outs, new.single = self.outs, self.single
            new._bind(objs, ptrs)
            return new, new.head
        self.pending = objs
        return self, (*self.dims, *ptrs, *fixed)

    def run(self, cfunc, head: tuple) -> tuple[int, list[np.ndarray]]:
        """Call cfunc(*head, outputs..., workspace) with new output arrays: (status, outputs)."""
        from_buffer = self.sig[0]
        if self.single is not None:          # the common case, a third faster than the general one
            shape, dtype, ctype = self.single
            out = np.empty(shape, dtype)
            return cfunc(*head, from_buffer(ctype, out), self.ws), [out]
        shapes, dtypes, ctypes = self.outs
        outs = list(map(np.empty, shapes, dtypes))
        return cfunc(*head, *map(from_buffer, ctypes, outs), self.ws), outs
