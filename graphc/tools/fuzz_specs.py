"""Random valid specs for the differential fuzzer (graphc/tools/fuzz.py): DAGs of 3-20 ops over
every public op, as TOML text anyone can rerun.

The generator is a hypothesis strategy (`specs()`), so a failing spec shrinks to a minimal one.
It builds the graph line by line. Each step draws an entry of `ENTRIES`, the op table: one
entry per op, a function that draws the op's operands (a value already in the graph, which
makes values used more than once and params shared, or a new input or param of a fitting
shape), its attributes, and keeps them in the op's valid domain. The last step reduces the
values nothing reads yet into a scalar loss and outputs, so every node is live.

Adding an op (the CNN and sequence issues' conv2d, pooling, rnn cells, ...) is one function
under `@entry("name")` here; `tests/test_fuzz_random.py` fails while a public op of
graphc.ops.REGISTRY has no entry.

Domains are kept valid by construction, with a rough magnitude and lower bound carried by
every value (`Val`): log, sqrt and the denominators of / get positive operands (a positive
input, or a wrapper such as 1 + square(v)); exp gets an operand of magnitude at most 2;
norm2 never gets a value that may hold an all-zero row (a relu's); labels and ids are int32
inputs whose bounds the ops set (graphc.native.export.label_bounds). Values that grow past
1e3 are scaled back by a constant.

The data's domain is in the input names, so a spec file is all a rerun needs:
x<k> real N(0, 1) inputs; p<k> positive inputs in [0.5, 1.5]; t<k> target rows (each sums to 1);
y<k> int32 labels or ids; w<k> params. `arrays()` in fuzz.py draws them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from hypothesis import strategies as st

DIMS = (1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 129, 257)   # across GEMM tiles, KC and vector widths
BATCH = "N"
MAX_ROW = 4096          # elements of a value per row of the batch (the product of its fixed dims)
MAX_FIXED = 17_000      # elements of a value without the batch dim (a param [129, 129])
MAX_NODES = 20
MIN_NODES = 3
BIG = 1e3               # a value whose magnitude passes this is scaled back
SCALES = ("0.5", "2", "0.1", "3", "0.25", "1.5", "10")
ADDENDS = ("1", "0.5", "2", "-1", "0.25")
POSITIVE = 1e-3         # `low` from which a value may be a log's or a denominator's operand


@dataclass
class Val:
    """A value of the spec being built: a declared input or param, or a [graph] line."""
    name: str
    shape: tuple                    # ints and "N"
    kind: str = "node"              # "input", "param" or "node"
    int: bool = False               # int32 labels or ids
    mag: float = 1.0                # rough magnitude (rms) of its elements
    low: float = 0.0                # a lower bound of every element when positive, else 0
    sparse: bool = False            # may hold exact zeros (or an all-zero row): a relu's, a sign's
    params: frozenset = frozenset()     # the params it depends on
    inputs: frozenset = frozenset()     # the inputs it depends on
    uses: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        return BATCH in self.shape

    @property
    def row(self) -> int:
        """Elements per batch row: the product of the fixed dims."""
        return math.prod(d for d in self.shape if d != BATCH)

    @property
    def last_fixed(self) -> bool:
        return self.rank > 0 and self.shape[-1] != BATCH


@dataclass
class Spec:
    """A generated spec: its TOML text and what went into it."""
    text: str
    entries: list[str]              # the entries drawn, in order (the generator's own coverage)
    nodes: int                      # [graph] and [outputs] lines written
    params_only_outputs: list[str] = field(default_factory=list)   # outputs that need no data


@dataclass(frozen=True)
class Entry:
    name: str                       # the op (or pattern) it draws
    ops: tuple[str, ...]            # the public ops its lines can contain
    draw: Callable                  # draw(builder) -> None: adds one or more lines
    weight: int = 1                 # how often it is drawn, against 1 for most


ENTRIES: list[Entry] = []


def entry(name: str, ops: tuple[str, ...] | None = None, weight: int = 1):
    """Register `fn(builder)` as the table's entry for op `name`."""
    def register(fn):
        ENTRIES.append(Entry(name, tuple(ops or (name,)), fn, weight))
        return fn
    return register


def covered_ops() -> set[str]:
    return {op for e in ENTRIES for op in e.ops}


