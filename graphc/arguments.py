"""Checking named arrays against a graph's inputs and params, shared by the
NumPy reference and the compiled runtime.

In: a mapping of names to array-likes. Out: arrays of the right dtype and the
value of each symbolic dim. Never guesses: a misfit raises naming the argument.

`bind` is the full check. A `CallPlan` is what a full check leaves for the C
calls: the next call with the same arrays, or new ones of the same shapes and
dtypes, is checked by identity, shape, strides and dtype alone; anything else
goes back to `bind`.
"""
from __future__ import annotations

import difflib
import operator
import weakref
from typing import Any, Mapping

import numpy as np

from graphc.errors import ArgumentError, DTypeError, ShapeError
from graphc.ir import INT, Graph, Value


def expected_shape(graph: Graph, v: Value) -> str:
    return graph.format_shape(v.shape)


def convert(name: str, a: Any, want: np.dtype) -> np.ndarray:
    """Safe casts are made (lists, ints to floats, float32 to float64); unsafe ones raise."""
    try:
        arr = np.asarray(a)
    except ValueError:   # a ragged nested list: NumPy's own message names no argument
        raise ShapeError(f"argument {name!r} is not a rectangular array (rows of different lengths?)",
                         hint="pass a NumPy array or equal-length nested lists") from None
    if arr.dtype == want:
        return arr
    if want.kind == "i":
        if arr.dtype.kind in "iu" and (arr.size == 0 or (arr.min() >= np.iinfo(want).min and arr.max() <= np.iinfo(want).max)):
            return arr.astype(want)
        raise DTypeError(f"argument {name!r} must hold integer labels/ids (int32), got {arr.dtype}",
                         hint="pass an integer array, e.g. y.astype(np.int32)")
    if arr.dtype.kind in "iub" or np.can_cast(arr.dtype, want, casting="same_kind"):
        if arr.dtype.kind == "f" and arr.dtype.itemsize > want.itemsize:
            raise DTypeError(f"argument {name!r} is {arr.dtype} but the model computes in {want}; "
                             "a silent downcast would lose precision",
                             hint=f"cast it yourself with .astype(np.{want}) or compile with dtype='{arr.dtype}'")
        return arr.astype(want)
    raise DTypeError(f"argument {name!r} has dtype {arr.dtype}, expected {want}")


