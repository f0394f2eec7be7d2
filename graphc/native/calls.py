"""Repeated calls of generated C functions from Python: argument types, workspaces, CallPlans.

In: arrays that core/arguments.bind has checked. Out: cffi pointers and new output arrays.
A `CallPlan` is what a full check leaves for the C calls: the next call with the same arrays,
or new ones of the same shapes and dtypes, is checked by identity, shape (strides) and dtype
alone; anything else goes back to `bind`.
"""
from __future__ import annotations

import operator
import sys
import weakref
from typing import Any

import numpy as np

from graphc.core.errors import ShapeError
from graphc.native.fastcall import plan_caller

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


RECYCLE_BYTES = 65536     # outputs of a plan up to this size in all may be handed out again (fastcall.py)


class CallPlan:
    """A checked call of one C function, ready to repeat.

    It holds the dims' values (`dims`: the batch size n, then the other run-time dims), the array arguments (the arrays of a recent call with their shape,
    strides and dtype, and their cffi pointers), pointers that never change (`fixed`: a
    TrainState's params and optimizer state), the workspace pointer and the outputs to allocate
    for each call (shape, dtype, cffi type). C takes n, the arrays, the fixed pointers, the
    outputs and the workspace, in that order (the dims first); `run` makes the outputs and calls it.

    `fast(arrays)` is the call itself when `arrays` are the plan's own: the same names, the same
    objects with the same shape, strides and dtype (values changed in place are fine: the
    pointer still points at the data). It returns (status, outputs), or None when anything
    differs (the outputs: new arrays, or small ones of the plan's last two calls that nothing
    else holds any more: see fastcall.py); `fastpos(*arrays)` is the same for the arrays in the
    order of `names`, its outputs as `groups` say. When `fast` answers None, `reuse(arrays)`
    answers with (the plan to keep, the leading C arguments), or None when the call needs the
    checked path (a missing or extra name, a new shape or dtype, an array to copy: not
    C-contiguous or misaligned, or not an ndarray):

    - the same array objects with the same shape, strides and dtype: the plan's own pointers;
    - other arrays of the same shapes and dtypes, C-contiguous and aligned: fresh pointers for
      this call. Arrays that come back a second call in a row become a new plan (so a loop over
      new minibatches pays for no plan it would not reuse).

    A plan holds its arrays, so no other object can take their ids, and a weak reference to each,
    which makes NumPy refuse to resize them in place (a resize would move the data from under
    the pointer) while the plan lives. Its `pending` arrays (the last call's, if new) are only
    compared by identity. Keep a plan to one thread (loaded.py: per thread; training: per state)."""

    __slots__ = ("sig", "dims", "fit", "objs", "meta", "refs", "ptrs", "head", "ws", "outs", "pending",
                 "cfunc", "names", "fast", "fastpos", "out_names", "groups", "fail")

    def __init__(self, ffi, dims: tuple, names, ctypes, objs, ws, outs, fixed=(), cfunc=None, out_names=None,
                 groups=None, fail=None):
        """outs: the outputs' (shapes, dtypes, cffi types); cfunc: the C function (`fast` calls
        it; without it `fast` always answers None); out_names: the outputs' names, for a `fast`
        that returns them as a dict by name (else a tuple, as `run` does); groups: the result of
        `fastpos`, as dicts of (name, output index) pairs (one group: that dict alone; None: as `fast`'s);
        fail(status, arrays): raises the error of a nonzero status for `fastpos` (without it
        `fastpos` always answers None)."""
        get = operator.itemgetter(*names) if len(names) > 1 else (lambda d, k=names[0]: (d[k],))
        # shared by the plans made from this one; ffi.from_buffer bound once, the cffi types
        # resolved once (a type given as a string is parsed, or looked up, on every call)
        self.sig = (ffi.from_buffer, get, len(names), tuple(map(ffi.typeof, ctypes)), tuple(fixed))
        self.dims, self.ws, self.names, self.cfunc = tuple(dims), ws, tuple(names), cfunc
        self.out_names = None if out_names is None else tuple(out_names)
        self.groups = None if groups is None else tuple(tuple(map(tuple, g)) for g in groups)
        self.fail = fail
        shapes, dtypes, out_types = outs
        self.outs = (tuple(map(tuple, shapes)), tuple(map(np.dtype, dtypes)), tuple(map(ffi.typeof, out_types)))
        self.fit = [(np.ndarray, a.shape, a.dtype, True, True) for a in objs]    # what other arrays must be
        self._bind(objs)

    def _bind(self, objs, ptrs=None):
        from_buffer, _, _, ctypes, fixed = self.sig
        self.objs, self.meta, self.refs = tuple(objs), list(map(_META, objs)), list(map(weakref.ref, objs))
        self.ptrs = ptrs if ptrs is not None else [from_buffer(t, a, require_writable=False)
                                                   for t, a in zip(ctypes, objs)]
        self.head, self.pending = (*self.dims, *self.ptrs, *fixed), None
        if self.cfunc is None:
            self.fast = self.fastpos = _never
        else:
            meta, (shapes, dtypes, _), groups = self.meta, self.outs, self.groups
            small = 0 < sum(int(np.prod(s)) * d.itemsize for s, d in zip(shapes, dtypes)) <= RECYCLE_BYTES
            layout = None if groups is None else tuple(tuple(i for _, i in g) for g in groups)
            names = None if groups is None else tuple(tuple(k for k, _ in g) for g in groups)
            self.fast, self.fastpos = plan_caller(len(objs), len(shapes), self.out_names is not None, layout, names,
                                                  tuple(m[0] for m in meta))(
                self.cfunc, self.head, self.ws, self.names, self.objs, [m[0] for m in meta], [m[1] for m in meta],
                [m[2] for m in meta], *self.outs, from_buffer, np.empty, small, sys.getrefcount,
                weakref.getweakrefcount, self.out_names, self.fail)
            if self.fail is None:
                self.fastpos = _never

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
            new.outs, new.names, new.cfunc, new.out_names = self.outs, self.names, self.cfunc, self.out_names
            new.groups, new.fail = self.groups, self.fail
            new._bind(objs, ptrs)
            return new, new.head
        self.pending = objs
        return self, (*self.dims, *ptrs, *fixed)

    def run(self, cfunc, head: tuple) -> tuple[int, tuple[np.ndarray, ...]]:
        """Call cfunc(*head, outputs..., workspace) with new output arrays: (status, outputs)."""
        from_buffer = self.sig[0]
        shapes, dtypes, ctypes = self.outs
        outs = tuple(map(np.empty, shapes, dtypes))
        return cfunc(*head, *map(from_buffer, ctypes, outs), self.ws), outs


def _never(*arrays) -> None:
    """The `fast` and `fastpos` of a plan without its C function: never the same call."""
    return None
