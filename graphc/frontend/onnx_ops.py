"""The op table of ONNX import (ONNX_OPS, which graphc/frontend/onnx.py's importer reads): each ONNX
op graphc imports, as the function that builds it from graphc ops of the same meaning, the
attributes it reads (with their defaults), how many inputs it takes and which of them are read
as constant arrays (Reshape's shape, ReduceSum's axes). The linear, elementwise, shape and
reduction ops are here; the convolutional and normalization ones are onnx_cnn.py's CNN_OPS.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import DTypeError, ShapeError
from graphc.core.ir import Value
from graphc.core.opdef import broadcast_shapes, numel
from graphc.core.types import INT
from graphc.frontend.onnx_cnn import CNN_OPS
from graphc.frontend.onnx_table import _A_FLOAT, _A_INT, FLOATS, INTS, TENSOR, OnnxNode, OnnxOp, absent
from graphc.frontend.onnx_tensors import tensor_array


def _elementwise(opname: str) -> OnnxOp:
    return OnnxOp(lambda n, x: n.g.apply(opname, x))


def _broadcasting(opname: str) -> OnnxOp:
    def convert(n: OnnxNode, a, b):
        want = broadcast_shapes(a.shape, b.shape)     # the ONNX result, one-element constants included
        z = n.g.apply(opname, *(n.number(x) if isinstance(x, np.ndarray) else x for x in (a, b)))
        return z if z.shape == want else n.g.apply("reshape", z, shape=want)
    return OnnxOp(convert, n_inputs=(2, 2), numbers=True)


def _gemm(n: OnnxNode, a, b, c=None, *, alpha, beta, transA, transB):
    for name, flag in (("transA", transA), ("transB", transB)):
        if flag not in (0, 1):
            n.fail(f"{name}={flag}: it must be 0 or 1")
    if a.rank != 2 or b.rank != 2:
        n.fail(f"A and B must be 2-D, got ranks {a.rank} and {b.rank}", cls=ShapeError)
    g = n.g
    scale = n.number(np.array(float(alpha))) if alpha != 1.0 else None   # made first, as the spec `alpha * (...)`
    y = (a.T if transA else a) @ (b.T if transB else b)
    if scale is not None:
        y = g.apply("mul", scale, y)
    if c is not None and beta != 0.0:
        shape = y.shape
        y = y + (c if beta == 1.0 else g.apply("mul", n.number(np.array(float(beta))), c))
        if y.shape != shape:
            n.fail(f"C of shape {g.format_shape(c.shape)} does not broadcast to A'B', {g.format_shape(shape)}",
                   cls=ShapeError)
    return y


def _matmul(n: OnnxNode, a, b):
    if a.rank > 2 or b.rank > 2:
        n.fail(f"graphc's matmul takes 1-D and 2-D operands, got ranks {a.rank} and {b.rank}", cls=ShapeError,
               hint="a batched MatMul (rank 3 and more) is not supported yet")
    return a @ b


def _last_axis(opname: str) -> OnnxOp:
    def convert(n: OnnxNode, x, *, axis):
        if x.rank == 0 or n.axis(axis, x.rank) != x.rank - 1:
            n.fail(f"axis={axis}: graphc's {opname} works on the last axis (-1 or {max(x.rank - 1, 0)}) only",
                   hint="transpose the axis last in the model, or apply it to the last axis")
        return n.g.apply(opname, x)
    return OnnxOp(convert, {"axis": -1})


def _product(n: OnnxNode, dims, what: str):
    """One graphc dim for the product of `dims` (an int, or the one symbolic dim times 1)."""
    c, syms = numel(tuple(dims))
    if not syms:
        return c
    if len(syms) == 1 and c == 1:
        return syms[0]
    n.fail(f"{what} would be {' * '.join(map(str, [*([c] if c != 1 else []), *syms]))}, which is no graphc dim",
           hint="a graphc dim is an integer or a symbolic dim (the batch) by itself", cls=ShapeError)


def reshape_to(n: OnnxNode, x: Value, shape: tuple) -> Value:
    return x if tuple(shape) == x.shape else n.g.apply("reshape", x, shape=tuple(shape))


def _reshape(n: OnnxNode, x, shape, *, allowzero):
    if shape is None or shape.ndim != 1 or shape.dtype.kind not in "iu":
        n.fail("the shape must be a constant 1-D int64 tensor (an initializer or a Constant)")
    target = [int(d) for d in shape]
    if list(target).count(-1) > 1 or any(d < -1 for d in target):
        n.fail(f"shape {target}: at most one -1 and no other negative size")
    out: list = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= x.rank:
                n.fail(f"shape {target}: 0 at position {i} copies a dim the input (rank {x.rank}) does not have")
            out.append(x.shape[i])
        elif d == 0:
            n.fail(f"shape {target}: a dim of size 0 (allowzero=1) is not supported", cls=ShapeError)
        else:
            out.append(d)
    if -1 in out:
        known = [d for d in out if d != -1]
        c_in, s_in = numel(x.shape)
        c_known, s_known = numel(tuple(known))
        rest = list(s_in)
        for s in s_known:
            if s not in rest:
                n.fail(f"shape {target}: the input {n.g.format_shape(x.shape)} has no dim {s} to keep",
                       cls=ShapeError)
            rest.remove(s)
        if c_known == 0 or c_in % c_known:
            n.fail(f"cannot reshape {n.g.format_shape(x.shape)} to {target}", cls=ShapeError)
        out[out.index(-1)] = _product(n, [c_in // c_known, *rest], "the -1 of the shape")
    return reshape_to(n, x, tuple(out))


def _flatten(n: OnnxNode, x, *, axis):
    if not -x.rank <= axis <= x.rank:
        n.fail(f"axis {axis} is out of range for rank {x.rank} (Flatten takes -{x.rank} to {x.rank})")
    if axis < 0:
        axis += x.rank
    shape = (_product(n, x.shape[:axis], f"dim 0 of the result (axes before {axis})"),
             _product(n, x.shape[axis:], f"dim 1 of the result (axes from {axis})"))
    return reshape_to(n, x, shape)


def _transpose(n: OnnxNode, x, *, perm):
    perm = list(reversed(range(x.rank))) if perm is None else list(perm)
    if sorted(perm) != list(range(x.rank)):
        n.fail(f"perm {perm} is not a permutation of the {x.rank} axes")
    if perm == list(range(x.rank)):
        return x
    return x.T if x.rank == 2 else n.g.apply("permute", x, axes=tuple(perm))


def _concat(n: OnnxNode, *xs, axis):
    if axis is None:
        n.fail("the attribute axis is missing (Concat requires it)")
    rank = xs[0].rank
    if rank == 0 or n.axis(axis, rank) != rank - 1:
        n.fail(f"axis={axis}: graphc concatenates along the last axis (-1 or {max(rank - 1, 0)}) only")
    return xs[0] if len(xs) == 1 else n.g.apply("concat", *xs)


def _gather(n: OnnxNode, data, ids, *, axis):
    if axis != 0:
        n.fail(f"axis={axis}: graphc gathers rows (axis=0, an embedding lookup) only")
    if ids.dtype != INT:
        n.fail("the indices must be integer ids from a graph input (int32 or int64)", cls=DTypeError,
               hint="Gather with constant indices is not supported; ids come in as an input")
    return n.g.apply("embedding", data, ids)


def _reduce(opname: str) -> OnnxOp:
    def convert(n: OnnxNode, x, axes_input=None, *, axes, keepdims, noop_with_empty_axes):
        if axes is not None and axes_input is not None:
            n.fail("axes is given both as an attribute and as an input")
        if axes_input is not None and (axes_input.ndim != 1 or axes_input.dtype.kind not in "iu"):
            n.fail("axes must be a constant 1-D int64 tensor")
        chosen = axes if axes is not None else (None if axes_input is None else [int(a) for a in axes_input])
        if keepdims not in (0, 1) or noop_with_empty_axes not in (0, 1):
            n.fail("keepdims and noop_with_empty_axes must be 0 or 1")
        if not chosen:
            if noop_with_empty_axes:
                return x
            chosen = list(range(x.rank))
        norm = sorted({n.axis(a, x.rank, "axes entry") for a in chosen}, reverse=True)
        if len(norm) != len(chosen):
            n.fail(f"axes {list(chosen)} repeats an axis")
        if len(norm) == x.rank:
            return n.g.apply(opname, x, axis=None, keepdims=bool(keepdims))
        for a in norm:      # the last axis first, so the earlier axes keep their numbers
            x = n.g.apply(opname, x, axis=a, keepdims=bool(keepdims))
        return x
    return OnnxOp(convert, {"axes": INTS, "keepdims": 1, "noop_with_empty_axes": 0}, (1, 2), arrays=(1,))


def _constant(n: OnnxNode, **attrs):
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1:
        n.fail(f"a Constant needs exactly one of {sorted(attrs)}, got {sorted(given) or 'none'}")
    (key, value), = given.items()
    if key == "value":
        return tensor_array(value, f"Constant {n.proto.output[0]!r}", n.location)
    return np.array(value, dtype=np.float32 if key.startswith("value_float") else np.int64)


def _identity(n: OnnxNode, x):
    return x


# One entry per ONNX op graphc imports; the convolutional and normalization ops are
# graphc/frontend/onnx_cnn.py's CNN_OPS, the sequence ops will join likewise.
ONNX_OPS: dict[str, OnnxOp] = {
    "Gemm": OnnxOp(_gemm, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, (2, 3)),
    "MatMul": OnnxOp(_matmul, n_inputs=(2, 2)),
    "Add": _broadcasting("add"),
    "Sub": _broadcasting("sub"),
    "Mul": _broadcasting("mul"),
    "Div": _broadcasting("div"),
    "Relu": _elementwise("relu"),
    "Sigmoid": _elementwise("sigmoid"),
    "Tanh": _elementwise("tanh"),
    "Exp": _elementwise("exp"),
    "Log": _elementwise("log"),
    "Sqrt": _elementwise("sqrt"),
    "Neg": _elementwise("neg"),
    "Softmax": _last_axis("softmax"),
    "LogSoftmax": _last_axis("log_softmax"),
    "Reshape": OnnxOp(_reshape, {"allowzero": 0}, (2, 2), arrays=(1,)),
    "Flatten": OnnxOp(_flatten, {"axis": 1}),
    "Transpose": OnnxOp(_transpose, {"perm": INTS}),
    "Concat": OnnxOp(_concat, {"axis": absent(_A_INT)}, (1, 1 << 30)),
    "Gather": OnnxOp(_gather, {"axis": 0}, (2, 2)),
    "ReduceSum": _reduce("sum"),
    "ReduceMean": _reduce("mean"),
    "Identity": OnnxOp(_identity),
    "Constant": OnnxOp(_constant, {"value": TENSOR, "value_float": absent(_A_FLOAT), "value_floats": FLOATS,
                                   "value_int": absent(_A_INT), "value_ints": INTS}, (0, 0)),
    **CNN_OPS,
}
