"""The op record and its registry: the base every op of graphc/ops/ derives from.

An op is a subclass of `OpDef` decorated with `@register`. The IR asks it for
shapes, core/reference.py for values, autodiff/grad.py for its VJP (built from
other ops, so the backward graph is again differentiable), autodiff/explain.py for
its formula in the notes' notation, core/text.py for its spec form in error messages,
the generated C and the example inputs for its index bounds, and the backend for its
kernel. The ops themselves live in graphc/ops/, one record each; the defaults here are
what an op that says nothing more gets.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

import numpy as np

from graphc.core.errors import DTypeError, GraphcError, ShapeError, SpecError
from graphc.core.types import FLOAT, INT, Dim, Shape, TensorType
from graphc.core.text import ATOM, operand_text

REGISTRY: dict[str, "OpDef"] = {}


def register(cls):
    """Class decorator: instantiate the op and enter it in REGISTRY under `cls.name`."""
    op = cls()
    if op.name in REGISTRY:
        raise RuntimeError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return cls


def unknown_op_hint(name: str, public_only: bool = True) -> str:
    """`did you mean relu? the ops are: add, concat, ...`: a close name if there is one, and the list."""
    names = sorted(k for k, op in REGISTRY.items() if op.public or not public_only)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    listed = f"the ops are: {', '.join(names)}"
    return f"did you mean {close[0]}? {listed}" if close else listed


def get_op(name: str) -> "OpDef":
    try:
        return REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown op {name!r}", hint=unknown_op_hint(name, public_only=False)) from None


class OpDef:
    """Base of every op. Subclasses set the class attributes and override the methods they need."""

    name: str = ""
    arity: int | None = 1           # None: variadic (at least one input)
    optional_inputs: int = 0        # the last ones may be left out (conv2d's bias)
    # torch's positional order when inputs and attributes interleave (layer_norm(x, normalized_shape,
    # weight, bias, eps)): every parameter's name, and which of them are inputs; None: inputs first
    positional: tuple[str, ...] | None = None
    input_names: tuple[str, ...] = ()
    attrs: dict[str, Any] = {}      # attribute name -> default
    tuple_attrs: tuple[str, ...] = ()   # attributes kept as tuples (shapes, axes)
    identity: str | None = None     # identity of the notes its VJP applies
    public: bool = True             # callable from spec expressions
    c_expr: str | None = None       # elementwise ops: C expression over {0}, {1}, ...
    int_inputs: tuple[int, ...] = ()  # input positions that must be int32 (labels, ids)
    # How the spec language writes it, (symbol, precedence of core/text.py), when not as a call:
    infix: tuple[str, int] | None = None     # x @ W: ("@", PRODUCT)
    prefix: tuple[str, int] | None = None    # -x: ("-", UNARY)
    postfix: tuple[str, int] | None = None   # x.T: (".T", ATOM); the operand binds like a name
    # How explain prints it (see `notation`):
    symbol: str | None = None       # the function name of its default form f(x); None: the op's name
    leafy: bool = False             # never a δ of its own even when shared: it prints as short as a name
    shown_by_name: bool = True      # a forward value it computes prints as its name (not softmax: ŷ)
    see_through: bool = False       # only repeats or relabels its input: a constant or a scalar stays one

    # ---- attributes and arity, checked once when a node is created
    def check_attrs(self, inputs: tuple, attrs: dict) -> dict:
        if self.arity is not None and not self.arity - self.optional_inputs <= len(inputs) <= self.arity:
            low = self.arity - self.optional_inputs
            count = f"{low} to {self.arity} arguments" if low != self.arity else \
                f"{self.arity} argument{'s' if self.arity != 1 else ''}"
            raise SpecError(f"takes {count}, got {len(inputs)}")
        if self.arity is None and not inputs:
            raise SpecError("takes at least one argument")
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise SpecError(f"unknown keyword {sorted(unknown)[0]!r}",
                            hint=f"{self.name} accepts {sorted(self.attrs) or 'no keywords'}")
        out = dict(self.attrs)
        out.update(attrs)
        for k in self.tuple_attrs:           # a list from the spec or the builder: hashable, comparable
            out[k] = tuple(out[k])
        for i, v in enumerate(inputs):
            want_int = i in self.int_inputs
            if want_int and v.dtype != INT and not self.accepts_float_at(i):
                raise DTypeError(f"argument {i + 1} ({operand_text(v)}) must be int32, got {v.dtype}")
            if not want_int and v.dtype == INT:
                raise DTypeError(f"argument {i + 1} ({operand_text(v)}) is int32 but {self.name} needs a real value",
                                 hint="integer inputs are labels or ids: pass them to cross_entropy or embedding")
        return out

    def split_call(self, args: list, kwargs: dict, is_none) -> tuple[list, dict]:
        """(inputs, attributes) of the call op(*args, **kwargs) as the spec and the builder write it:
        inputs first, then attributes in order (relu(x), sum(x, 0)), or torch's order (`positional`);
        an optional input may be None. The arguments are opaque here (AST nodes or values)."""
        if self.positional is None:
            n_in = min(self.arity if self.arity is not None else len(args), len(args))
            extra = args[n_in:]
            if len(extra) > len(self.attrs):
                low = self.arity - self.optional_inputs if self.arity is not None else 1
                raise SpecError(f"{self.name} takes {low} argument{'s' if low != 1 else ''}"
                                + (f" and keywords {', '.join(self.attrs)}" if self.attrs else "") + f", got {len(args)}")
            inputs = [a for a in args[:n_in] if not (self.optional_inputs and is_none(a))]
            return inputs, {**dict(zip(self.attrs, extra)), **kwargs}
        if len(args) > len(self.positional):
            raise SpecError(f"{self.name} takes at most {len(self.positional)} arguments "
                            f"({', '.join(self.positional)}), got {len(args)}")
        bound = dict(zip(self.positional, args))
        for k, v in kwargs.items():
            if k in bound:
                raise SpecError(f"{self.name}: {k} is given twice")
            if k not in self.positional:
                raise SpecError(f"unknown keyword {k!r}", hint=f"{self.name} takes {', '.join(self.positional)}")
            bound[k] = v
        inputs = []
        for k in self.input_names:
            if k in bound and not is_none(bound[k]):
                if len(inputs) < self.input_names.index(k):
                    raise SpecError(f"{self.name}: {k} is given without {self.input_names[len(inputs)]}")
                inputs.append(bound[k])
        return inputs, {k: v for k, v in bound.items() if k not in self.input_names}

    # ---- model state and modes (batch_norm's running statistics, dropout's step count)
    state_inputs: tuple[int, ...] = ()   # input positions that must be model state (Graph.states)
    shared_state: bool = False           # every node of the op updates its state alike (dropout's step count)
    input_init: dict[int, str] = {}      # init scheme of a param or state given at position i, unless it has its own

    def bind(self, graph, inputs: tuple, attrs: dict) -> tuple[tuple, dict]:
        """(inputs, attrs) of a new node before they are checked: an op may add an input the
        spec does not write (dropout's step count, a state value of the graph)."""
        return inputs, attrs

    def inference(self, b, node):
        """This node's value in inference (NAME_predict): batch_norm with its running statistics,
        dropout as the identity; None: the same as in training."""
        return None

    def state_updates(self, b, node) -> dict:
        """{input position: its new value} for the state inputs a train step updates (batch_norm's
        running mean and variance, dropout's step count); built with `b` like a VJP."""
        return {}

    def accepts_float_at(self, i: int) -> bool:
        return False

    def error_hint(self, inputs: tuple, error: GraphcError) -> str | None:
        """The hint of a shape error, which may name the operands as written (`did you mean h @ U?`)."""
        return error.hint

    def shape(self, *types: TensorType, **attrs) -> TensorType:
        raise NotImplementedError

    def reference(self, *arrays: np.ndarray, **attrs) -> np.ndarray:
        raise NotImplementedError

    def vjp(self, b, node, d_out) -> list:
        raise GraphcError(f"{self.name} has no VJP")

    def index_bounds(self, node) -> list[tuple]:
        """(value, bound) for each int32 input this node indexes with: the exclusive bound of its values
        (classes, table rows, one-hot depth). The generated C checks them before a call, and
        example and check inputs are drawn below them; [] for an op that indexes nothing."""
        return []

    def dim_bounds(self, node) -> list[tuple]:
        """(symbolic dim, bound) for each symbolic dim this node needs at most `bound` (x[:T] of an
        axis of 64 elements: T <= 64). Every call checks them (core/arguments.py; the C's
        workspace size is 0 past them, GRAPHC_ERR_BATCH); [] for most ops."""
        return []

    def distribution_inputs(self, node) -> list:
        """The real inputs this node reads as probability rows (each row along the last axis
        non-negative, summing to 1: cross-entropy's targets); example data is drawn so. []: none."""
        return []

    def positive_inputs(self, node) -> list:
        """The real inputs this node needs positive (log's and sqrt's, batch_norm's running variance):
        check's random data and main.c's example data draw them so. []: none."""
        return []

    def spec_text(self, node, arg) -> tuple[str, int]:
        """(text, precedence) of `node` in the spec language, for error messages and hints;
        `arg(v, need)` is an operand's text, parenthesized when it binds looser than `need`.
        Infix, prefix or postfix when the op declares one, else the call `name(x, key=value)`
        (attributes at their default left out)."""
        ins = node.inputs
        if self.infix and len(ins) == 2:
            sym, prec = self.infix
            return f"{arg(ins[0], prec)} {sym} {arg(ins[1], prec + 1)}", prec   # left-associative
        if self.prefix and len(ins) == 1:
            sym, prec = self.prefix
            return f"{sym}{arg(ins[0], prec)}", prec
        if self.postfix and len(ins) == 1:
            sym, prec = self.postfix
            return f"{arg(ins[0], ATOM)}{sym}", prec
        if self.positional is not None:         # torch's order: layer_norm(x, (4,), w, b, eps=0.001)
            given = dict(zip(self.input_names, ins))
            last = max(self.positional.index(k) for k in given)
            args = [arg(given[k]) if k in given else repr(node.attrs[k]) for k in self.positional[:last + 1]]
            args += [f"{k}={node.attrs[k]!r}" for k in self.positional[last + 1:]
                     if k in self.attrs and self.attrs[k] != node.attrs[k]]
            return f"{self.name}({', '.join(args)})", ATOM
        args = [arg(u) for u in ins]
        args += [f"{k}={val!r}" for k, val in node.attrs.items() if self.attrs.get(k, object()) != val]
        return f"{self.name}({', '.join(args)})", ATOM

    # ---- explain: the formula in the notes' notation (graphc/autodiff/explain.py is `p`)
    def notation(self, p, node, *args):
        """The Printed form (graphc/core/notation.py) of `node`, given its inputs' printed forms:
        by default the call f(x, ...) under `symbol`."""
        return p.call(self.symbol or self.name, args)

    def skeleton(self, p, node, top) -> str | None:
        """The shape check of a formula that expands this node (`(N×Nc)(Nc×Dh)` for a product),
        built from `p.skeleton(input, top)`; None: the node is a leaf, checked by its own shape."""
        return None

    def constant(self, node) -> float | None:
        """The number this node is, when it is a constant."""
        return None

    def logits(self, node):
        """The value whose softmax this node takes inside (cross_entropy's θ), which formulas
        write as ŷ; None for other ops."""
        return None

    def explain_notes(self, p, nodes) -> list[str]:
        """Lines explain prints under its title for these nodes of the backward graph (what a
        symbol stands for, a factor the notes leave out)."""
        return []

    def lower(self, b, node):
        """Composite ops rewrite themselves into kernel ops before codegen; None = emitted directly."""
        return None

    # ---- lowering to kernel records. `k` is the backend's scheduler (graphc/backend/schedule.py):
    # an op says which record it becomes by calling one of its builders (k.elementwise, k.reduce,
    # k.gemm, k.row_softmax, k.gather, k.flat_copy, k.permuted_copy, k.window_copy, k.concat).
    static: bool = False            # a compile-time scalar (const, size): a C expression, never a kernel

    def kernel(self, k, node) -> list:
        """The kernel records computing this node. Elementwise ops (a c_expr) are one loop."""
        if self.c_expr is not None:
            return k.elementwise(node)
        raise GraphcError(f"{self.name} has no kernel", hint="composite ops are lowered into kernel ops first")

    def c_code(self, k, node) -> str:
        """The elementwise C expression of `node` over {0}, {1}, ...: `c_expr` with each real
        attribute written {name} replaced by its literal (leaky_relu's {negative_slope})."""
        text = self.c_expr
        for key, value in node.attrs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                text = text.replace("{" + key + "}", k.real(float(value)))
        return text

    def inline_c(self, k, node, iter_shape, loads) -> str:
        """The C expression of this node's value inside its consumer's loop (where fusion inlined it)."""
        return k.apply(node, [k.expr(x, iter_shape, loads) for x in node.inputs])

    def static_c(self, k, node) -> str:
        """The C expression of this node's value when it is a compile-time scalar (fusion's `static`)."""
        return k.apply(node, [k.static_expr(x) for x in node.inputs])


# ------------------------------------------------------------------ shape helpers
def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting, with symbolic dims: equal, or one of them is 1."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(f"cannot broadcast: dims {x} and {y} differ (axis -{i})",
                             hint="broadcasting needs equal dims or a 1; check the order of operands")
    return tuple(reversed(out))


