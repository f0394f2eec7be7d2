"""An ONNX model into a Graph and its params: `g, params = graphc.from_onnx(path_or_ModelProto)`.

In: an ONNX model (a file path, or an `onnx.ModelProto`), default domain, opset 13 or later.
Out: a Graph built through the builder API, the same as a spec or Python code would build it,
and a dict of NumPy arrays, one per param. The `onnx` package is needed only here, and only
when it is called (`pip install 'graphc[onnx]'`).

Adding an ONNX op is one entry of `ONNX_OPS` (graphc/frontend/onnx_ops.py): the function that builds it from graphc ops,
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
from graphc.core.types import FLOAT, INT
from graphc.frontend.onnx_ops import ONNX_OPS, reshape_to
from graphc.frontend.onnx_table import (  # noqa: F401  (OnnxOp and OnnxNode: the op table's types, re-exported)
    _A_FLOAT, _A_FLOATS, _A_INT, _A_INTS, _A_STRING, _ATTR_KINDS, OnnxNode, OnnxOp, _Absent,
)
from graphc.frontend.onnx_tensors import (  # noqa: F401  (INSTALL_HINT: re-exported)
    INSTALL_HINT, INT_TYPES, REAL_TYPES, dtype_name, onnx_package, tensor_array,
)

MIN_OPSET = 13
MODEL_PROTO = "<onnx model>"       # what errors name as the file of a ModelProto

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


# ------------------------------------------------------------------ reading the model
def _model(model) -> tuple[Any, str]:
    """(the ModelProto, the file name errors show)."""
    onnx = onnx_package()
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


def _attributes(n: OnnxNode, spec: OnnxOp) -> dict:
    helper = onnx_package().helper
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
        if elem in REAL_TYPES:
            dtype = FLOAT
        elif elem in INT_TYPES:
            dtype = INT
        else:
            raise DTypeError(f"is {dtype_name(elem)}", loc,
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
            entry = self.env[name] = tensor_array(entry, f"initializer {name!r}", self.where(f"initializer {name!r}"))
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
                return reshape_to(n, n.number(entry), entry.shape)
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

