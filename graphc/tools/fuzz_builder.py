"""How the differential fuzzer's generator (graphc/tools/fuzz_specs.py) builds a spec: `Builder`,
the spec being drawn line by line (its dims, inputs, params, lines and the values operands come
from), `Val` (a value, with the rough magnitude and lower bound the entries keep domains valid
by), the op table's registry (`entry`, `ENTRIES`) and the last step (`Builder.finish`: the loss,
the outputs, [grad]).

Domains are kept valid by construction, with a rough magnitude and lower bound carried by
every value (`Val`): log, sqrt and the denominators of / get positive operands (a positive
input, or a wrapper such as 1 + square(v)); exp gets an operand of magnitude at most 2;
norm2 never gets a value that may hold an all-zero row (a relu's); labels and ids are int32
inputs whose bounds the ops set (graphc.native.export.label_bounds). Values that grow past
1e3 are scaled back by a constant.

The data's domain is in the input names, so a spec file is all a rerun needs:
x<k> real N(0, 1) inputs; p<k> positive inputs in [0.5, 1.5]; t<k> target rows (each sums to 1);
y<k> int32 labels or ids; w<k> params; s<k> model state. `arrays()` in fuzz_case.py draws them.

Run-time dims: N, the batch dim, and T, a sequence length (RUN_TIME), drawn only when the spec
is drawn with sequence=True (graphc's specs take one symbolic dim today). An entry asks
`fixed(d)`, `run_time(shape)` and `largest(d)` rather than comparing with N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from hypothesis import strategies as st

DIMS = (1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 129, 257)   # across GEMM tiles, KC and vector widths
BATCH = "N"             # the batch dim, chosen at call time
SEQ = "T"               # a second run-time dim (a sequence length): drawn only by specs(sequence=True)
RUN_TIME = {BATCH: ("batch", 300), SEQ: ("symbolic", 64)}   # each run-time dim: its spec word, its largest size
MAX_ROW = 4096          # elements of a value per row of the batch (the product of its fixed dims)
MAX_SEQ_ROW = 256       # ... per row of a value [N, T, ...] (N up to 300 and T up to 64 rows)
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
    ties: bool = False              # may hold equal entries by construction (an embedding's rows of a repeated id,
                                    # a value concatenated with itself) and so may anything computed from it
    params: frozenset = frozenset()     # the params it depends on
    inputs: frozenset = frozenset()     # the inputs it depends on
    uses: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        """Whether it has a run-time dim (the batch dim N, or a sequence length T)."""
        return run_time(self.shape)

    @property
    def row(self) -> int:
        """Elements per row of the run-time dims: the product of the fixed dims."""
        return math.prod(d for d in self.shape if fixed(d))

    @property
    def last_fixed(self) -> bool:
        return self.rank > 0 and fixed(self.shape[-1])


@dataclass
class Spec:
    """A generated spec: its TOML text and what went into it."""
    text: str
    entries: list[str]              # the entries drawn, in order (the generator's own coverage)
    nodes: int                      # [graph] and [outputs] lines written
    params_only_outputs: list[str] = field(default_factory=list)   # outputs that need no data
    sizes: tuple[str, ...] = ()     # the run-time dims other than the batch dim that it declares (T)


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


def fixed(d) -> bool:
    """Whether a dim is a number (not a run-time dim, N or T)."""
    return not isinstance(d, str)


def run_time(shape) -> bool:
    """Whether a shape has a run-time dim."""
    return any(isinstance(d, str) for d in shape)


def largest(d) -> int:
    """A dim's size, or the largest a case gives a run-time dim (magnitudes, room)."""
    return RUN_TIME[d][1] if isinstance(d, str) else d