def numel(shape: Shape) -> tuple[int, tuple[str, ...]]:
    """Size of a shape as (constant factor, sorted symbolic factors)."""
    c, syms = 1, []
    for d in shape:
        if isinstance(d, str):
            syms.append(d)
        else:
            c *= d
    return c, tuple(sorted(syms))


def norm_axis(axis: int, rank: int, op: str) -> int:
    # a scalar has no axis at all (np.sum(scalar, axis=0) raises), so rank 0 rejects every axis
    if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank:
        raise ShapeError(f"axis {axis!r} is out of range for rank {rank}",
                         hint=f"an axis of a rank-{rank} value is from {-rank} to {rank - 1}" if rank else
                         "a scalar has no axis")
    return axis % rank


def require_float(t: TensorType, what: str = "input") -> None:
    if t.dtype != FLOAT:
        raise DTypeError(f"{what} must be real, got {t.dtype}")


# ------------------------------------------------------------------ VJP helpers
def three_mode_vjp(b, node, d, make, dx_identity: str) -> list:
    """The VJP of a convolution computed directly in three modes, each linear in both inputs and
    each the adjoint of another: forward z = f(x, w) (+ bias), input_grad g(δ, w) = dJ/dx and
    weight_grad h(x, δ) = dJ/dw. make(mode, a, b) builds the op in a mode. The input adjoint applies
    `dx_identity` (1 or 2: z = W x or x W by pixels), the weight's identity (5), a bias's (3)."""
    a, w = node.inputs[:2]
    mode = node.attrs["mode"]
    if mode == "forward":
        with b.because(node, dx_identity):
            out = [make("input_grad", d, w)]
        with b.because(node, "5"):
            out.append(make("weight_grad", a, d))
        if len(node.inputs) == 3:
            with b.because(node, "3"):
                out.append(b.apply("sum", d, axis=(0, 2, 3)))
        return out
    if mode == "input_grad":
        with b.because(node, dx_identity):
            return [make("forward", d, w), make("weight_grad", d, a)]
    with b.because(node, "5"):
        return [make("input_grad", w, d), make("forward", a, d)]


