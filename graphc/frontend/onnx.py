"""An ONNX model into a Graph and its params: `g, params = graphc.from_onnx(path_or_ModelProto)`.

In: an ONNX model (a file path, or an `onnx.ModelProto`), default domain, opset 13 or later.
Out: a Graph built through the builder API, the same as a spec or Python code would build it,
and a dict of NumPy arrays, one per param. The `onnx` package is needed only here, and only
when it is called (`pip install 'graphc[onnx]'`).

Adding an ONNX op is one entry of `ONNX_OPS`: the function that builds it from graphc ops,
the attributes it reads (with their defaults), how many inputs it takes and which of them
are read as constant arrays (a shape, axes).

Names. Every ONNX name becomes a graphc name by one rule, so the result is deterministic
and the same for the same model (`onnx_names(model)` returns the whole map):
  - a name that is already a valid graphc name (ASCII letters, digits and '_', starting
    with a letter, not starting with 'd_' or 'gc_', without '__', not a C or Python
    keyword) is kept unchanged: inputs, outputs, initializers and node outputs alike;
  - any other name has each run of characters other than letters and digits replaced by
    one '_' and '_' stripped from both ends (`fc1.weight` -> `fc1_weight`,
    `/fc1/Gemm_output_0` -> `fc1_Gemm_output_0`); when the result is empty, starts with
    a digit or 'd_' or 'gc_', or is a keyword, it is prefixed with 'v_' (`0` -> `v_0`,
    `d_model` -> `v_d_model`); when it is taken (by a kept name or an earlier mapped
    one), '_2', '_3', ... is appended. Names are mapped in the order graph inputs, graph
    outputs, initializers, node outputs;
  - a dim_param that is an identifier is kept as the symbolic dim's name; another is
    mapped by the same rule among the dims.
`params` is keyed by these graphc names. Intermediate values graphc makes inside one ONNX
node (the transpose of a Gemm's B) are temporaries named after the node's output, `y__0`.

Constants. graphc's constants are scalars (a number in the C), so:
  - an initializer used as a tensor becomes a param (any size, scalar ones included: the
    model stores it, and `params` maps each such initializer to its array); to keep one
    fixed while fine-tuning, leave it out of `wrt`. Initializers that no node reads as a
    tensor are not params;
  - a Constant node of one float element becomes a graphc constant (`x * 0.5`, folded into
    the C); a larger float Constant becomes a param named after its output (graphc has
    no tensor constants), also in `params`;
  - integer initializers and Constants are read where a node takes a constant array
    (Reshape's shape, ReduceSum's axes) and are no part of the graph.

Dtypes: float, double and float16 tensors are graphc's real type (float16 arrays are
widened to float32; float32 and float64 arrays are kept as they are, and the dtype of
the C is chosen at compile time); int32 and int64 inputs are int32 ids (Gather). Anything
else is a DTypeError naming the tensor.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from graphc.core.errors import DTypeError, GraphcError, Location, ShapeError, SpecError
from graphc.core.ir import C_KEYWORDS, Graph, Origin, Value, is_plain_name
from graphc.core.opdef import broadcast_shapes, numel
from graphc.core.types import FLOAT, INT
from graphc.frontend.onnx_cnn import CNN_OPS
from graphc.frontend.onnx_table import (  # noqa: F401  (OnnxOp and OnnxNode: the op table's types, re-exported)
    _A_FLOAT, _A_FLOATS, _A_INT, _A_INTS, _A_STRING, _A_TENSOR, _ATTR_KINDS, FLOATS, INTS, TENSOR, OnnxNode, OnnxOp,
    _Absent, absent,
)

MIN_OPSET = 13
INSTALL_HINT = "pip install 'graphc[onnx]'"
MODEL_PROTO = "<onnx model>"       # what errors name as the file of a ModelProto

# ONNX's TensorProto.DataType and AttributeProto.AttributeType numbers (part of the format)
_FLOAT32, _INT32, _INT64, _FLOAT16, _FLOAT64 = 1, 6, 7, 10, 11
_REAL_TYPES = {_FLOAT32: np.float32, _FLOAT64: np.float64, _FLOAT16: np.float32}
_INT_TYPES = (_INT32, _INT64)


# ------------------------------------------------------------------ names
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _sanitized(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    if not s or not s[0].isalpha() or s.startswith(("d_", "gc_")) or s in C_KEYWORDS or keyword.iskeyword(s):
        s = "v_" + s if s else "v"
    return s


class _Names:
    """ONNX name -> graphc name, by the rule of the module docstring."""

    def __init__(self, names: list[str], valid: Callable[[str], bool] = is_plain_name):
        self.map: dict[str, str] = {}
        taken = {n for n in names if valid(n)}
        for n in names:
            if n in self.map:
                continue
            if valid(n):
                self.map[n] = n
                continue
            base = _sanitized(n)
            new, k = base, 1
            while new in taken:
                k += 1
                new = f"{base}_{k}"
            taken.add(new)
            self.map[n] = new

    def __getitem__(self, name: str) -> str:
        return self.map[name]


def _tensor_names(graph) -> list[str]:
    names = [v.name for v in graph.input] + [v.name for v in graph.output]
    names += [t.name for t in graph.initializer]
    for node in graph.node:
        names += [o for o in node.output if o]
    return names


def _dim_params(graph) -> list[str]:
    return [d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim if d.dim_param]


def onnx_names(model) -> dict[str, str]:
    """The graphc name of every tensor name of `model` (a path or a ModelProto) by the rule of the
    module docstring, e.g. {'fc1.weight': 'fc1_weight', 'x': 'x', ...}; unchanged names included."""
    proto, _ = _model(model)
    return dict(_Names(_tensor_names(proto.graph)).map)


# ------------------------------------------------------------------ the op table
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


def _reshape_to(n: OnnxNode, x: Value, shape: tuple) -> Value:
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
    return _reshape_to(n, x, tuple(out))


def _flatten(n: OnnxNode, x, *, axis):
    if not -x.rank <= axis <= x.rank:
        n.fail(f"axis {axis} is out of range for rank {x.rank} (Flatten takes -{x.rank} to {x.rank})")
    if axis < 0:
        axis += x.rank
    shape = (_product(n, x.shape[:axis], f"dim 0 of the result (axes before {axis})"),
             _product(n, x.shape[axis:], f"dim 1 of the result (axes from {axis})"))
    return _reshape_to(n, x, shape)


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
        return _array(value, f"Constant {n.proto.output[0]!r}", n.location)
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


# ------------------------------------------------------------------ reading the model
def _onnx():
    try:
        import onnx
    except ImportError:
        raise GraphcError("importing an ONNX model needs the onnx package, which is not installed",
                          hint=INSTALL_HINT) from None
    return onnx


def _model(model) -> tuple[Any, str]:
    """(the ModelProto, the file name errors show)."""
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model, MODEL_PROTO
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise GraphcError(f"ONNX model {str(model)!r} {'is a directory' if path.is_dir() else 'does not exist'}",
                              hint="pass the path of an .onnx file or an onnx.ModelProto")
        try:
            return onnx.load(str(path)), str(path)
        except Exception as e:          # protobuf's DecodeError, a missing external-data file, ...
            raise SpecError(f"cannot read {str(model)!r} as an ONNX model: {type(e).__name__}: {e}",
                            Location(str(path)), hint="is it an .onnx file? (onnx.load reads it)") from None
    raise GraphcError(f"from_onnx takes a path or an onnx.ModelProto, got {type(model).__name__}")


def _dtype_name(code: int) -> str:
    try:
        return _onnx().helper.tensor_dtype_to_string(code).replace("TensorProto.", "").lower()
    except Exception:               # an unknown number
        return f"type {code}"


def _array(tensor, what: str, location: Location | None) -> np.ndarray:
    """An initializer's or Constant's values as a writable, contiguous array (float16 widened)."""
    onnx = _onnx()
    kind = tensor.data_type
    if kind not in _REAL_TYPES and kind not in _INT_TYPES:
        raise DTypeError(f"{what} is {_dtype_name(kind)}", location,
                         hint="graphc reads float, double, float16 (widened to float32), int32 and int64 tensors")
    try:
        a = onnx.numpy_helper.to_array(tensor)
    except Exception as e:
        raise SpecError(f"cannot read the values of {what}: {type(e).__name__}: {e}", location) from None
    return np.array(a, dtype=_REAL_TYPES.get(kind, a.dtype), copy=True, order="C")


def _attributes(n: OnnxNode, spec: OnnxOp) -> dict:
    helper = _onnx().helper
    out = {}
    for attr in n.proto.attribute:
        if attr.name not in spec.attrs:
            known = ", ".join(spec.attrs) or "no attributes"
            n.fail(f"attribute {attr.name!r} is not supported", hint=f"graphc reads {n.proto.op_type}'s {known}")
        default = spec.attrs[attr.name]
        kind = default.kind if isinstance(default, _Absent) else _A_FLOAT if isinstance(default, float) \
            else _A_STRING if isinstance(default, str) else _A_INT
        if attr.type != kind and not (kind == _A_FLOAT and attr.type == _A_INT):
            n.fail(f"attribute {attr.name!r} must be {_ATTR_KINDS[kind]}")
        value = helper.get_attribute_value(attr)
        out[attr.name] = list(value) if kind in (_A_INTS, _A_FLOATS) else float(value) if kind == _A_FLOAT \
            else value.decode() if kind == _A_STRING else value
    for name, default in spec.attrs.items():
        out.setdefault(name, None if isinstance(default, _Absent) else default)
    return out


def _unsupported_op_hint() -> str:
    return (f"graphc imports {', '.join(sorted(ONNX_OPS))} (default domain, opset {MIN_OPSET} and later); "
            "the sequence ops come with graphc's ops for them")


class _Importer:
    def __init__(self, proto, file: str):
        self.proto, self.file, self.graph = proto, file, proto.graph
        self.names = _Names(_tensor_names(self.graph))
        self.dims = _Names(_dim_params(self.graph), valid=lambda d: bool(_IDENT.match(d)))
        self.params: dict[str, np.ndarray] = {}
        self.env: dict[str, Any] = {}          # ONNX name -> Value, or the array of a constant
        self.initializers: set[str] = set()
        self.constants: set[str] = set()       # ONNX names of Constant outputs (one element: a number)
        name = self.graph.name or "model"
        self.g = Graph(name if is_plain_name(name) else _sanitized(name))
        self.g.source_file = None if file == MODEL_PROTO else file

    def where(self, key: str) -> Location:
        return Location(self.file, key)

    def origin(self, text: str, key: str) -> Origin:
        """A node's origin: its ONNX node, and the file when there is one (C comments show it)."""
        return Origin(text, Location(self.g.source_file, key))

    def run(self) -> tuple[Graph, dict[str, np.ndarray]]:
        self._opset()
        for t in self.graph.initializer:      # read when a node reads it (an unused one may have any type)
            self.env[t.name] = t
            self.initializers.add(t.name)
        for v in self.graph.input:
            if v.name not in self.env:      # an input with an initializer is a param with a default value
                self._input(v)
        for i, node in enumerate(self.graph.node):
            self._node(i, node)
        for v in self.graph.output:
            self._output(v)
        for name, v in self.g.states.items():     # state graphc declared itself (dropout's step count): 0
            if name not in self.params:
                self.params[name] = np.zeros(tuple(v.shape), dtype=np.float32)
        return self.g, self.params

    def _opset(self) -> None:
        versions = {o.domain: o.version for o in self.proto.opset_import}
        version = versions.get("", versions.get("ai.onnx"))
        if version is None:
            if len(self.graph.node):
                raise SpecError("the model imports no opset of the default ONNX domain", Location(self.file),
                                hint=f"graphc reads opset {MIN_OPSET} and later")
        elif version < MIN_OPSET:
            raise SpecError(f"the model uses opset {version}; graphc reads opset {MIN_OPSET} and later",
                            Location(self.file), hint="convert it first: onnx.version_converter.convert_version("
                                                      f"model, {MIN_OPSET})")

    def _input(self, v) -> None:
        loc = self.where(f"input {v.name!r}")
        t = v.type
        if not t.HasField("tensor_type"):
            raise DTypeError("is not a tensor", loc, hint="graphc reads tensor inputs")
        elem = t.tensor_type.elem_type
        if elem in _REAL_TYPES:
            dtype = FLOAT
        elif elem in _INT_TYPES:
            dtype = INT
        else:
            raise DTypeError(f"is {_dtype_name(elem)}", loc,
                             hint="graphc's inputs are float, double or float16 (real) and int32 or int64 (ids)")
        if not t.tensor_type.HasField("shape"):
            raise ShapeError("has no shape", loc, hint="give each input its rank: a dim_value or dim_param per dim")
        shape = []
        for k, d in enumerate(t.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(self.dims[d.dim_param])
            else:
                raise ShapeError(f"dim {k} has {'size 0' if d.HasField('dim_value') else 'no size and no name'}",
                                 loc, hint="each dim needs a positive dim_value or a dim_param (a symbolic dim)")
        with self.g.origin(self.origin(f"input {self.names[v.name]}", loc.key)):
            try:
                self.env[v.name] = self.g.input(self.names[v.name], tuple(shape), dtype)
            except GraphcError as e:
                raise type(e)(e.message, e.location or loc, e.hint) from None

    def _entry(self, name: str) -> Any:
        """What an ONNX name is so far: a Value, or a constant's array (an initializer read now)."""
        entry = self.env[name]
        if not isinstance(entry, (Value, np.ndarray)):
            entry = self.env[name] = _array(entry, f"initializer {name!r}", self.where(f"initializer {name!r}"))
        return entry

    def _tensor(self, n: OnnxNode, name: str, numbers: bool) -> Any:
        """The Value of an ONNX name; a one-element Constant stays an array when `numbers`."""
        entry = self._entry(name)
        if isinstance(entry, Value):
            return entry
        gname = self.names[name]
        if name in self.constants and entry.size == 1 and entry.dtype.kind == "f":
            if numbers:
                return entry
            with self.g.naming(gname):
                return _reshape_to(n, n.number(entry), entry.shape)
        if entry.dtype.kind != "f":
            n.fail(f"the int tensor {name!r} is used as a value; graphc reads constant ints only as shapes "
                   "and axes", cls=DTypeError, hint="ids (Gather's indices) come in as a graph input")
        where = "initializer" if name in self.initializers else "Constant"
        with self.g.origin(self.origin(f"{where} {gname}", f"{where} {name!r}")):
            try:
                v = self.g.param(gname, entry.shape)
            except GraphcError as e:
                n.fail(f"{where} {name!r} cannot be a param: {e.message}", hint=e.hint, cls=type(e))
        self.params[gname] = entry
        self.env[name] = v
        return v

    def _node(self, i: int, proto) -> None:
        label = f"node {i} ({proto.op_type}" + (f" {proto.name!r})" if proto.name else ")")
        loc = self.where(label)
        n = OnnxNode(self.g, i, proto, loc)
        if proto.domain not in ("", "ai.onnx"):
            n.fail(f"op {proto.op_type!r} of domain {proto.domain!r} is not supported", hint=_unsupported_op_hint())
        spec = ONNX_OPS.get(proto.op_type)
        if spec is None:
            n.fail(f"op {proto.op_type!r} is not supported", hint=_unsupported_op_hint())
        lo, hi = spec.n_inputs
        given = list(proto.input)
        while given and not given[-1]:
            given.pop()
        if not lo <= len(given) <= hi:
            n.fail(f"takes {lo if lo == hi else f'{lo} to {hi}'} inputs, got {len(given)}")
        outputs = [o for o in proto.output if o]
        if len(proto.output) != 1 or not outputs:
            n.fail(f"graphc reads {proto.op_type} with one output, got {len(proto.output)}")
        attrs = _attributes(n, spec)
        inputs = []
        for k, name in enumerate(given):
            if not name:
                n.fail(f"input {k} is empty; only trailing optional inputs may be left out")
            if name not in self.env:
                n.fail(f"input {name!r} is not defined before this node",
                       hint="ONNX nodes must be in topological order, and every input a graph input, "
                            "an initializer or an earlier node's output")
            if k in spec.arrays:
                entry = self._entry(name)
                if not isinstance(entry, np.ndarray):
                    n.fail(f"input {k} ({name!r}) must be a constant (an initializer or a Constant node)",
                           hint=f"graphc needs {proto.op_type}'s input {k} when it builds the graph")
                inputs.append(entry)
            else:
                inputs.append(None)     # filled below, inside the node's naming and origin
        out = outputs[0]
        gname = self.names[out]
        args = ", ".join(self.names[x] for x in given)
        with self.g.origin(self.origin(f"{gname} = {proto.op_type}({args})", label)), self.g.naming(gname):
            try:
                for k, name in enumerate(given):
                    if k not in spec.arrays:
                        inputs[k] = self._tensor(n, name, spec.numbers)
                v = spec.convert(n, *inputs, **attrs)
            except GraphcError as e:
                if e.location is None or e.location.key == label:    # raised by the builder: name the node
                    raise type(e)(e.message, loc, e.hint) from None
                raise
        if isinstance(v, np.ndarray):
            self.constants.add(out)
        elif v.node is not None and v.temporary and v.name.startswith(gname + "__"):
            self.g.rename(v, gname)
        self.env[out] = v

    def _output(self, v) -> None:
        loc = self.where(f"output {v.name!r}")
        if v.name not in self.env:
            raise SpecError("is computed by no node", loc)
        n = OnnxNode(self.g, -1, v, loc)
        with self.g.origin(self.origin(f"output {self.names[v.name]}", loc.key)), self.g.naming(self.names[v.name]):
            value = self._tensor(n, v.name, numbers=False)
        t = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            declared = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if len(declared) != value.rank or any(d is not None and isinstance(s, int) and d != s
                                                  for d, s in zip(declared, value.shape)):
                shown = "(" + ", ".join("?" if d is None else str(d) for d in declared) + ")"
                raise ShapeError(f"the model declares the shape {shown}, graphc computes "
                                 f"{self.g.format_shape(value.shape)}", loc)
        try:
            self.g.output(self.names[v.name], value)
        except GraphcError as e:
            raise type(e)(e.message, loc, e.hint) from None


def from_onnx(model) -> tuple[Graph, dict[str, np.ndarray]]:
    """An ONNX model (a path or an onnx.ModelProto) as (Graph, params).

    Graph inputs and outputs keep their ONNX names when they are valid graphc names (other names
    are mapped by the rule of this module's docstring; `onnx_names(model)` gives the map); an
    input's dim_param becomes a symbolic dim of that name. `params` maps each initializer the
    graph reads as a tensor (and each Constant of more than one element) to its array, keyed by
    the graphc name, and the model state graphc declares itself (dropout's step count, 0). An unsupported op, attribute, value or dtype is a GraphcError naming the
    node (index, op and name) and what graphc supports; a missing `onnx` package is a
    GraphcError saying `pip install 'graphc[onnx]'`."""
    g, params, _ = read_onnx(model)
    return g, params


def read_onnx(model) -> tuple[Graph, dict[str, np.ndarray], dict[str, str]]:
    """from_onnx's (graph, params) and onnx_names' map of names, from one reading of the model."""
    proto, file = _model(model)
    importer = _Importer(proto, file)
    g, params = importer.run()
    return g, params, dict(importer.names.map)