def param_arrays(graph: Graph, params: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """Every param of `graph` from `params` (name -> array-like), in graph order, each checked to be
    given, known, of its declared shape and of real numbers; `where` names the caller in messages."""
    if not isinstance(params, Mapping):
        raise ArgumentError(f"{where} takes a dict of parameter arrays, got {type(params).__name__}",
                            hint="e.g. graphc.init_params(graph, seed=0), or state.params")
    extra = [k for k in params if k not in graph.params]
    if extra:
        raise ArgumentError(f"{where}: {extra[0]!r} is not a param of {graph.name}",
                            hint=f"the params are {', '.join(graph.params)}")
    missing = [k for k in graph.params if k not in params]
    if missing:
        raise ArgumentError(f"{where}: param {missing[0]!r} (shape {expected_shape(graph, graph.params[missing[0]])}) "
                            "is missing", hint="graphc.init_params(graph) makes them all")
    out = {}
    for k, v in graph.params.items():
        arr = np.asarray(params[k])
        if arr.dtype.kind not in "fiub":
            raise DTypeError(f"{where}: param {k!r} has dtype {arr.dtype}, expected real numbers")
        if arr.shape != tuple(v.shape):
            raise ShapeError(f"{where}: param {k!r} has shape {arr.shape}, expected {expected_shape(graph, v)}")
        out[k] = arr
    return out


def bind(graph: Graph, arrays: Mapping[str, Any], real: np.dtype, *, need_params: bool = True,
         skip: frozenset = frozenset()) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Check and convert arguments; return (arrays by name, symbolic dim -> size)."""
    wanted = dict(graph.inputs)
    if need_params:
        wanted.update(graph.params)
    for k in skip:
        wanted.pop(k, None)
    extra = [k for k in arrays if k not in wanted]
    if extra:
        close = difflib.get_close_matches(extra[0], list(wanted), n=1)
        raise ArgumentError(f"unexpected argument {extra[0]!r}; {graph.name} takes {', '.join(wanted)}",
                            hint=f"did you mean {close[0]!r}?" if close else None)
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise ArgumentError(f"missing argument {missing[0]!r} (shape {expected_shape(graph, wanted[missing[0]])})",
                            hint=f"{graph.name} takes {', '.join(wanted)}")
    out: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    where: dict[str, str] = {}
    for name, v in wanted.items():
        arr = convert(name, arrays[name], np.dtype(np.int32) if v.dtype == INT else real)
        if arr.ndim != len(v.shape):
            raise ShapeError(f"argument {name!r} has shape {arr.shape}, expected {expected_shape(graph, v)}")
        for axis, (d, n) in enumerate(zip(v.shape, arr.shape)):
            if isinstance(d, str):
                if d in dims and dims[d] != n:
                    raise ShapeError(f"argument {name!r} has {d}={n} on axis {axis}, but {where[d]} has {d}={dims[d]}",
                                     hint=f"every argument must agree on the batch dim {d}")
                dims.setdefault(d, n)
                where.setdefault(d, repr(name))
            elif d != n:
                raise ShapeError(f"argument {name!r} has shape {arr.shape}, expected {expected_shape(graph, v)}")
        out[name] = arr
    return out, dims


# ---------------------------------------------------------------- repeated calls to C
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

    It holds the batch size n, the array arguments (the arrays of a recent call with their shape,
    strides and dtype, and their cffi pointers), pointers that never change (`fixed`: a
    TrainState's params and optimizer state), the workspace pointer and the outputs to allocate
    for each call (shape, dtype, cffi type). C takes n, the arrays, the fixed pointers, the
    outputs and the workspace, in that order; `run` makes the outputs and calls it.

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

    __slots__ = ("sig", "n", "fit", "objs", "meta", "refs", "ptrs", "head", "ws", "outs", "single", "pending")

    def __init__(self, ffi, n: int, names, ctypes, objs, ws, outs, fixed=()):
        get = operator.itemgetter(*names) if len(names) > 1 else (lambda d, k=names[0]: (d[k],))
        self.sig = (ffi, get, len(names), tuple(ctypes), tuple(fixed))     # shared by the plans made from this one
        self.n, self.ws, self.outs = n, ws, outs           # outs: (shapes, dtypes, cffi types)
        self.single = tuple(x[0] for x in outs) if len(outs[0]) == 1 else None
        self.fit = [(np.ndarray, a.shape, a.dtype, True, True) for a in objs]    # what other arrays must be
        self._bind(objs)

    def _bind(self, objs, ptrs=None):
        ffi, _, _, ctypes, fixed = self.sig
        self.objs, self.meta, self.refs = tuple(objs), list(map(_META, objs)), list(map(weakref.ref, objs))
        self.ptrs = ptrs if ptrs is not None else [ffi.from_buffer(t, a, require_writable=False)
                                                   for t, a in zip(ctypes, objs)]
        self.head, self.pending = (self.n, *self.ptrs, *fixed), None

    def reuse(self, arrays: dict[str, Any]) -> "tuple[CallPlan, tuple] | None":
        ffi, get, count, ctypes, fixed = self.sig
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
            ptrs = list(map(ffi.from_buffer, ctypes, objs))
        except (AttributeError, ValueError, BufferError):      # not an array; no plain buffer
            return None
        pending = self.pending
        if pending is not None and all(map(operator.is_, objs, pending)):
            new = object.__new__(CallPlan)      # the second call in a row with these arrays: keep them
            new.sig, new.n, new.ws, new.fit = self.sig, self.n, self.ws, self.fit
            new.outs, new.single = self.outs, self.single
            new._bind(objs, ptrs)
            return new, new.head
        self.pending = objs
        return self, (self.n, *ptrs, *fixed)

    def run(self, cfunc, head: tuple) -> tuple[int, list[np.ndarray]]:
        """Call cfunc(*head, outputs..., workspace) with new output arrays: (status, outputs)."""
        from_buffer = self.sig[0].from_buffer
        if self.single is not None:          # the common case, a third faster than the general one
            shape, dtype, ctype = self.single
            out = np.empty(shape, dtype)
            return cfunc(*head, from_buffer(ctype, out), self.ws), [out]
        shapes, dtypes, ctypes = self.outs
        outs = list(map(np.empty, shapes, dtypes))
        return cfunc(*head, *map(from_buffer, ctypes, outs), self.ws), outs