def unbroadcast(b, grad, shape: Shape):
    """Identity (3) plus the sum over broadcast axes: bring a gradient back to `shape`."""
    return grad if grad.shape == shape else b.apply("sum_to", grad, shape=shape)


class Unary(OpDef):
    """An elementwise f(x). VJP, identity (4): dJ/dx = dJ/dz ∘ f'(x), never diag(f'(x))."""

    identity = "4"
    np_fn: Callable = None

    def shape(self, x):
        require_float(x)
        return x

    def reference(self, x):
        return type(self).np_fn(x)

    def derivative(self, b, x, y):
        """f'(x) as a graph value; may read the output y instead of x (relu, tanh, sigmoid, exp)."""
        raise NotImplementedError

    def vjp(self, b, node, d_out):
        with b.because(node, self.identity):
            return [b.mul(d_out, self.derivative(b, node.inputs[0], node.output, **node.attrs))]


class Binary(OpDef):
    """An elementwise op of two operands with NumPy broadcasting."""

    arity = 2

    def shape(self, x, y):
        require_float(x, "argument 1")
        require_float(y, "argument 2")
        return TensorType(broadcast_shapes(x.shape, y.shape))

    def partials(self, b, x, y, z, d):
        """(dJ/dx, dJ/dy) before undoing the broadcast, or None where no gradient flows."""
        raise NotImplementedError

    def vjp(self, b, node, d_out):
        x, y = node.inputs
        with b.because(node, self.identity):
            parts = self.partials(b, x, y, node.output, d_out)
            return [None if g is None else unbroadcast(b, g, v.shape) for g, v in zip(parts, (x, y))]
