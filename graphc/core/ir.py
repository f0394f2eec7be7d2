"""Stage 2: the IR. Values with shapes and dtypes, nodes, named outputs.

In: calls of the builder API (from spec.py or from user code). Out: a Graph
whose node list is in topological order. Shapes are decided here, once, by
each op's shape rule; nothing downstream infers a shape again.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from graphc.core.errors import DTypeError, GraphcError, Location, ShapeError, SpecError
from graphc.core.names import C_KEYWORDS, IDENT, check_name, fresh_name, is_plain_name  # noqa: F401
from graphc.core.opdef import get_op
from graphc.core.printer import graph_text, node_text
from graphc.core.subscript import subscript
from graphc.core.text import describe
from graphc.core.types import DTYPES, FLOAT, INT, Dim, Shape, TensorType, normalize_dtype  # noqa: F401

@dataclass(frozen=True)
class Origin:
    """Where a node comes from: its spec line, or the forward node and identity it differentiates."""

    text: str | None = None            # 'z = x @ W.T + b1'
    location: Location | None = None
    forward: "Node | None" = None      # for backward nodes: the forward node being differentiated
    identity: str | None = None        # the notes' identity number(s), e.g. "5" or "3,4"

    @property
    def where(self) -> str:
        loc = self.location
        if loc is None or loc.file is None:
            return ""
        base = loc.file.rsplit("/", 1)[-1]      # the file's name: the C does not depend on where it sits
        return f"{base}:{loc.line}" if loc.line else base


class Value:
    """A tensor in a graph: an input, a parameter, or the output of one node."""

    __array_priority__ = 1000  # so that ndarray @ Value defers to Value

    def __init__(self, graph: "Graph", name: str, type: TensorType, node: "Node | None", kind: str):
        self.graph, self.name, self.type, self.node, self.kind = graph, name, type, node, kind
        self.temporary = False           # named by graphc (`t3`, `z__0`), not by the user
        self.spec_text: str | None = None  # a spec sub-expression's source text, for error messages

    shape = property(lambda self: self.type.shape)
    dtype = property(lambda self: self.type.dtype)
    rank = property(lambda self: len(self.type.shape))

    def __repr__(self) -> str:
        return f"<Value {self.name}: {self.graph.format_shape(self.shape)} {self.dtype}>"

    # operator overloading: the builder API reads like the spec language
    def __matmul__(self, o): return self.graph.apply("matmul", self, o)
    def __rmatmul__(self, o): return self.graph.apply("matmul", o, self)
    def __add__(self, o): return self.graph.apply("add", self, o)
    def __radd__(self, o): return self.graph.apply("add", o, self)
    def __sub__(self, o): return self.graph.apply("sub", self, o)
    def __rsub__(self, o): return self.graph.apply("sub", o, self)
    def __mul__(self, o): return self.graph.apply("mul", self, o)
    def __rmul__(self, o): return self.graph.apply("mul", o, self)
    def __truediv__(self, o): return self.graph.apply("div", self, o)
    def __rtruediv__(self, o): return self.graph.apply("div", o, self)
    def __neg__(self): return self.graph.apply("neg", self)

    def __pow__(self, p):
        if p == 2:
            return self.graph.apply("square", self)
        raise SpecError(f"only '**2' is supported, got '**{p!r}'", hint="write sqrt(x) for a square root")

    @property
    def T(self) -> "Value":
        return self.graph.apply("transpose", self)

    def __getitem__(self, key) -> "Value":
        """x[:, 1:5], x[..., ::2], x[:, 0]: Python's subscripts (positive steps), as slices."""
        return subscript(self, key if isinstance(key, tuple) else (key,))

    def __bool__(self):
        raise GraphcError("a graphc Value has no truth value; compare arrays after evaluate()")


@dataclass(eq=False)
class Node:
    op: Any                       # an OpDef from graphc.ops.REGISTRY
    inputs: tuple[Value, ...]
    attrs: dict[str, Any]
    output: Value | None = None
    origin: Origin = field(default_factory=Origin)

    def __repr__(self) -> str:
        return f"<Node {self.output.name if self.output is not None else '?'} = {self.op.name}>"