def row_room(shape) -> int:
    """How many elements a value of this shape may have per row of its run-time dims (per element
    of N, or of N x T), or in all without one."""
    return MAX_SEQ_ROW if SEQ in shape else MAX_ROW if run_time(shape) else MAX_FIXED


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

    def __init__(self, draw, sequence: bool = False):
        self.draw = draw
        self.sequence = sequence                 # whether values of rank 3 and more may be [N, T, ...]
        self.pool: list[int] = list(draw(st.lists(st.sampled_from(DIMS), min_size=1, max_size=3, unique=True)))
        self.batched = not self.rarely(6)        # most models have a batch dim; some are one column
        self.inputs: dict[str, Val] = {}
        self.params: dict[str, Val] = {}
        self.states: dict[str, Val] = {}    # model state: batch_norm's running statistics
        self.scans: dict[str, str] = {}     # [scan.NAME] tables (their TOML text), by NAME
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

    def draw_bool(self) -> bool:
        return self.draw(st.booleans())

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

    def shape(self, rank: int, lead: tuple = (), last: int | None = None, batch: bool | None = None,
              seq: bool | None = None) -> tuple:
        """A new shape: the batch dim first when `batch` (default: the model's), then, when `seq`
        (default: now and then in a spec drawn with sequence=True, for rank 3 and more), the
        sequence length T, then fixed dims."""
        batch = self.batched if batch is None else batch
        shape = list(lead) if lead else ([BATCH] if batch and rank > 0 else [])
        if seq is None:
            seq = self.sequence and not lead and batch and rank >= 3 and not self.rarely(2)
        if seq and len(shape) < rank:
            shape.append(SEQ)
        room = row_room(shape)
        size = math.prod(d for d in shape if fixed(d))
        while len(shape) < rank:
            if last is not None and len(shape) == rank - 1:
                shape.append(last)
                break
            d = self.dim(max(1, room // (size * (last or 1))))
            shape.append(d)
            size *= d
        return tuple(shape)

    # ------------------------------------------------------------------ leaves
    def new_input(self, shape: tuple, domain: str = "x") -> Val:
        """An input: x real, p positive, t target rows, y int32 labels or ids."""
        name = self.name(domain)
        v = Val(name, tuple(shape), "input", int=domain == "y", mag=1.0,
                low={"p": 0.5, "t": 0.0}.get(domain, 0.0), inputs=frozenset([name]))
        if domain == "t":
            v.mag = 1.0 / max(1, shape[-1] if shape and fixed(shape[-1]) else 1)
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
            rank = self.pick(ranks)
            shape = self.shape(rank)
            if SEQ in shape and not ok(Val("", shape)):       # an operand that may not have T (conv1d's)
                shape = self.shape(rank, seq=False)
            return self.new_input(shape)
        return self.operand(lambda v: ok(v) and v.rank in ranks and (v.last_fixed or not last_fixed), make)

    def ids(self, shape: tuple) -> Val:
        """int32 labels or ids of this shape: ones the spec has (their bound is the smallest of
        the ops that read them), or new ones."""
        same = [v for v in self.ints if v.shape == tuple(shape)]
        if same and not self.rarely(3):
            return same[self.index(len(same))] if len(same) > 1 else same[0]
        return self.new_input(shape, "y")

    # ------------------------------------------------------------------ lines
    def line(self, expr: str | None, shape: tuple, operands: list[Val], mag: float = 1.0, low: float = 0.0,
             sparse: bool = False, ops: int = 1, name: str | None = None, ties: bool = False) -> Val:
        """Add `vK = "expr"` to [graph]; a value grown past BIG is scaled back by a constant.
        expr None: a value some other table defines (a scan's result), named `name`."""
        if mag > BIG and expr is not None:
            scale = 10.0 ** -round(math.log10(mag))
            expr, mag, low = f"({expr}) * {scale:g}", mag * scale, low * scale
            ops += 1
        name = name or self.name("v")
        if expr is not None:
            self.lines[name] = expr
        for v in operands:
            v.uses += 1
        v = Val(name, tuple(shape), mag=mag, low=low if low >= POSITIVE else 0.0, sparse=sparse,
                ties=ties or any(o.ties for o in operands), params=frozenset().union(*(o.params for o in operands)),
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
        used = sorted({d for v in [*inputs, *params, *self.states.values()] for d in v.shape if fixed(d)})
        lines = ['name = "fz"', "", "[dims]"]
        lines += [f'{d} = "{word}"' for d, (word, _) in RUN_TIME.items() if any(d in v.shape for v in inputs)]
        lines += [f"D{d} = {d}" for d in used]

        def decl(v: Val) -> str:
            shape = "[" + ", ".join(f'"{d if not fixed(d) else f"D{d}"}"' for d in v.shape) + "]"
            return f'{v.name} = {{ shape = {shape}, dtype = "int32" }}' if v.int else f"{v.name} = {shape}"

        lines += ["", "[inputs]", *(decl(v) for v in inputs)]
        lines += ["", "[params]", *(decl(v) for v in params)]
        states = [v for v in self.states.values() if v.uses]
        if states:
            lines += ["", "[state]", *(decl(v) for v in states)]
        for text in self.scans.values():
            lines += ["", text.rstrip("\n")]
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


__all__ = ["BATCH", "SEQ", "RUN_TIME", "DIMS", "MAX_SEQ_ROW", "ENTRIES", "Builder", "Entry", "Spec", "Val",
           "covered_ops", "entry", "fixed", "largest", "row_room", "run_time"]
