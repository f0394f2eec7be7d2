"""Checking named arrays against a graph's inputs and params, shared by the
NumPy reference and the compiled runtime.

In: a mapping of names to array-likes. Out: arrays of the right dtype and the
value of each symbolic dim. Never guesses: a misfit raises naming the argument.
`bind` is the full check; native/calls.py keeps what it leaves for repeated C calls.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

import numpy as np

from graphc.core.errors import ArgumentError, DTypeError, ShapeError
from graphc.core.ir import INT, Graph, Value


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
                    what = "the batch dim" if d == graph.symbolic_dims[0] else "the run-time dim"
                    raise ShapeError(f"argument {name!r} has {d}={n} on axis {axis}, but {where[d]} has {d}={dims[d]}",
                                     hint=f"every argument must agree on {what} {d}")
                dims.setdefault(d, n)
                where.setdefault(d, repr(name))
            elif d != n:
                raise ShapeError(f"argument {name!r} has shape {arr.shape}, expected {expected_shape(graph, v)}")
        out[name] = arr
    check_dim_bounds(graph, dims)
    return out, dims


def dim_bounds(graph: Graph) -> dict[str, tuple[int, object]]:
    """The largest size each symbolic dim may take, and the node that bounds it (x[:T] of a
    table of 64 rows: T <= 64)."""
    out: dict[str, tuple[int, object]] = {}
    for n in graph.nodes:
        for d, bound in n.op.dim_bounds(n):
            if d not in out or bound < out[d][0]:
                out[d] = (bound, n)
    return out


def check_dim_bounds(graph: Graph, dims: Mapping[str, int]) -> None:
    """A ShapeError when a symbolic dim is larger than a node allows (a sequence longer than its
    positional table)."""
    for d, (bound, n) in dim_bounds(graph).items():
        if d in dims and dims[d] > bound:
            where = f" by {n.origin.text}" if n.origin.text else ""
            raise ShapeError(f"{d}={dims[d]} is larger than {bound}, the most {d} may be{where} "
                             f"(a slice [:{d}] of an axis of {bound})",
                             hint=f"pass at most {bound} along {d} (a sequence no longer than the table)")


# ---------------------------------------------------------------- repeated calls to C