def _broadcast(a: tuple, b: tuple) -> tuple:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def _compatible(a: tuple, b: tuple) -> bool:
    """Whether two shapes broadcast together (NumPy's rule)."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


class Builder:
    """The spec being drawn: dims, inputs, params, lines, and the values operands come from."""

    def __init__(self, draw):
        self.draw = draw
        self.pool: list[int] = list(draw(st.lists(st.sampled_from(DIMS), min_size=1, max_size=3, unique=True)))
        self.batched = not self.rarely(6)        # most models have a batch dim; some are one column
        self.inputs: dict[str, Val] = {}
        self.params: dict[str, Val] = {}
        self.states: dict[str, Val] = {}    # model state: batch_norm's running statistics
        self.lines: dict[str, str] = {}
        self.vals: list[Val] = []                # every float value, in creation order
        self.ints: list[Val] = []
        self.outputs: dict[str, str] = {}
        self.entries: list[str] = []
        self.count = 0                           # ops written, roughly: the DAG's size
        self.params_only: list[str] = []
        self.wrt: list[str] = []
        self._next: dict[str, int] = {}

    # ------------------------------------------------------------------ choices
    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def rarely(self, k: int) -> bool:
        """True with probability 1/k; shrinks to False."""
        return self.draw(st.integers(0, k - 1)) == k - 1

    def index(self, n: int) -> int:
        return self.draw(st.integers(0, n - 1))

    def name(self, prefix: str) -> str:
        k = self._next.get(prefix, 0) + 1
        self._next[prefix] = k
        return f"{prefix}{k}"

    def dim(self, room: int = MAX_FIXED) -> int:
        """A dim of the spec's pool (or, rarely, a new one) of at most `room`."""
        fits = [d for d in self.pool if d <= room]
        if not fits or self.rarely(5):
            fresh = [d for d in DIMS if d <= room]
            if not fresh:
                return 1
            d = self.pick(fresh)
            if d not in self.pool:
                self.pool.append(d)
            return d
        return self.pick(fits)

    def shape(self, rank: int, lead: tuple = (), last: int | None = None, batch: bool | None = None) -> tuple:
        """A new shape: the batch dim first when `batch` (default: the model's), then fixed dims."""
        batch = self.batched if batch is None else batch
        shape = list(lead) if lead else ([BATCH] if batch and rank > 0 else [])
        room = MAX_ROW if BATCH in shape else MAX_FIXED
        fixed = math.prod(d for d in shape if d != BATCH)
        while len(shape) < rank:
            if last is not None and len(shape) == rank - 1:
                shape.append(last)
                break
            d = self.dim(max(1, room // (fixed * (last or 1))))
            shape.append(d)
            fixed *= d
        return tuple(shape)

    # ------------------------------------------------------------------ leaves
    def new_input(self, shape: tuple, domain: str = "x") -> Val:
        """An input: x real, p positive, t target rows, y int32 labels or ids."""
        name = self.name(domain)
        v = Val(name, tuple(shape), "input", int=domain == "y", mag=1.0,
                low={"p": 0.5, "t": 0.0}.get(domain, 0.0), inputs=frozenset([name]))
        if domain == "t":
            v.mag = 1.0 / max(1, shape[-1] if shape and shape[-1] != BATCH else 1)
        self.inputs[name] = v
        (self.ints if v.int else self.vals).append(v)
        return v

    def new_param(self, shape: tuple) -> Val:
        name = self.name("w")
        mag = 1.0 / math.sqrt(shape[-1]) if len(shape) >= 2 else 0.5   # as arrays() draws them
        v = Val(name, tuple(shape), "param", mag=mag, params=frozenset([name]))
        self.params[name] = v
        self.vals.append(v)
        return v

    def state(self, shape: tuple) -> Val:
        """New model state of this shape (a batch_norm's running statistic), s<k>: never shared
        (two batch norms may not update one running mean), never trained."""
        v = Val(self.name("s"), tuple(shape), kind="state", uses=1)   # drawn for the line that reads it
        self.states[v.name] = v
        return v

    def param(self, shape: tuple) -> Val:
        """A param of this shape: one the spec has (shared), or a new one."""
        shape = tuple(shape)
        same = [v for v in self.params.values() if v.shape == shape]
        if same and not self.rarely(3):
            return same[self.index(len(same))] if len(same) > 1 else same[0]
        return self.new_param(shape)

    def operand(self, ok: Callable[[Val], bool] = lambda v: True, make: Callable[[], Val] | None = None,
                fresh: int = 4) -> Val:
        """A float value the spec has that passes `ok` (the most recent ones likelier), or, about
        once in `fresh` draws or when there is none, make()."""
        found = [v for v in reversed(self.vals) if ok(v)]
        if found and not (make is not None and self.rarely(fresh)):
            return found[min(self.index(len(found)), self.index(len(found)))] if len(found) > 1 else found[0]
        if make is None:
            make = lambda: self.new_input(self.shape(2))   # noqa: E731
        return make()

    def data(self, ok: Callable[[Val], bool] = lambda v: True, ranks: tuple[int, ...] = (2, 1, 3, 0),
             last_fixed: bool = False) -> Val:
        """An operand passing `ok` of one of `ranks` (with a fixed last dim if asked): a value of
        the spec, or a new real input."""
        if last_fixed and self.batched:
            ranks = tuple(r for r in ranks if r >= 2) or (2,)
        elif last_fixed:
            ranks = tuple(r for r in ranks if r >= 1) or (1,)

        def make():
            return self.new_input(self.shape(self.pick(ranks)))
        return self.operand(lambda v: ok(v) and v.rank in ranks and (v.last_fixed or not last_fixed), make)

    def ids(self, shape: tuple) -> Val:
        """int32 labels or ids of this shape: ones the spec has (their bound is the smallest of
        the ops that read them), or new ones."""
        same = [v for v in self.ints if v.shape == tuple(shape)]
        if same and not self.rarely(3):
            return same[self.index(len(same))] if len(same) > 1 else same[0]
        return self.new_input(shape, "y")

    # ------------------------------------------------------------------ lines
    def line(self, expr: str, shape: tuple, operands: list[Val], mag: float = 1.0, low: float = 0.0,
             sparse: bool = False, ops: int = 1) -> Val:
        """Add `vK = "expr"` to [graph]; a value grown past BIG is scaled back by a constant."""
        if mag > BIG:
            scale = 10.0 ** -round(math.log10(mag))
            expr, mag, low = f"({expr}) * {scale:g}", mag * scale, low * scale
            ops += 1
        name = self.name("v")
        self.lines[name] = expr
        for v in operands:
            v.uses += 1
        v = Val(name, tuple(shape), mag=mag, low=low if low >= POSITIVE else 0.0, sparse=sparse,
                params=frozenset().union(*(o.params for o in operands)),
                inputs=frozenset().union(*(o.inputs for o in operands)))
        self.vals.append(v)
        self.count += ops
        return v

    def positive(self, v: Val) -> tuple[str, float, int]:
        """(text, lower bound, ops added) of a positive stand-in for v: v itself when it is
        positive, else a wrapper that is."""
        if v.low >= POSITIVE:
            return v.name, v.low, 0
        form = self.pick(["(1 + square({}))", "(sigmoid({}) + 0.5)", "exp(tanh({}))", "({} ** 2 + 0.25)"])
        low = {"(1 + square({}))": 1.0, "(sigmoid({}) + 0.5)": 0.5, "exp(tanh({}))": 0.36,
               "({} ** 2 + 0.25)": 0.25}[form]
        return form.format(v.name), low, 2

    def bounded(self, v: Val, limit: float = 2.0) -> tuple[str, float]:
        """(text, magnitude) of v scaled down to magnitude at most `limit` (exp's operand)."""
        if v.mag <= limit:
            return v.name, v.mag
        scale = 10.0 ** -math.ceil(math.log10(v.mag / limit))
        return f"({v.name} * {scale:g})", v.mag * scale

    # ------------------------------------------------------------------ the spec
    def finish(self) -> None:
        """The loss J (a sum of scalar terms over values nothing reads yet, depending on at least
        one param), the outputs (the other unread values; sometimes an intermediate value, an
        input or param echoed, a function of the params alone), and [grad]."""
        sinks = [v for v in self.vals if v.kind == "node" and v.uses == 0]
        with_params = [v for v in sinks if v.params] or [v for v in self.vals if v.kind == "node" and v.params]
        if not with_params:                        # nothing reads a param yet: a scale does
            v = (sinks or [u for u in self.vals if u.kind == "node"])[-1]
            w = self.param(v.shape[-1:] if v.last_fixed else ())
            with_params = [self.line(f"{v.name} * {w.name}", v.shape, [v, w], mag=v.mag * w.mag, sparse=v.sparse)]
            sinks = [u for u in sinks if u is not v] + with_params
        terms = [with_params[self.index(len(with_params))]]
        others = [v for v in sinks if v not in terms]
        while others and len(terms) < 3 and not self.rarely(3):
            terms.append(others.pop(self.index(len(others))))
        parts = [scalar_term(self, v) for v in terms]
        loss_text = " + ".join(parts)
        for v in terms:
            v.uses += 1
        self.lines["J"] = loss_text
        self.count += sum(part != v.name for part, v in zip(parts, terms))
        self.outputs["loss"] = "J"
        for v in (v for v in self.vals if v.kind == "node" and v.uses == 0):
            self.outputs[self.name("out")] = v.name
            v.uses += 1
        if self.rarely(3):                         # an output deeper inside the graph
            inner = [v for v in self.vals if v.kind == "node" and v.name not in self.outputs.values()]
            if inner:
                self.outputs[self.name("out")] = inner[self.index(len(inner))].name
        if self.rarely(4):                         # an output that needs no data
            self.params_only.append(params_only_output(self))
        if self.rarely(6):                         # one value under a second output name
            named = [e for k, e in self.outputs.items() if k != "loss"] or ["J"]
            self.outputs[self.name("out")] = named[self.index(len(named))]
        if self.rarely(8):                         # an input (labels too) or param given back as it is
            leaves = [v for v in [*self.vals, *self.ints] if v.kind != "node" and v.uses]
            if leaves:
                leaf = leaves[self.index(len(leaves))]
                self.outputs[self.name("out")] = leaf.name
                leaf.uses += 1
        loss_params = set().union(*(v.params for v in terms))
        wrt = [w for w in self.params if w in loss_params]
        if self.rarely(4):                         # every param, some with a zero gradient
            wrt = [w for w, v in self.params.items() if v.uses]
        if self.rarely(4):                         # and an input's gradient
            xs = [k for k in set().union(*(v.inputs for v in terms)) if not self.inputs[k].int]
            if xs:
                wrt.append(sorted(xs)[self.index(len(xs))])
        if self.rarely(4):
            wrt.reverse()                          # in another order than declared
        self.wrt = wrt

    def text(self) -> str:
        inputs = [v for v in self.inputs.values() if v.uses]      # an entry may have drawn one it did not use
        params = [v for v in self.params.values() if v.uses]
        used = sorted({d for v in [*inputs, *params, *self.states.values()] for d in v.shape if d != BATCH})
        batch = any(v.batched for v in inputs)
        lines = ['name = "fz"', "", "[dims]"]
        if batch:
            lines.append('N = "batch"')
        lines += [f"D{d} = {d}" for d in used]

        def decl(v: Val) -> str:
            shape = "[" + ", ".join(f'"{"N" if d == BATCH else f"D{d}"}"' for d in v.shape) + "]"
            return f'{v.name} = {{ shape = {shape}, dtype = "int32" }}' if v.int else f"{v.name} = {shape}"

        lines += ["", "[inputs]", *(decl(v) for v in inputs)]
        lines += ["", "[params]", *(decl(v) for v in params)]
        states = [v for v in self.states.values() if v.uses]
        if states:
            lines += ["", "[state]", *(decl(v) for v in states)]
        lines += ["", "[graph]", *(f'{k} = "{e}"' for k, e in self.lines.items())]
        lines += ["", "[outputs]", *(f'{k} = "{e}"' for k, e in self.outputs.items())]
        lines += ["", "[grad]", 'of = "J"', "wrt = [" + ", ".join(f'"{w}"' for w in self.wrt) + "]"]
        return "\n".join(lines) + "\n"


def scalar_term(b: Builder, v: Val) -> str:
    """A scalar of v for the loss: a loss op, a reduction, or v itself when it is a scalar."""
    if v.rank == 0:
        return v.name if not b.rarely(3) else f"{v.name} * {b.pick(SCALES)}"
    forms = ["mean", "sum", "meansq", "mse"]
    if v.last_fixed:
        forms += ["ce_int", "ce_real"]
    form = b.pick(forms)
    if form == "mean":
        return f"mean({v.name})"
    if form == "sum":
        return f"sum({v.name}) * {b.pick(SCALES)}" if b.rarely(2) else f"sum({v.name})"
    if form == "meansq":
        return f"mean(square({v.name}))" if not b.rarely(2) else f"mean({v.name} ** 2)"
    if form == "mse":
        t = b.operand(lambda u: u.shape == v.shape and u is not v, lambda: b.new_input(v.shape))
        t.uses += 1
        return f"mse({v.name}, {t.name})"
    if form == "ce_int":
        y = b.ids(v.shape[:-1])
        y.uses += 1
        return f"cross_entropy({v.name}, {y.name})"
    t = b.operand(lambda u: u.shape == v.shape and u is not v, lambda: b.new_input(v.shape, "t"), fresh=2)
    t.uses += 1
    return f"cross_entropy({v.name}, {t.name})"


def params_only_output(b: Builder) -> str:
    """An output computed from a param alone (no input): what forward(W=...) must give."""
    w = list(b.params.values())[b.index(len(b.params))]
    w.uses += 1
    form = b.pick(["norm2", "sum", "softmax", "square", "mean"] if w.rank else ["square", "exp"])
    text = {"norm2": f"norm2({w.name})", "sum": f"sum({w.name}, axis=-1)", "softmax": f"softmax({w.name})",
            "square": f"square({w.name})", "mean": f"mean({w.name})", "exp": f"exp({w.name})"}[form]
    name = b.name("out")
    b.outputs[name] = text
    b.count += 1
    return name


# ====================================================================== the op table
# Elementwise unary ops: (spec form, operand domain, magnitude, lower bound, sparse).
def _unary(op: str, form: str, domain: str = "any", mag=lambda m: m, low=lambda v: 0.0, sparse=None):
    def draw(b: Builder):
        v = b.data()
        ops = 1
        if domain == "positive":
            text, lo, extra = b.positive(v)
            ops += extra
            v_for = Val(v.name, v.shape, mag=v.mag, low=lo)
        elif domain == "bounded":
            text, m = b.bounded(v)
            v_for = Val(v.name, v.shape, mag=m, low=0.0)
        else:
            text, v_for = v.name, v
        b.line(form.format(text), v.shape, [v], mag=mag(v_for.mag), low=low(v_for),
               sparse=v.sparse if sparse is None else sparse, ops=ops)
    entry(op)(draw)


_unary("relu", "relu({})", mag=lambda m: m, sparse=True)
_unary("sigmoid", "sigmoid({})", mag=lambda m: 0.5,
       low=lambda v: 1 / (1 + math.exp(min(4 * v.mag, 700))), sparse=False)
_unary("tanh", "tanh({})", mag=lambda m: min(m, 1.0))
_unary("exp", "exp({})", "bounded", mag=lambda m: math.exp(m), low=lambda v: math.exp(-4 * v.mag), sparse=False)
_unary("log", "log({})", "positive", mag=lambda m: 1 + abs(math.log(max(m, 1e-3))), sparse=False)
_unary("sqrt", "sqrt({})", "positive", mag=lambda m: math.sqrt(m), low=lambda v: math.sqrt(v.low))
_unary("neg", "-{}")
_unary("sign", "sign({})", mag=lambda m: 1.0, sparse=True)
_unary("leaky_relu", "leaky_relu({}, negative_slope=0.1)", mag=lambda m: m)
_unary("elu", "elu({})", mag=lambda m: m + 1)
_unary("softplus", "softplus({})", mag=lambda m: m + 1, sparse=False)
_unary("gelu", "gelu({})", mag=lambda m: m)
_unary("silu", "silu({})", mag=lambda m: m)
_unary("erf", "erf({})", mag=lambda m: min(m, 1.0))


@entry("gelu_tanh", ops=("gelu",))
def gelu_tanh(b: Builder):
    v = b.data()
    b.line(f"gelu({v.name}, approximate='tanh')", v.shape, [v], mag=v.mag, sparse=False)


@entry("where")
def where(b: Builder):
    """where(relu(c), a, o): the mask relu of a new N(0, 1) input c (zero about half the time),
    shaped to broadcast with a (the same, a suffix, axes of 1, a scalar); o a value, a param or a
    constant, shaped likewise."""
    a = b.data()
    mask = b.new_input(_partner_shape(b, a))
    shape = _partner_shape(b, a)
    if not _compatible(shape, mask.shape):      # two partners of a that widen the same axis of 1 differently
        shape = mask.shape
    if not shape and b.rarely(2):
        other = Val(b.pick(ADDENDS), (), mag=1.0)
        operands = [mask, a]
    else:
        def make():
            return b.new_input(shape) if BATCH in shape else b.param(shape)
        other = b.operand(lambda v: v.shape == shape and v is not a, make)
        operands = [mask, a, other]
    out = _broadcast(_broadcast(mask.shape, a.shape), other.shape)
    text = other.name if not other.name.startswith("-") else f"({other.name})"
    b.line(f"where(relu({mask.name}), {a.name}, {text})", out, operands, mag=max(a.mag, other.mag),
           low=min(a.low, other.low), sparse=True, ops=2)


@entry("square")
def square(b: Builder):
    v = b.data()
    text = f"square({v.name})" if not b.rarely(3) else f"{v.name} ** 2"
    b.line(text, v.shape, [v], mag=v.mag ** 2, low=v.low ** 2, sparse=v.sparse)


def _partner_shape(b: Builder, a: Val) -> tuple:
    """The shape of the other operand of an elementwise binary op on a: the same, a suffix (a bias),
    some axes of 1 (a row or a column), a scalar, or one broadcasting a in turn (a's axes of 1
    given dims: an outer sum)."""
    modes = ["same", "suffix", "ones", "scalar"]
    if 1 in a.shape:
        modes.append("outer")
    mode = b.pick(modes) if a.rank else "same"
    if mode == "same":
        return a.shape
    if mode == "suffix":
        return a.shape[b.index(a.rank) + 1:] if a.rank > 1 else ()
    if mode == "scalar":
        return ()
    if mode == "ones":
        keep = [b.draw(st.booleans()) for _ in a.shape]
        if all(keep):
            keep[b.index(a.rank)] = False
        return tuple(d if k else 1 for d, k in zip(a.shape, keep))
    row = a.row
    return tuple(b.dim(max(1, (MAX_ROW if a.batched else MAX_FIXED) // row)) if d == 1 else d for d in a.shape)


def _binary(op: str, symbol: str):
    def draw(b: Builder):
        a = b.data()
        shape = _partner_shape(b, a)
        const = not shape and b.rarely(2)
        if const:
            c = Val(b.pick(SCALES if op in ("mul", "div") else ADDENDS), (), mag=1.0)
            c.low = float(c.name) if float(c.name) > 0 else 0.0
        else:
            def make():
                if BATCH in shape or (not b.batched and shape and b.rarely(2)):
                    return b.new_input(shape, "p" if op == "div" and b.rarely(2) else "x")
                return b.param(shape)
            c = b.operand(lambda v: v.shape == shape, make)
        left, right = (c, a) if (b.rarely(3) and op != "div") or (op == "div" and b.rarely(4)) else (a, c)
        out = _broadcast(left.shape, right.shape)
        ops = 1
        rtext = right.name
        if op == "div":
            rtext, rlow, extra = b.positive(right)
            ops += extra
        if op in ("add", "sub"):
            mag = max(left.mag, right.mag)
            low = left.low + right.low if op == "add" and left.low and right.low else 0.0
            sparse = left.sparse and right.sparse
        elif op == "mul":
            mag, low, sparse = left.mag * right.mag, left.low * right.low, left.sparse or right.sparse
        else:
            mag, low, sparse = left.mag / rlow, 0.0, left.sparse
        ltext = left.name if not left.name.startswith("-") else f"({left.name})"
        if rtext.startswith("-"):
            rtext = f"({rtext})"
        b.line(f"{ltext} {symbol} {rtext}", out, [a] if const else [left, right], mag=mag, low=low,
               sparse=sparse, ops=ops)
    entry(op)(draw)


_binary("add", "+")
_binary("sub", "-")
_binary("mul", "*")
_binary("div", "/")


MATMUL_FORMS = ["a @ W.T", "a @ W", "W @ a", "a.T @ b", "a @ v", "v @ W", "u @ v", "a @ b.T"]


@entry("matmul", ops=("matmul", "transpose"), weight=4)
def matmul(b: Builder):
    """NumPy's 1-D and 2-D forms, with .T on either side: x Wᵀ, x W, W x (the notes' column form),
    aᵀ b (a contraction over the batch), matrix-vector, vector-matrix, vector-vector, a bᵀ."""
    form = b.pick(MATMUL_FORMS)
    if form in ("a @ W.T", "a @ W"):
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        room = (MAX_ROW if a.batched else MAX_FIXED)
        m = b.dim(max(1, min(room, MAX_FIXED // k)))
        if form == "a @ W.T":
            w = b.param((m, k))
            b.line(f"{a.name} @ {w.name}.T", (a.shape[0], m), [a, w], mag=a.mag * w.mag * math.sqrt(k), ops=2)
        else:
            w = b.param((k, m))
            b.line(f"{a.name} @ {w.name}", (a.shape[0], m), [a, w], mag=a.mag * w.mag * math.sqrt(k))
    elif form == "W @ a":
        a = b.operand(lambda v: v.rank in (1, 2) and v.shape[0] != BATCH,
                      lambda: b.new_input(b.shape(1, batch=False)))
        k = a.shape[0]
        m = b.dim(max(1, min(MAX_FIXED // k, (MAX_ROW if a.batched else MAX_FIXED) // max(1, a.row // k))))
        w = b.param((m, k))
        b.line(f"{w.name} @ {a.name}", (m,) + a.shape[1:], [w, a], mag=a.mag * w.mag * math.sqrt(k))
    elif form == "a.T @ b":
        a = b.data(ranks=(2,))
        r = a.shape[0]
        room = MAX_FIXED // max(1, a.shape[1] if a.shape[1] != BATCH else 300)
        c = b.operand(lambda v: v.rank == 2 and v.shape[0] == r and (v.shape[1] != BATCH or a.shape[1] != BATCH),
                      lambda: b.new_input((r, b.dim(max(1, room)))) if r == BATCH else b.param((r, b.dim(max(1, room)))))
        out = (a.shape[1], c.shape[1])
        if math.prod(300 if d == BATCH else d for d in out) > 4 * MAX_FIXED:
            return
        k = 300 if r == BATCH else r
        b.line(f"{a.name}.T @ {c.name}", out, [a, c], mag=a.mag * c.mag * math.sqrt(k), ops=2)
    elif form == "a @ v":
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        v = b.operand(lambda u: u.shape == (k,), lambda: b.param((k,)))
        b.line(f"{a.name} @ {v.name}", (a.shape[0],), [a, v], mag=a.mag * v.mag * math.sqrt(k))
    elif form == "v @ W":
        v = b.operand(lambda u: u.rank == 1 and u.last_fixed, lambda: b.new_input(b.shape(1, batch=False)))
        k = v.shape[0]
        m = b.dim(max(1, MAX_FIXED // k))
        w = b.param((k, m))
        b.line(f"{v.name} @ {w.name}", (m,), [v, w], mag=v.mag * w.mag * math.sqrt(k))
    elif form == "u @ v":
        u = b.operand(lambda x: x.rank == 1 and x.last_fixed, lambda: b.new_input(b.shape(1, batch=False)))
        v = b.operand(lambda x: x.shape == u.shape, lambda: b.param(u.shape))
        b.line(f"{u.name} @ {v.name}", (), [u, v], mag=u.mag * v.mag * math.sqrt(u.shape[0]))
    else:
        a = b.data(ranks=(2,), last_fixed=True)
        k = a.shape[-1]
        c = b.operand(lambda v: v.rank == 2 and v.shape[-1] == k, lambda: b.param((b.dim(max(1, MAX_FIXED // k)), k)))
        out = (a.shape[0], c.shape[0])
        if math.prod(300 if d == BATCH else d for d in out) > 8 * MAX_FIXED:
            return
        b.line(f"{a.name} @ {c.name}.T", out, [a, c], mag=a.mag * c.mag * math.sqrt(k), ops=2)


@entry("transpose")
def transpose(b: Builder):
    v = b.data(ranks=(2, 1))
    b.line(f"{v.name}.T", tuple(reversed(v.shape)), [v], mag=v.mag, low=v.low, sparse=v.sparse)


def _reduce(op: str):
    def draw(b: Builder):
        v = b.data(ranks=(2, 1, 3))
        axis = b.pick([None, *range(v.rank), *range(-v.rank, 0)])
        keep = b.rarely(3)
        args = [v.name] + ([f"axis={axis}"] if axis is not None else []) + (["keepdims=True"] if keep else [])
        if axis is None:
            shape, count = ((1,) * v.rank if keep else ()), math.prod(300 if d == BATCH else d for d in v.shape)
        else:
            ax = axis % v.rank
            count = 300 if v.shape[ax] == BATCH else v.shape[ax]
            shape = v.shape[:ax] + ((1,) if keep else ()) + v.shape[ax + 1:]
        mag = v.mag * math.sqrt(count) if op == "sum" else v.mag
        b.line(f"{op}({', '.join(args)})", shape, [v], mag=mag, low=v.low, sparse=v.sparse)
    entry(op)(draw)


_reduce("sum")
_reduce("mean")


@entry("max")
def max_(b: Builder):
    """Over all elements, one axis or a pair of axes, of a value without exact zeros (ties)."""
    v = b.data(lambda u: not u.sparse, ranks=(2, 3, 4, 1))
    axis = b.pick([None, *range(v.rank)] + ([(1, v.rank - 1)] if v.rank >= 3 else []))
    keep = b.rarely(3)
    axes = range(v.rank) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    shape = tuple(1 if a in axes else d for a, d in enumerate(v.shape) if keep or a not in axes)
    args = [v.name] + ([f"axis={axis}"] if axis is not None else []) + (["keepdims=True"] if keep else [])
    b.line(f"max({', '.join(args)})", shape, [v], mag=v.mag, low=v.low)


# ---------------------------------------------------------------- convolutions and pooling (NCHW)
def _image(b: Builder, rank: int = 4, dense: bool = False) -> Val:
    """[N, C, H, W] (or [N, C, L]): a value whose channel and spatial dims are fixed."""
    return b.data(lambda u: BATCH not in u.shape[1:] and not (dense and u.sparse), ranks=(rank,))


def _window(b: Builder, sizes: tuple, pool: bool = False):
    """(kernel, stride, padding) per spatial dim of `sizes`, each kernel fitting its padded dim."""
    pad, stride = b.pick([0, 1]), b.pick([1, 2])
    kernel = []
    for n in sizes:
        fits = [k for k in (1, 2, 3, 5) if k <= n + 2 * pad and (not pool or 2 * pad <= k)]
        if not fits:
            return None
        kernel.append(b.pick(fits))
    return kernel, stride, pad


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


@entry("conv2d")
def conv2d(b: Builder):
    x = _image(b)
    n, c, h, w = x.shape
    win = _window(b, (h, w))
    if win is None:
        return
    (kh, kw), stride, pad = win
    groups = b.pick(sorted({g for g in (1, 2, c) if c % g == 0}))
    cout = groups * b.pick([1, 2, 4])
    oh, ow = _out(h, kh, stride, pad), _out(w, kw, stride, pad)
    if cout * oh * ow > MAX_ROW or cout > 64:
        return
    k = b.param((cout, c // groups, kh, kw))
    bias = b.param((cout,)) if not b.rarely(3) else None
    args = [x.name, k.name] + ([bias.name] if bias else [])
    args += [f"stride={stride}"] * (stride != 1) + [f"padding={pad}"] * (pad != 0) + [f"groups={groups}"] * (groups != 1)
    b.line(f"conv2d({', '.join(args)})", (n, cout, oh, ow), [x, k] + ([bias] if bias else []),
           mag=x.mag * k.mag * math.sqrt(c // groups * kh * kw) + (0.5 if bias else 0.0))


@entry("conv1d")
def conv1d(b: Builder):
    x = _image(b, rank=3)
    n, c, length = x.shape
    win = _window(b, (length,))
    if win is None:
        return
    (k,), stride, pad = win
    cout = b.pick([1, 2, 4])
    lo = _out(length, k, stride, pad)
    if cout * lo > MAX_ROW:
        return
    w = b.param((cout, c, k))
    b.line(f"conv1d({x.name}, {w.name}, stride={stride}, padding={pad})", (n, cout, lo), [x, w],
           mag=x.mag * w.mag * math.sqrt(c * k))


def _pool_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooled size: rounded up with ceil_mode, the last window starting inside the input
    or its left padding."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def _pool(op: str):
    def draw(b: Builder):
        """The window of _window, and now and then torch's other keywords: ceil_mode, max's
        dilation, avg's count_include_pad=False and divisor_override."""
        x = _image(b, dense=op == "max_pool2d")       # a max over exact zeros would tie
        n, c, h, w = x.shape
        win = _window(b, (h, w), pool=True)
        if win is None:
            return
        (kh, kw), stride, pad = win
        keys, ceil, dil = [], b.rarely(3), 1
        if ceil:
            keys.append("ceil_mode=True")
        # (the dilated window fits inside the input itself: with padding, a window over a narrow input
        # could have every tap in the padding, a max of nothing, -inf, in torch too)
        if op == "max_pool2d" and b.rarely(4) and all(2 * (k - 1) + 1 <= m for k, m in ((kh, h), (kw, w))):
            dil = 2
            keys.append("dilation=2")
        if op == "avg_pool2d" and b.rarely(3):
            keys.append("count_include_pad=False")
        if op == "avg_pool2d" and b.rarely(5):
            keys.append(f"divisor_override={b.pick([2, 3])}")
        b.line(f"{op}({', '.join([x.name, f'({kh}, {kw})', f'stride={stride}', f'padding={pad}'] + keys)})",
               (n, c, _pool_out(h, kh, stride, pad, dil, ceil), _pool_out(w, kw, stride, pad, dil, ceil)), [x],
               mag=x.mag, low=x.low if op == "max_pool2d" or (pad == 0 and not ceil and not keys) else 0.0,
               sparse=x.sparse and op != "max_pool2d")
    entry(op)(draw)


_pool("max_pool2d")
_pool("avg_pool2d")


@entry("adaptive_avg_pool2d")
def adaptive_avg_pool2d(b: Builder):
    x = _image(b)
    b.line(f"adaptive_avg_pool2d({x.name}, 1)", x.shape[:2] + (1, 1), [x], mag=x.mag, low=x.low, sparse=x.sparse)


def _factor(n: int) -> list[tuple[int, ...]]:
    """Ways to write n as one or two factors (and with an axis of 1)."""
    out = [(n,), (n, 1), (1, n)]
    out += [(a, n // a) for a in range(2, n) if n % a == 0 and a * a <= n]
    return out


@entry("reshape")
def reshape(b: Builder):
    """Keeps the batch dim where it is and regroups the fixed dims after it (or, without a
    batch dim, all of them)."""
    v = b.data(lambda u: not u.batched or u.shape[0] == BATCH, ranks=(2, 3, 1))
    lead = (BATCH,) if v.batched else ()
    tail = _factor(v.row)
    new = lead + tail[b.index(len(tail))]
    if len(new) > 3:
        return
    text = ", ".join("N" if d == BATCH else str(d) for d in new)
    b.line(f"reshape({v.name}, shape=({text}{',' if len(new) == 1 else ''}))", new, [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("concat")
def concat(b: Builder):
    """Along the last axis, 2 or 3 operands sharing the other dims (the same value twice, too)."""
    v = b.data(ranks=(2, 1, 3), last_fixed=True)
    lead = v.shape[:-1]
    parts, width = [v], v.shape[-1]
    room = (MAX_ROW if v.batched else MAX_FIXED) // max(1, v.row // v.shape[-1])
    for _ in range(1 + b.rarely(3)):
        def make():
            d = b.dim(max(1, room - width))
            return b.new_input(lead + (d,)) if BATCH in lead else b.param(lead + (d,))
        u = b.operand(lambda x: x.shape[:-1] == lead and x.last_fixed and x.rank == v.rank, make)
        parts.append(u)
        width += u.shape[-1]
    if width > room:
        return
    b.line(f"concat({', '.join(p.name for p in parts)})", lead + (width,), parts,
           mag=max(p.mag for p in parts), low=min(p.low for p in parts), sparse=any(p.sparse for p in parts))


@entry("permute")
def permute(b: Builder):
    """Any order of the axes of a rank-2 or rank-3 value (the batch dim may move)."""
    v = b.data(ranks=(3, 2))
    order = list(range(v.rank))
    for i in range(v.rank - 1, 0, -1):                  # a drawn permutation, shrinking to the identity
        j = b.index(i + 1)
        order[i], order[j] = order[j], order[i]
    b.line(f"permute({v.name}, {tuple(order)})", tuple(v.shape[a] for a in order), [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("pad")
def pad(b: Builder):
    """The last axis (and rarely the one before) padded by 0 to 2 on each side, with 0 or a value."""
    v = b.data(lambda u: u.rank >= 1 and u.shape[-1] != BATCH and (u.rank < 2 or u.shape[-2] != BATCH),
               ranks=(2, 3, 4, 1))
    if v.rank == 0 or v.shape[-1] == BATCH:          # a new input [N]: nothing to pad
        return
    two = v.rank >= 2 and v.shape[-2] != BATCH and b.rarely(3)
    pads = [b.index(3), b.index(3)] + ([b.index(3), b.index(3)] if two else [])
    value = b.pick([0.0, 1.0, -0.5])
    shape = list(v.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] += pads[2 * i] + pads[2 * i + 1]
    b.line(f"pad({v.name}, {tuple(pads)}, value={value})", tuple(shape), [v],
           mag=max(v.mag, abs(value)), low=min(v.low, value) if value > 0 else 0.0, sparse=v.sparse or value == 0)


@entry("layer_norm")
def layer_norm(b: Builder):
    """Over the last axis (a fixed one), with the affine weight (and mostly the bias): without it
    sum(layer_norm(v)) is identically 0, and finite differences of a zero gradient are noise."""
    v = b.data(lambda u: u.rank >= 1 and u.shape[-1] != BATCH and u.shape[-1] > 1, ranks=(2, 3, 1))
    if v.rank == 0 or v.shape[-1] == BATCH or v.shape[-1] == 1:
        return
    d = v.shape[-1]
    affine = [b.param((d,))] + ([b.param((d,))] if not b.rarely(3) else [])
    args = ", ".join([v.name, f"({d},)"] + [a.name for a in affine])
    b.line(f"layer_norm({args})", v.shape, [v] + affine, mag=2.0)


@entry("batch_norm")
def batch_norm(b: Builder):
    """Over the channels (axis 1, fixed) of a batched value of rank 2-4, with its own running
    statistics and mostly the affine weight (without it and the bias, sum(batch_norm(v)) is
    identically 0); eps 0.01 or more keeps finite differences well conditioned at small counts."""
    v = b.data(lambda u: 2 <= u.rank <= 4 and u.shape[0] == BATCH and u.shape[1] != BATCH and u.shape[1] > 1
               and BATCH not in u.shape[1:], ranks=(2, 3, 4))
    if not (2 <= v.rank <= 4 and v.shape[0] == BATCH and v.shape[1] != BATCH and v.shape[1] > 1) \
            or BATCH in v.shape[1:]:
        return
    c = v.shape[1]
    args = [v.name, b.state((c,)).name, b.state((c,)).name]
    affine = [b.param((c,))] + ([b.param((c,))] if not b.rarely(3) else [])
    args += [a.name for a in affine]
    eps, momentum = b.pick([0.01, 0.1, 1.0]), b.pick([0.1, 0.5])
    b.line(f"batch_norm({', '.join(args)}, momentum={momentum}, eps={eps})", v.shape, [v] + affine, mag=2.0)


@entry("dropout")
def dropout(b: Builder):
    """Dropout of any value: masks keyed by the model's step count (the train steps advance it)."""
    v = b.data(lambda u: True, ranks=(2, 1, 3))
    p = b.pick([0.1, 0.5])
    b.line(f"dropout({v.name}, {p})", v.shape, [v], mag=v.mag / (1 - p), sparse=True)


@entry("flatten")
def flatten(b: Builder):
    """The axes after the batch dim (or all of a value without one) merged into one."""
    v = b.data(lambda u: BATCH not in u.shape[1:], ranks=(3, 2))
    start = 1 if v.shape[0] == BATCH else b.index(v.rank)
    size = math.prod(v.shape[start:])
    b.line(f"flatten({v.name}, start_dim={start})", v.shape[:start] + (size,), [v],
           mag=v.mag, low=v.low, sparse=v.sparse)


@entry("dot")
def dot(b: Builder):
    a = b.data(ranks=(2, 1, 3), last_fixed=True)
    d = a.shape[-1]
    shape = b.pick([a.shape, (d,)])
    c = b.operand(lambda u: u.shape == shape, (lambda: b.param(shape)) if BATCH not in shape
                  else (lambda: b.new_input(shape)))
    b.line(f"dot({a.name}, {c.name})", _broadcast(a.shape, c.shape)[:-1], [a, c],
           mag=a.mag * c.mag * math.sqrt(d), sparse=a.sparse or c.sparse)


@entry("norm2")
def norm2(b: Builder):
    """Over the last axis, of a value with no all-zero row (never a relu's: its gradient x/‖x‖)."""
    v = b.data(lambda u: not u.sparse, ranks=(2, 1), last_fixed=True)
    b.line(f"norm2({v.name})", v.shape[:-1], [v], mag=v.mag * math.sqrt(v.shape[-1]))


def _softmax(op: str):
    def draw(b: Builder):
        v = b.data(ranks=(2, 1, 3))
        d = 300 if v.shape[-1] == BATCH else v.shape[-1]
        if op == "softmax":
            low = math.exp(-8 * v.mag) / d if v.mag < 50 else 0.0
            b.line(f"softmax({v.name})", v.shape, [v], mag=1.0 / math.sqrt(d), low=low)
        else:
            b.line(f"log_softmax({v.name})", v.shape, [v], mag=math.log(d) + 4 * v.mag)
    entry(op)(draw)


_softmax("softmax")
_softmax("log_softmax")


@entry("cross_entropy")
def cross_entropy(b: Builder):
    """With int32 labels (shape of the logits without their class axis, shared with other
    losses or ids) or real targets shaped like the logits (target rows, or any value: then the
    gradient flows into them too)."""
    v = b.data(ranks=(2, 1, 3), last_fixed=True)
    if b.draw(st.booleans()):
        y = b.ids(v.shape[:-1])
        b.line(f"cross_entropy({v.name}, {y.name})", (), [v, y], mag=1 + v.mag)
    else:
        t = b.operand(lambda u: u.shape == v.shape and u is not v, lambda: b.new_input(v.shape, "t"), fresh=2)
        b.line(f"cross_entropy({v.name}, {t.name})", (), [v, t], mag=(1 + v.mag) * max(1.0, t.mag))


@entry("mse")
def mse(b: Builder):
    v = b.data()
    t = b.operand(lambda u: u.shape == v.shape and u is not v,
                  (lambda: b.new_input(v.shape)) if v.batched or b.rarely(2) else (lambda: b.param(v.shape)))
    b.line(f"mse({v.name}, {t.name})", (), [v, t], mag=(v.mag + t.mag) ** 2)


@entry("embedding")
def embedding(b: Builder):
    """A row of a table param per id: ids [N], [N, L], [L] or a scalar; the table may be a
    weight matrix used elsewhere too."""
    table = b.operand(lambda u: u.kind == "param" and u.rank == 2 and u.last_fixed,
                      lambda: b.param((b.dim(), b.dim(MAX_ROW // 8))))
    ids_rank = b.pick([1, 2, 0] if b.batched else [1, 0])
    shape = b.shape(ids_rank, last=None)
    if math.prod(d for d in shape if d != BATCH) * table.shape[1] > (MAX_ROW if BATCH in shape else MAX_FIXED):
        shape = shape[:1]
    y = b.ids(shape)
    b.line(f"embedding({table.name}, {y.name})", shape + (table.shape[1],), [table, y], mag=table.mag)


@entry("dense", ops=("matmul", "transpose", "add", "relu", "tanh", "sigmoid"), weight=2)
def dense(b: Builder):
    """A pattern rather than an op: act(a @ W.T + b), the GEMM epilogue's bias and activation."""
    a = b.data(ranks=(2,), last_fixed=True)
    k = a.shape[-1]
    m = b.dim(max(1, min(MAX_ROW if a.batched else MAX_FIXED, MAX_FIXED // k)))
    w, bias = b.param((m, k)), b.param((m,))
    act = b.pick(["relu", "", "tanh", "sigmoid"])
    inner = f"{a.name} @ {w.name}.T + {bias.name}"
    b.line(f"{act}({inner})" if act else inner, (a.shape[0], m), [a, w, bias],
           mag=a.mag + 0.5 if act != "sigmoid" else 0.5, sparse=act == "relu", ops=3 + bool(act))


ENTRY_NAMES = [e.name for e in ENTRIES]
FIRST = "add"           # the entry a failing spec shrinks toward


@st.composite
def specs(draw, min_nodes: int = MIN_NODES, max_nodes: int = MAX_NODES, entries: tuple[str, ...] | None = None) -> Spec:
    """A random valid spec: min_nodes to max_nodes ops drawn from ENTRIES (or those of them named
    in `entries`), then the loss and the outputs; the parsed graph, which counts its constants and
    the positivity wrappers too, has 3 to about 30 nodes (median 12-16)."""
    table = sorted((e for e in ENTRIES if entries is None or e.name in entries), key=lambda e: e.name != FIRST)
    table = [e for e in table for _ in range(e.weight)]      # hypothesis shrinks toward table[0]
    b = Builder(draw)
    target = draw(st.integers(min_nodes, max_nodes))
    for _ in range(4 * max_nodes):
        if b.count >= target and b.lines:         # (the loss may only name a scalar line again)
            break
        e = draw(st.sampled_from(table))
        b.entries.append(e.name)
        e.draw(b)
    b.finish()
    return Spec(b.text(), b.entries, b.count, b.params_only)


__all__ = ["BATCH", "DIMS", "ENTRIES", "Entry", "Spec", "covered_ops", "entry", "specs"]