class Graph:
    """A forward (or forward+backward) computation: inputs, params, nodes, named outputs."""

    def __init__(self, name: str = "model", dims: dict[str, int | None] | None = None):
        self.name = check_name(name, "graph")
        self.dims: dict[str, int | None] = dict(dims or {})   # None marks a symbolic dim
        self.inputs: dict[str, Value] = {}
        self.params: dict[str, Value] = {}
        # model state (batch_norm's running statistics, dropout's step count): values kept among
        # the params (every call takes them, checkpoints and the emitted C carry them) that no
        # gradient trains; train_step updates them by their ops' `state_updates`
        self.states: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.outputs: dict[str, Value] = {}
        self.values: dict[str, Value] = {}
        self._origin_stack: list[Origin] = []
        self._name_stack: list[str] = []
        self._counter = 0
        self.grad_spec: tuple[str, list[str]] | None = None   # the spec's [grad] of / wrt
        self.param_init: dict[str, str] = {}                   # param name -> init scheme from the spec
        self.source_file: str | None = None
        # forward value -> its adjoint dJ/dv, for the values whose adjoint survives simplification;
        # filled by autodiff/grad.py's `grad` (explain names each delta by the value it differentiates)
        self.adjoints: dict[Value, Value] = {}
        # param name or TrainState.buffers key ("m/W", "t") -> (input name, output name) of its old
        # and new value; filled by autodiff/train.py's `train_graph`
        self.updates: dict[str, tuple[str, str]] = {}
        # a train step's recipe values: "lr" -> the input holding a scheduled step's learning rate,
        # "grad_norm" -> the output holding the gradients' norm before clipping (train_graph's)
        self.recipe: dict[str, str] = {}
        # a language model's token input and next-token logits output (`generation`): NAME_generate
        self.generation: tuple[str, str] | None = None
        # a scan's body (ops/scan.py): the graph around it, and each value of that graph (or of one
        # around it) the body reads, as the body input that stands for it (its captured consts)
        self.enclosing: Graph | None = None
        self.captures: dict[Value, Value] = {}

    # ---------------------------------------------------------------- dims and shapes
    @property
    def symbolic_dims(self) -> list[str]:
        return [d for d, v in self.dims.items() if v is None]

    def resolve_shape(self, shape: Sequence[Any], what: str, location: Location | None = None) -> Shape:
        if isinstance(shape, (int, str)):
            shape = (shape,)
        out: list[Dim] = []
        for d in shape:
            if isinstance(d, bool):
                raise ShapeError(f"{what}: dim {d!r} is not a size", location)
            if isinstance(d, int):
                if d < 1:
                    raise ShapeError(f"{what}: dim {d} must be a positive integer", location)
                out.append(d)
            elif isinstance(d, str):
                if d not in self.dims:
                    if IDENT.match(d):   # a fresh name in a builder graph becomes a symbolic dim
                        self.dims[d] = None
                    else:
                        raise ShapeError(f"{what}: {d!r} is not a dim name", location)
                size = self.dims[d]
                out.append(d if size is None else size)
            else:
                raise ShapeError(f"{what}: dim {d!r} must be an int or a dim name", location)
        return tuple(out)

    def dim_label(self, d: Dim) -> str:
        if isinstance(d, str):
            return d
        names = [k for k, v in self.dims.items() if v == d]
        return f"{names[0]}={d}" if len(names) == 1 else str(d)

    def format_shape(self, shape: Shape) -> str:
        return "(" + ", ".join(self.dim_label(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"

    # ---------------------------------------------------------------- building
    def has_name(self, name: str) -> bool:
        """Whether a value or an output of the graph is called `name`."""
        return name in self.values or name in self.outputs

    def _fresh_temp(self, base: str, first: str | None = None) -> str:
        """A temporary's name: `first` if free, else `base__0`, `base__1`, ..."""
        return fresh_name(self.has_name, () if first is None else (first,), f"{base}__")

    def _declare(self, name: str, shape, dtype: str, kind: str, table: dict) -> Value:
        loc = self._origin_stack[-1].location if self._origin_stack else None
        check_name(name, kind, loc)
        if name in self.values:
            raise SpecError(f"{kind} {name!r} is declared twice", loc, hint="names must be unique in a graph")
        dims = dict(self.dims)
        t = TensorType(self.resolve_shape(shape, f"{kind} {name}", loc), normalize_dtype(dtype, f"{kind} {name}"))
        symbolic = [d for d in t.shape if isinstance(d, str)]
        if kind == "param" and symbolic:
            self.dims = dims   # a fresh name the rejected shape introduced is no dim of the graph
            raise SpecError(f"param {name!r} has shape {self.format_shape(t.shape)} with the symbolic dim "
                            f"{symbolic[0]!r}: params must have fixed dims", loc,
                            hint=f"a param's size is fixed when the model is built, and only inputs may have "
                                 f"the batch dim {symbolic[0]}; give {name} integer dims (or dims with a size)")
        v = Value(self, name, t, None, kind)
        table[name] = self.values[name] = v
        return v

    def input(self, name: str, shape, dtype: str = FLOAT) -> Value:
        return self._declare(name, shape, dtype, "input", self.inputs)

    def param(self, name: str, shape, dtype: str = FLOAT) -> Value:
        v = self._declare(name, shape, dtype, "param", self.params)
        if v.dtype != FLOAT:
            raise DTypeError(f"param {name!r} must be real (float), got {v.dtype}")
        return v

    def state(self, name: str, shape, dtype: str = FLOAT, init: str | None = None) -> Value:
        """Model state: a real value of fixed shape that train_step updates and no gradient
        trains (a batch_norm's running mean or variance). It sits among the params; `init`
        (e.g. "ones") is its initial value for init_params, else the op using it decides."""
        v = self.param(name, shape, dtype)
        self.states[name] = v
        if init is not None:
            self.param_init[name] = init
        return v

    def generate_from(self, ids: str, logits: str, loc=None) -> None:
        """Declare a language model (the spec's [generate]): `ids`, an int32 input [N, T] (or [T])
        of token ids, and `logits`, an output [N, T, V] (or [T, V]) of next-token logits that
        needs no other data. The C then has NAME_generate (and Python m.generate), which samples
        tokens one at a time from softmax(logits at the last position / temperature)."""
        where = "[generate]"
        if ids not in self.inputs or self.inputs[ids].dtype != INT:
            raise SpecError(f"{where} ids = {ids!r} must name an int32 input of token ids", loc,
                            hint=f"the int32 inputs are {', '.join(k for k, v in self.inputs.items() if v.dtype == INT) or 'none'}")
        if logits not in self.outputs:
            raise SpecError(f"{where} logits = {logits!r} must name an output", loc,
                            hint=f"the outputs are {', '.join(self.outputs)}")
        x, z = self.inputs[ids], self.outputs[logits]
        if x.rank not in (1, 2) or z.dtype != FLOAT or z.rank != x.rank + 1 or z.shape[:-1] != x.shape \
                or not isinstance(z.shape[-1], int):
            raise SpecError(f"{where} ids {ids} is {self.format_shape(x.shape)} and logits {logits} is "
                            f"{self.format_shape(z.shape)}: the logits must be the ids' shape and a fixed "
                            f"vocabulary axis", loc, hint="ids [N, T] and logits [N, T, V]")
        self.generation = (ids, logits)

    def trainable(self) -> list[str]:
        """The params a gradient may train: every param but the state."""
        return [k for k in self.params if k not in self.states]

    def const(self, value: float) -> Value:
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not math.isfinite(number):   # C has no literal for it, and it is never what a model means
            loc = self._origin_stack[-1].location if self._origin_stack else None
            raise SpecError(f"constant {str(value)[:40]} is not a finite float", loc,
                            hint="constants must lie within +-1.8e308")
        return self.apply("const", value=number)

    def output(self, name: str, value: Value) -> Value:
        check_name(name, "output")
        value = self.lift(value)
        if name in self.outputs:
            raise SpecError(f"output {name!r} is declared twice")
        other = self.values.get(name)
        if other is not None and other.name == name and (other is not value or other.node is None):
            # the output becomes a C argument of this name, beside the input/param or buffer `name`
            raise SpecError(f"output name {name!r} is already the name of {'an' if other.kind == 'input' else 'a'} "
                            f"{other.kind if other.kind != 'node' else 'graph value'}",
                            hint=f"give the output its own name, e.g. {name}_out")
        self.outputs[name] = value
        return value

    def inside(self, other: "Graph") -> bool:
        """Whether this graph is a scan body within `other` (at any depth)."""
        g = self.enclosing
        while g is not None and g is not other:
            g = g.enclosing
        return g is other

    def capture(self, v: Value) -> Value:
        """The body input standing for `v`, a value of a graph this body is inside (made once)."""
        if v not in self.captures:
            outer = v if v.graph is self.enclosing else self.enclosing.capture(v)
            name = fresh_name(self.has_name, (outer.name,), f"{outer.name}__")
            inp = Value(self, name, outer.type, None, "input")
            self.inputs[name] = self.values[name] = inp
            self.captures[v] = inp
        return self.captures[v]

    def lift(self, v: Any) -> Value:
        if isinstance(v, Value):
            if v.graph is not self and self.enclosing is not None and self.inside(v.graph):
                return self.capture(v)      # a scan body reads a param of the model around it
            if v.graph is not self:
                raise GraphcError(f"value {v.name!r} belongs to graph {v.graph.name!r}, not {self.name!r}")
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self.const(v)
        raise GraphcError(f"cannot use {type(v).__name__} {v!r} as a graph value",
                          hint="use a Value of this graph or a Python number")

    @contextlib.contextmanager
    def origin(self, origin: Origin):
        """Stamp every node created inside with `origin` (spec line or identity)."""
        self._origin_stack.append(origin)
        try:
            yield
        finally:
            self._origin_stack.pop()

    @contextlib.contextmanager
    def naming(self, base: str):
        """Name nodes created inside after `base` (`z`, `z__0`, ...)."""
        self._name_stack.append(base)
        try:
            yield
        finally:
            self._name_stack.pop()

    def apply(self, opname: str, *inputs: Any, name: str | None = None, **attrs) -> Value:
        op = get_op(opname)
        inner = next((x.graph for x in inputs if isinstance(x, Value) and x.graph.inside(self)), None)
        if inner is not None:       # W @ h with h a value of a scan body: the node belongs to the body
            return inner.apply(opname, *inputs, name=name, **attrs)
        vals = tuple(self.lift(x) for x in inputs)
        origin = self._origin_stack[-1] if self._origin_stack else Origin()
        try:
            vals, attrs = op.bind(self, vals, attrs)
            for i in op.state_inputs:
                if i < len(vals) and vals[i].name not in self.states:
                    raise SpecError(f"argument {i + 1} ({vals[i].name}) must be model state, declared under [state] "
                                    f"(graph.state(...)), not {'a ' + vals[i].kind if vals[i].kind != 'node' else 'a computed value'}",
                                    hint="running statistics are updated by train_step, not trained")
            attrs = op.check_attrs(vals, attrs)
            t = op.shape(*[v.type for v in vals], **attrs)
        except ShapeError as e:
            raise ShapeError(describe(op, vals, e.message), origin.location, op.error_hint(vals, e)) from None
        except (DTypeError, SpecError) as e:
            raise type(e)(describe(op, vals, e.message), origin.location, e.hint) from None
        node = Node(op, vals, attrs, None, origin)
        temporary = name is None
        if name is None:
            if self._name_stack:
                name = self._fresh_temp(self._name_stack[-1])
            else:
                self._counter += 1
                name = self._fresh_temp("t", f"t{self._counter}")
        elif name in self.values:
            raise SpecError(f"value name {name!r} is already used", origin.location)
        node.output = Value(self, name, t, node, "node")
        node.output.temporary = temporary
        self.values[name] = node.output
        self.nodes.append(node)
        return node.output

    def rename(self, value: Value, name: str) -> Value:
        """Give a node's output its spec name (used when `z = ...` names an expression)."""
        if value.name == name:
            return value
        if name in self.values:
            raise SpecError(f"value name {name!r} is already used")
        del self.values[value.name]
        value.name, value.temporary = name, False
        self.values[name] = value
        return value

    def copy(self, name: str | None = None) -> tuple["Graph", dict[Value, Value]]:
        """A structurally equal graph (same names, origins, outputs, adjoints and updates) and the
        old -> new value map."""
        g = Graph(name or self.name, self.dims)
        vmap: dict[Value, Value] = {}
        for table, new_table in ((self.inputs, g.inputs), (self.params, g.params)):
            for k, v in table.items():
                nv = Value(g, k, v.type, None, v.kind)
                new_table[k] = g.values[k] = vmap[v] = nv
        for n in self.nodes:
            nv = g.add_node(n.op, tuple(vmap[v] for v in n.inputs), dict(n.attrs), n.output.name, n.output.type,
                            n.origin)
            nv.temporary, nv.spec_text = n.output.temporary, n.output.spec_text
            vmap[n.output] = nv
        g.outputs = {k: vmap[v] for k, v in self.outputs.items()}
        g.states = {k: g.params[k] for k in self.states if k in g.params}
        g._counter = self._counter
        g.grad_spec, g.param_init, g.source_file = self.grad_spec, dict(self.param_init), self.source_file
        g.adjoints = {vmap[v]: vmap[d] for v, d in self.adjoints.items() if v in vmap and d in vmap}
        g.updates = dict(self.updates)
        g.recipe = dict(self.recipe)
        g.generation = self.generation
        return g, vmap

    def add_node(self, op, inputs: tuple[Value, ...], attrs: dict, name: str, type: TensorType,
                 origin: Origin) -> Value:
        """Append a node whose shape is already known (copies and passes; `apply` is for new nodes)."""
        node = Node(op, inputs, attrs, None, origin)
        node.output = Value(self, name, type, node, "node")
        self.values[name] = node.output
        self.nodes.append(node)
        return node.output

    # ---------------------------------------------------------------- queries
    def __getitem__(self, name: str) -> Value:
        if name in self.outputs:
            return self.outputs[name]
        if name in self.values:
            return self.values[name]
        close = difflib.get_close_matches(name, list(self.outputs) + list(self.values), n=1)
        raise GraphcError(f"graph {self.name!r} has no value or output {name!r}",
                          hint=f"did you mean {close[0]!r}?" if close else None)

    def consumers(self) -> dict[Value, list[Node]]:
        users: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                users.setdefault(v, []).append(n)
        return users

    def verify(self) -> None:
        """Check the invariants every pass relies on: topological order, shapes, ownership."""
        seen = set(self.inputs.values()) | set(self.params.values())
        for n in self.nodes:
            for v in n.inputs:
                if v not in seen:
                    raise GraphcError(f"node {n.output.name} uses {v.name} before it is defined")
            t = n.op.shape(*[v.type for v in n.inputs], **n.attrs)
            if t != n.output.type:
                raise ShapeError(f"node {n.output.name}: recorded {n.output.type}, rule gives {t}")
            seen.add(n.output)
        for k, v in self.outputs.items():
            if v not in seen:
                raise GraphcError(f"output {k} is not computed by the graph")

    # ---------------------------------------------------------------- printing (core/printer.py)
    def __str__(self) -> str:
        return graph_text(self)

    def format_node(self, n: Node, width: int = 8) -> str:
        """One node as the printer shows it: `name = op(args, attrs)  shape    # origin`."""
        return node_text(self, n, width)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.params)} params, {len(self.nodes)} nodes>"


def topo_values(graph: Graph) -> Iterable[Value]:
    yield from graph.inputs.values()
    yield from graph.params.values()
    for n in graph.nodes:
        yield n.output
